"""What a profile offers to fix: the surgery call its fix line names, and the converted copy.

Two causes are what [`equivariance.surgery`][equivariance.surgery] changes: ``aliasing`` at a strided
layer (blur before subsampling under the zeros boundary, adaptive polyphase sampling under the circular
one) and ``borders`` (circular padding); docs/fixing.md shows both.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar

from torch import nn

from equivariance._engine import causes
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
    if all([row.passed for row in rows]):
        return tuple(rows)
    calls = offers(rows, model, boundary)
    adaptive = _after_polyphase(rows, model)
    revised = []
    for row in rows:
        if not row.passed and row.name in adaptive:
            row = dataclasses.replace(row, fix=causes.adaptive_sampling(adaptive[row.name], boundary))  # type: ignore[type-var]
        elif not row.passed and row.cause in calls:
            row = dataclasses.replace(row, fix=f"{row.fix}; {calls[row.cause]}")  # type: ignore[type-var]
        revised.append(row)
    return tuple(revised)


def offers(rows: Sequence[Row], model: nn.Module, boundary: str) -> dict[str, str]:
    """The surgery call for each cause it acts on among the failing rows, by cause."""
    found_causes = {row.cause for row in rows if not row.passed}
    found: dict[str, str] = {}
    if causes.ALIASING in found_causes:
        strided, _ = _strided(rows, model)
        which = "that layer subsamples" if len(strided) == 1 else "each of those layers subsamples"
        if strided and boundary == "circular":
            inner = "circular_padding(model)" if _to_pad(model) else "model"
            found[causes.ALIASING] = (
                f"polyphase({inner}, layers={strided!r}) (equivariance.surgery) makes a copy that keeps the "
                f"grid of largest norm where {which}, so that a globally pooled output is exactly invariant "
                "to circular shifts, as does profile.fixed_copy(model)"
            )
        elif strided:
            found[causes.ALIASING] = (
                f"antialias(model, layers={strided!r}) (equivariance.surgery) makes a copy that blurs "
                f"before {which}, as does profile.fixed_copy(model)"
            )
    if causes.BORDERS in found_causes and _to_pad(model):
        found[causes.BORDERS] = (
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
        if sampling is not None and not row.passed and row.cause == causes.ALIASING:
            found[row.name] = sampling
    return found


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
    failing = {row.cause for row in profile.layers if not row.passed}
    subsample = method in ("antialias", "polyphase") or (method == "auto" and causes.ALIASING in failing)
    circular = profile.boundary == "circular"
    pad = method == "circular_padding" or (
        method == "auto" and (causes.BORDERS in failing or (circular and causes.ALIASING in failing))
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
