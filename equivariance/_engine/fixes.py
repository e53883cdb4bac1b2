"""What a profile offers to fix: the surgery call its fix line names, and the converted copy.

The profile names failing layers and their causes; two causes are what
[`equivariance.surgery`][equivariance.surgery] changes. ``aliasing`` at a
strided layer: blur before subsampling (``antialias``) under the zeros
boundary, adaptive polyphase sampling (``polyphase``, with circular padding)
under the circular one. ``borders``: circular padding. The layers named are the
strided layers among the profile's rows, as the surgery knows them.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar

from torch import nn

from equivariance._engine.validation import describe
from equivariance.downsampling import PolyphaseSampling
from equivariance.errors import EquivarianceWarning, InvalidArgument
from equivariance.surgery import antialias, circular_padding, padded_layers, polyphase, subsampling_layers

METHODS = ("auto", "antialias", "polyphase", "circular_padding")


class Row(Protocol):
    """What is read of a profile's row."""

    @property
    def name(self) -> str: ...

    @property
    def passed(self) -> bool: ...

    @property
    def cause(self) -> str | None: ...

    @property
    def fix(self) -> str | None: ...


R = TypeVar("R", bound=Row)


class Profiled(Protocol):
    """What is read of a profile."""

    @property
    def subject(self) -> str: ...

    @property
    def boundary(self) -> str: ...

    @property
    def layers(self) -> Sequence[Any]: ...


def revised(rows: Sequence[R], model: nn.Module, boundary: str) -> tuple[R, ...]:
    """The rows, their fixes completed: a failing row whose cause surgery acts on names the call that
    makes the copy; a row compared after adaptive polyphase sampling says why it is not a shift of itself."""
    calls = offers(rows, model, boundary)
    adaptive = _after_polyphase(rows, model)
    revised = []
    for row in rows:
        if not row.passed and row.name in adaptive:
            row = dataclasses.replace(row, fix=_polyphase_fix(adaptive[row.name], boundary))  # type: ignore[type-var]
        elif not row.passed and row.cause in calls:
            row = dataclasses.replace(row, fix=f"{row.fix}; {calls[row.cause]}")  # type: ignore[type-var]
        revised.append(row)
    return tuple(revised)


def offers(rows: Sequence[Row], model: nn.Module, boundary: str) -> dict[str, str]:
    """The surgery call for each cause it acts on among the failing rows, by cause."""
    causes = {row.cause for row in rows if not row.passed}
    found: dict[str, str] = {}
    if "aliasing" in causes:
        strided, _ = _strided(rows, model)
        which = "that layer subsamples" if len(strided) == 1 else "each of those layers subsamples"
        if strided and boundary == "circular":
            inner = "circular_padding(model)" if _to_pad(model) else "model"
            found["aliasing"] = (
                f"polyphase({inner}, layers={strided!r}) (equivariance.surgery) makes a copy that keeps the "
                f"grid of largest norm where {which}, so that a globally pooled output is exactly invariant "
                "to circular shifts, as does profile.fixed_copy(model)"
            )
        elif strided:
            found["aliasing"] = (
                f"antialias(model, layers={strided!r}) (equivariance.surgery) makes a copy that blurs "
                f"before {which}, as does profile.fixed_copy(model)"
            )
    if "borders" in causes and _to_pad(model):
        found["borders"] = (
            "circular_padding(model) (equivariance.surgery) makes a copy whose padded layers pad "
            "circularly, as does profile.fixed_copy(model); check it with boundary='circular'"
        )
    return found


def _after_polyphase(rows: Sequence[Row], model: nn.Module) -> dict[str, str]:
    """The rows from the first adaptive polyphase sampling on, while they fail for aliasing: the name of
    the sampling layer before each."""
    found: dict[str, str] = {}
    sampling: str | None = None
    for row in rows:
        try:
            module = model.get_submodule(row.name)
        except AttributeError:
            module = None
        if isinstance(module, PolyphaseSampling):
            sampling = row.name
        if sampling is not None and not row.passed and row.cause == "aliasing":
            found[row.name] = sampling
    return found


def _polyphase_fix(sampling: str, boundary: str) -> str:
    exact = (
        "under circular shifts, with circular padding and sizes the strides divide, the map is then "
        "exactly a shift of itself by that amount, and a globally pooled output exactly invariant"
        if boundary == "circular"
        else "under circular shifts (boundary='circular') and with circular padding it is exact"
    )
    return (
        f"adaptive polyphase sampling at {sampling} keeps, for each sample, the subsampling grid of "
        "largest norm, so the map moves by a whole number of samples that depends on the sample (which "
        f"grid wins), not by the rounded shift this row is compared with; {exact}. Test the pooled output "
        "with check_invariance(model, x, boundary='circular')"
    )


def fixed_copy(profile: Profiled, model: nn.Module, method: str, options: Mapping[str, Any]) -> nn.Module:
    """The copy ``EquivarianceProfile.fixed_copy`` returns (see there)."""
    if not isinstance(model, nn.Module):
        raise InvalidArgument(f"fixed_copy converts the profiled nn.Module, found {describe(model)}; pass it")
    if type(model).__name__ != profile.subject:
        raise InvalidArgument(
            f"this profile is of a {profile.subject}, found a {type(model).__name__}; pass the model "
            "that was profiled"
        )
    if method not in METHODS:
        raise InvalidArgument(
            f"method must be one of {', '.join(map(repr, METHODS))}, found {describe(method)}; pass "
            "method='auto' for the conversions the profile's causes call for"
        )
    strided, left = _strided(profile.layers, model)
    causes = {row.cause for row in profile.layers if not row.passed}
    subsample = method in ("antialias", "polyphase") or (method == "auto" and "aliasing" in causes)
    circular = profile.boundary == "circular"
    pad = method == "circular_padding" or (
        method == "auto" and ("borders" in causes or (circular and "aliasing" in causes))
    )
    if subsample and not strided:
        if method != "auto" or not pad:
            raise InvalidArgument(
                f"the profile saw no strided layer that surgery converts (a subsampling written in forward, "
                f"F.max_pool2d or x[..., ::2], is not a layer); its failures: {_causes(profile)}"
            )
        subsample = False
    if not subsample and not pad:
        raise InvalidArgument(
            f"nothing in this profile calls for surgery: {_causes(profile)}. Surgery acts on aliasing at "
            "strided layers and on borders; pass method='antialias', 'polyphase' or 'circular_padding' "
            "to convert anyway"
        )
    if left:
        listed = ", ".join(f"{name!r}: {why}" for name, why in left.items())
        warnings.warn(f"fixed_copy cannot convert {listed}", EquivarianceWarning, stacklevel=3)
    fixed = model
    if subsample:
        use_polyphase = method == "polyphase" or (method == "auto" and circular)
        fixed = (polyphase if use_polyphase else antialias)(model, layers=strided, **options)
    if pad and _to_pad(fixed):
        fixed = circular_padding(fixed)
    return fixed


def _strided(rows: Sequence[Row], model: nn.Module) -> tuple[list[str], dict[str, str]]:
    """The profile's strided layers that surgery converts, in the order they ran; and why not the others."""
    found = subsampling_layers(model)
    names = [row.name for row in rows if row.name in found]
    return [n for n in names if found[n] is None], {n: why for n in names if (why := found[n]) is not None}


def _to_pad(model: nn.Module) -> bool:
    """Whether ``circular_padding`` has a layer of ``model`` to convert."""
    return any(why is None for why in padded_layers(model).values())


def _causes(profile: Profiled) -> str:
    failing = [f"{row.name} ({row.cause})" for row in profile.layers if not row.passed]
    return "failing layers " + ", ".join(failing) if failing else "every layer passed"
