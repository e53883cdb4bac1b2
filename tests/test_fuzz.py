"""Fuzzing the public checks, the loss, crops, layouts and actions of one's own, valid or not.

Whatever it is given, a check returns a report or raises ``InvalidArgument``
(it could not run as asked) or ``EquivarianceError`` (it ran and failed):
no other exception escapes, and the model (its state and training flags)
and the input are as they were. CI runs the "ci" profile's 50 examples; for
a long local run::

    python -m pytest tests/test_fuzz.py --hypothesis-profile=fuzz   # 5,000 examples
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

from equivariance import (
    EquivarianceError,
    EquivarianceReport,
    InvalidArgument,
    Shift,
    assert_equivariant,
    assert_invariant,
    check_equivariance,
    check_invariance,
    equivariance_error,
    profile_equivariance,
)
from equivariance.actions import Action, Grid
from equivariance.crops import Crop
from equivariance.generators import Rotation, Translation
from equivariance.layouts import Tokens
from equivariance.lie import LieProfile, lie_derivative, lie_derivative_error, profile_lie_derivative
from equivariance.loss import equivariance_loss
from equivariance.strategies import conv_stacks, mlps, shifts, signals

# -- odd models ----------------------------------------------------------------------------------


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def returns_a_pair(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x, x.sum()


def returns_text(x: torch.Tensor) -> str:
    return "not a tensor"


def raises(x: torch.Tensor) -> torch.Tensor:
    raise RuntimeError("the model is broken")


def rounds_to_int(x: torch.Tensor) -> torch.Tensor:
    return x.round().long()


def drops_a_sample(x: torch.Tensor) -> torch.Tensor:
    return x[1:]


def in_place(x: torch.Tensor) -> torch.Tensor:
    return x.mul_(2)


class Stateful(nn.Module):
    """Batch statistics, dropout and a counter: everything a check must put back."""

    def __init__(self, channels: int = 1) -> None:
        super().__init__()
        self.norm = nn.LazyBatchNorm1d() if channels < 0 else nn.BatchNorm1d(channels)
        self.drop = nn.Dropout(0.5)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.drop(self.norm(x.flatten(2)).view_as(x))


ODD_MODELS: list[Callable[..., Any]] = [
    identity,
    returns_a_pair,
    returns_text,
    raises,
    rounds_to_int,
    drops_a_sample,
    in_place,
    nn.Identity(),
    nn.Flatten(),
    nn.ReLU(inplace=True),
    Stateful(1).train(),
]

# -- inputs, shifts and options, valid or not ----------------------------------------------------


@st.composite
def inputs(draw: st.DrawFn, channels: int | None = None, ndim: int | None = None) -> Any:
    x = draw(
        signals(
            ndim=ndim if ndim is not None else st.integers(1, 3),
            channels=channels if channels is not None else (1, 3),
            batch=(1, 3),
            size=(1, 12),
            allow_nan=True,
            allow_infinity=True,
            dtype=st.sampled_from([torch.float32, torch.float32, torch.float64]),
        )
    )
    damage = draw(st.sampled_from(["none"] * 6 + ["rank", "int", "empty", "list", "scalar", "bool"]))
    if damage == "rank":
        return x[0]
    if damage == "int":
        return x.nan_to_num().long()
    if damage == "empty":
        return x[:0]
    if damage == "list":
        return x.tolist()
    if damage == "scalar":
        return 1.0
    if damage == "bool":
        return x > 0
    return x


def shift_lists(ndim: int) -> st.SearchStrategy[Any]:
    some = st.lists(
        shifts(ndim=st.sampled_from([ndim, ndim, 1, 2, 3]), max_shift=st.integers(0, 14)), max_size=4
    )
    odd = st.sampled_from([[(1.5, 0)], ["ab"], [(1, 2, 3, 4)], (1, 2), "right", 7, [], [None], [[]]])
    return st.one_of(st.none(), st.none(), some, odd)


ANY_INT = st.integers(-3, 40)
OPTIONS: dict[str, st.SearchStrategy[Any]] = {
    "max_shift": st.one_of(st.none(), ANY_INT, st.tuples(ANY_INT, ANY_INT), st.just(1.5)),
    "stride": st.one_of(st.integers(-1, 4), st.tuples(st.integers(0, 3), st.integers(1, 3)), st.just("2")),
    "margin": st.one_of(st.integers(-1, 4), st.tuples(st.integers(0, 2)), st.just(None)),
    "boundary": st.sampled_from(["zeros", "circular", "reflect", "", 0, None]),
    "layer": st.sampled_from([None, "0", "1", "2", "norm", "nope", "", 3]),
    "output": st.sampled_from([None, 0, 1, -1, 5, "key", lambda out: out[0], lambda out: 1 / 0]),
    "atol": st.sampled_from([None, 0.0, 1e-6, -1.0, float("nan"), float("inf"), "tight", True]),
    "rtol": st.sampled_from([None, 0.0, 1e-4, 10.0, -1e-3, float("nan"), [1e-4]]),
    "batch_size": st.sampled_from([None, 1, 2, 7, 0, -1, 2.5, True, "4"]),
    "output_action": st.sampled_from([None, lambda y, s: y, lambda y, s: "no", lambda y, s: y[..., :1]]),
}
CHECKS = [check_equivariance, check_invariance, assert_equivariant, assert_invariant]


@st.composite
def calls(draw: st.DrawFn) -> tuple[Callable[..., Any], Any, Any, Any, dict[str, Any]]:
    family = draw(st.sampled_from(["conv", "mlp", "odd"]))
    if family == "conv":
        stack = draw(conv_stacks(ndim=st.integers(1, 3), depth=(1, 2), strides=(1, 2)))
        model: Any = stack.model
        x = draw(st.one_of(stack.inputs(), inputs(channels=stack.in_channels, ndim=stack.ndim), inputs()))
    elif family == "mlp":
        net = draw(mlps(ndim=st.integers(1, 3), size=(2, 6)))
        model = net.model
        x = draw(st.one_of(net.inputs(), inputs()))
    else:
        model = draw(st.sampled_from(ODD_MODELS))
        x = draw(inputs())
    check = draw(st.sampled_from(CHECKS))
    # Only the keywords a function takes: an unknown keyword is Python's TypeError, not the library's.
    accepted = inspect.signature(check_invariance if "invarian" in check.__name__ else check_equivariance)
    names = draw(st.lists(st.sampled_from([n for n in OPTIONS if n in accepted.parameters]), unique=True))
    options = {name: draw(OPTIONS[name]) for name in names}
    ndim = x.dim() - 2 if isinstance(x, torch.Tensor) and x.dim() >= 3 else 2
    return check, model, x, draw(shift_lists(ndim)), options


def snapshot(model: Any, x: Any) -> tuple[Any, ...]:
    state: dict[str, torch.Tensor] = {}
    flags: list[bool] = []
    if isinstance(model, nn.Module):
        state = {k: v.clone() for k, v in model.state_dict().items()}
        flags = [m.training for m in model.modules()]
    copy = x.clone() if isinstance(x, torch.Tensor) else x
    version = x._version if isinstance(x, torch.Tensor) else None
    return state, flags, copy, version


def same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                             and torch.equal(a.nan_to_num(), b.nan_to_num())))
        )  # fmt: skip
    return bool(a == b)


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch's notes on even 'same' kernels, lazy modules
@settings(
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
)
@given(calls())
def test_checks_return_a_report_or_raise_the_library_errors_and_change_nothing(
    call: tuple[Callable[..., Any], Any, Any, Any, dict[str, Any]],
) -> None:
    check, model, x, shift_list, options = call
    state, flags, x_before, version = snapshot(model, x)
    outcome: object
    try:
        outcome = check(model, x, shift_list, **options)
    except (InvalidArgument, EquivarianceError) as exc:  # anything else fails the test
        outcome = exc
    if isinstance(outcome, EquivarianceError):
        assert isinstance(outcome.report, EquivarianceReport)
        assert not outcome.report.passed
    elif isinstance(outcome, EquivarianceReport):
        assert outcome.results
        str(outcome), outcome.to_dict()  # renders whatever was measured
    assert str(outcome), "library errors always say what went wrong"
    after_state, after_flags, _, after_version = snapshot(model, x)
    assert after_state.keys() == state.keys()
    assert all(same(state[k], after_state[k]) for k in state), "the model's state changed"
    assert after_flags == flags, "the model's training flags changed"
    assert same(x_before, x), "the input changed"
    assert after_version == version, "the input was written to"


# -- the Lie derivative --------------------------------------------------------------------------

LIE_OPTIONS: dict[str, st.SearchStrategy[Any]] = {
    "generator": st.sampled_from(
        ["translation", "rotation", "shear", None, Translation(0, 1), Translation(1.0), Rotation(), 3]
    ),
    "relative": st.sampled_from([True, False, "yes"]),
    "reduction": st.sampled_from(["mean", "max", "none", "sum", None]),
    "stride": st.one_of(st.sampled_from(["auto", 0, "2"]), st.integers(1, 3), st.tuples(st.integers(0, 2))),
    "invariant": st.sampled_from([None, True, False, "yes"]),
    "layer": OPTIONS["layer"],
    "output": OPTIONS["output"],
    "batch_size": OPTIONS["batch_size"],
    "layers": st.sampled_from([None, ["0"], ["nope"], "0", []]),
    "layouts": st.sampled_from([None, {"0": "channels_last"}, {"0": "diagonal"}, ["0"]]),
}
LIE_CALLS = [lie_derivative_error, lie_derivative, profile_lie_derivative]


class Times(nn.Module):
    """A model whose output is multiplied by a power of two: exactly, so its relative Lie derivative is
    the model's, to the last bit but for the sums."""

    def __init__(self, inner: nn.Module, factor: float) -> None:
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.inner(x) * self.factor
        return out


@st.composite
def lie_calls(draw: st.DrawFn) -> tuple[Callable[..., Any], Any, Any, dict[str, Any]]:
    family = draw(st.sampled_from(["conv", "conv", "mlp", "odd"]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    if family == "conv":
        stack = draw(conv_stacks(ndim=st.integers(1, 3), depth=(1, 2), strides=(1, 2)))
        model: Any = stack.model.to(dtype)
        valid = stack.inputs(dtype=dtype)
        x = draw(st.one_of(valid, valid, inputs(channels=stack.in_channels, ndim=stack.ndim)))
    elif family == "mlp":
        net = draw(mlps(ndim=st.integers(1, 3), size=(2, 6)))
        model, x = net.model.to(dtype), draw(st.one_of(net.inputs(dtype=dtype), inputs()))
    else:
        model, x = draw(st.sampled_from(ODD_MODELS)), draw(inputs())
    call = draw(st.sampled_from(LIE_CALLS))
    accepted = inspect.signature(call).parameters
    names = draw(st.lists(st.sampled_from([n for n in LIE_OPTIONS if n in accepted]), unique=True))
    return call, model, x, {name: draw(LIE_OPTIONS[name]) for name in names}


def finite_result(outcome: object) -> bool:
    """A Lie derivative, its size or a profile: finite (sizes and contributions also nonnegative)."""
    if isinstance(outcome, LieProfile):
        str(outcome), outcome.to_dict()
        return all(math.isfinite(row.error) and row.error >= 0 for row in outcome.layers)
    assert isinstance(outcome, torch.Tensor)
    return bool(torch.isfinite(outcome).all())


@pytest.mark.filterwarnings("ignore::UserWarning")  # EquivarianceWarning (dead outputs, canvases) too
@settings(
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
)
@given(lie_calls(), st.sampled_from([2.0**-600, 2.0**600, 2.0**-1000]))  # float32: 2**-60, 2**60, 2**-100
def test_the_lie_derivative_returns_a_finite_right_number_or_raises_invalid_argument(
    call: tuple[Callable[..., Any], Any, Any, dict[str, Any]], factor: float
) -> None:
    function, model, x, options = call
    state, flags, x_before, version = snapshot(model, x)
    try:
        outcome: object = function(model, x, **options)
    except InvalidArgument as exc:  # anything else fails the test
        outcome = exc
    assert str(outcome), "library errors always say what went wrong"
    if not isinstance(outcome, InvalidArgument):
        assert finite_result(outcome), "a Lie derivative is a finite number or an InvalidArgument"
        if function is lie_derivative_error and options.get("reduction") != "none":
            assert float(outcome) >= 0  # type: ignore[arg-type]
    after_state, after_flags, _, after_version = snapshot(model, x)
    assert all(same(state[k], after_state[k]) for k in state), "the model's state changed"
    assert after_flags == flags, "the model's training flags changed"
    assert same(x_before, x), "the input changed"
    assert after_version == version, "the input was written to"
    # right at every scale: the output times a power of two has the same relative Lie derivative
    if (
        function is lie_derivative_error
        and isinstance(outcome, torch.Tensor)
        and isinstance(model, nn.Module)
        and options.get("relative", True) is True
        and not {"layer", "output"} & set(options)
    ):
        exact = x.dtype == torch.float64
        scaled = lie_derivative_error(Times(model, factor if exact else factor ** (1 / 10)), x, **options)
        torch.testing.assert_close(scaled, outcome, rtol=1e-9 if exact else 1e-5, atol=0.0)


# -- the loss, crops, layouts and actions of one's own: a clear InvalidArgument or the right number ----

FUZZ = settings(
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
)


def _ok_or_refused(call: Callable[[], Any]) -> Any:
    """The call's result, or the InvalidArgument it raised (anything else fails the test)."""
    try:
        return call()
    except InvalidArgument as exc:
        refused = exc
    assert str(refused), "library errors always say what went wrong"
    return refused


def _squared_metric(model: nn.Module, x: torch.Tensor, elements: list[Any], **options: Any) -> float | None:
    """The mean over elements of ``equivariance_error(..., reduction="none") ** 2``, or None where the
    metric refuses the call (or warns that it cannot show a failure: a dead draw)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = [
            _ok_or_refused(lambda e=e: equivariance_error(model, x, e, reduction="none", **options))
            for e in elements
        ]
    if any(isinstance(v, InvalidArgument) for v in values):
        return None
    return float(torch.stack([v.double() ** 2 for v in values]).mean())


@st.composite
def loss_calls(draw: st.DrawFn) -> tuple[nn.Module, torch.Tensor, dict[str, Any], bool]:
    stack = draw(conv_stacks(ndim=st.integers(1, 2), depth=(1, 2), strides=(1, 2)))
    valid = draw(st.integers(0, 3)) > 0  # mostly calls that should work, to reach the laws
    x = draw(stack.inputs() if valid else inputs(channels=stack.in_channels, ndim=stack.ndim))
    options: dict[str, Any] = {}
    if valid or draw(st.booleans()):
        odd = st.sampled_from([[(1.5, 0)], ["ab"], [(1, 2, 3, 4)], (1, 2), "right", 7, [], [None], [[]]])
        given_shifts = st.lists(stack.shifts(nonzero=True), min_size=1, max_size=3)
        options["shifts"] = draw(given_shifts if valid else st.one_of(given_shifts, odd))
    else:
        options["samples"] = draw(st.sampled_from([None, 1, 3, 0, -1, "2"]))
        options["max_shift"] = draw(st.sampled_from([2, 4, 0, -1, (1, 1), 1.5]))
    strides = st.sampled_from([stack.stride, 1, 0, 3])
    options["stride"] = stack.stride if valid else draw(strides)
    boundaries = st.sampled_from([stack.boundary, "zeros", "reflect"])
    options["boundary"] = stack.boundary if valid else draw(boundaries)
    options["batch_size"] = draw(st.sampled_from([None, 1, 2, 5] + ([] if valid else [0, -1, 2.5])))
    train = draw(st.booleans())
    return stack.model, x, options, train


@pytest.mark.filterwarnings("ignore::UserWarning")
@FUZZ
@given(loss_calls())
def test_the_loss_is_the_mean_squared_metric_or_a_clear_refusal(
    call: tuple[nn.Module, torch.Tensor, dict[str, Any], bool],
) -> None:
    """Whatever the arguments, ``equivariance_loss`` returns a scalar or raises InvalidArgument, leaves
    ``x`` alone, gives the same value in chunks as in one pass, and in eval mode with given shifts
    equals the mean squared ``equivariance_error``."""
    model, x, options, train = call
    model.train(train)
    kept = x.clone() if isinstance(x, torch.Tensor) else x
    loss = _ok_or_refused(lambda: equivariance_loss(model, x, **options))
    assert same(kept, x), "the input changed"
    if isinstance(loss, InvalidArgument):
        return
    assert isinstance(loss, torch.Tensor)
    assert loss.dim() == 0
    if not bool(torch.isfinite(x).all()) or train:  # dropout-free stacks; train mode moves nothing here
        return
    assert float(loss) >= 0
    shifts = options.get("shifts")
    if shifts is None:
        return
    one_pass = equivariance_loss(model, x, **{**options, "batch_size": None})
    assert float(loss) == pytest.approx(float(one_pass), rel=1e-4, abs=1e-12)
    expected = _squared_metric(model, x, list(shifts), stride=options["stride"], boundary=options["boundary"])
    if expected is not None:
        event("the loss compared with the metric")
        assert float(loss) == pytest.approx(expected, rel=1e-3, abs=1e-10)


@st.composite
def crop_calls(draw: st.DrawFn) -> tuple[nn.Module, torch.Tensor, tuple[int, int | None], Shift, int]:
    stack = draw(conv_stacks(ndim=2, depth=(1, 2), strides=(1, 2), padding=st.sampled_from(["valid"])))
    size = draw(st.integers(stack.min_size, stack.min_size + 6))
    image = draw(st.integers(max(1, size - 2), size + 8))
    x = torch.randn(
        2, stack.in_channels, image, image, generator=torch.Generator().manual_seed(draw(st.integers(0, 99)))
    )
    at = draw(st.one_of(st.none(), st.integers(0, max(0, image - size)), st.integers(-1, image - size + 1)))
    multiple = draw(st.sampled_from([stack.stride, stack.stride, (1, 1)]))
    bound = draw(st.integers(0, max(0, image - size) + 2))
    shift = draw(shifts(ndim=2, max_shift=bound, multiple_of=multiple))
    return stack.model, x, (size, at), shift, stack.stride[0]


@pytest.mark.filterwarnings("ignore::UserWarning")
@FUZZ
@given(crop_calls())
def test_a_crop_error_is_the_two_crops_compared_on_their_overlap_or_a_clear_refusal(
    call: tuple[nn.Module, torch.Tensor, tuple[int, int | None], Shift, int],
) -> None:
    """Under ``Crop``, the error of a shift is the crop at ``at - s`` against the reference crop's
    output moved by ``s / stride``, over their overlap: recomputed here by hand from the two crops."""
    model, x, (size_given, at_given), shift, stride = call
    kept = x.clone()
    found = _ok_or_refused(
        lambda: equivariance_error(
            model, x, shift, boundary=Crop(size_given, at_given), stride=stride, reduction="none"
        )
    )
    assert torch.equal(x, kept)
    if isinstance(found, InvalidArgument):
        return
    crop = Crop(size_given, at_given)
    of = crop.of(x)
    moved_at = [a - s for a, s in zip(of.at, shift)]
    size = of.size
    window = (..., *(slice(a, a + n) for a, n in zip(moved_at, size)))
    with torch.no_grad():
        reference, moved = model(of.reference()), model(x[window])
    t = [s // stride for s in shift]
    spatial = reference.shape[2:]
    here = (..., *(slice(max(0, d), min(n, n + d)) for d, n in zip(t, spatial)))
    there = (..., *(slice(max(0, -d), min(n, n - d)) for d, n in zip(t, spatial)))
    diff = (moved[here] - reference[there]).double().flatten(1).norm(dim=1)
    ref = reference[there].double().flatten(1).norm(dim=1)
    alive = ref > 1e-6
    event("a crop compared by hand")
    assert found[alive].double() == pytest.approx((diff / ref)[alive], rel=1e-4, abs=1e-6)


class Permuted(nn.Module):
    """A circular conv whose output is given channels last, or as tokens after ``prefix`` class tokens."""

    def __init__(self, conv: nn.Module, layout: str, prefix: int) -> None:
        super().__init__()
        self.conv, self.layout, self.prefix = conv, layout, prefix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.layout == "channels_last":
            return y.movedim(1, -1)
        tokens = y.flatten(2).transpose(1, 2)
        return torch.cat([torch.ones(len(y), self.prefix, y.shape[1]), tokens], dim=1)


@st.composite
def layout_calls(draw: st.DrawFn) -> tuple[nn.Module, nn.Module, torch.Tensor, Any, Shift, bool]:
    torch.manual_seed(draw(st.integers(0, 99)))
    kind = draw(st.sampled_from(["channels_last", "tokens"]))
    prefix = draw(st.integers(0, 2)) if kind == "tokens" else 0
    conv = nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular")
    model = Permuted(conv, kind, prefix)
    h, w = draw(st.integers(3, 8)), draw(st.integers(3, 8))
    x = torch.randn(2, 2, h, w)
    right: Any = (
        "channels_last"
        if kind == "channels_last"
        else draw(
            st.sampled_from([Tokens((h, w), prefix), Tokens(prefix=prefix)] if prefix else [Tokens((h, w))])
        )
    )
    wrong = draw(
        st.sampled_from(
            ["channels_first", "channels_last", "tokens", Tokens((w, h), prefix), Tokens((h * w, 1), prefix),
             Tokens((h, w), prefix + 1), "NHWC", 3]
        )
    )  # fmt: skip
    use_right = draw(st.booleans())
    shift = draw(shifts(ndim=2, max_shift=2))
    return model, conv, x, right if use_right else wrong, shift, use_right


@pytest.mark.filterwarnings("ignore::UserWarning")
@FUZZ
@given(layout_calls())
def test_a_layout_gives_the_channels_first_number_or_a_clear_refusal(
    call: tuple[nn.Module, nn.Module, torch.Tensor, Any, Shift, bool],
) -> None:
    """The same map given channels last, or as tokens after class tokens, measures as the channels
    first map under its own layout; any other layout is refused or measured, never a crash."""
    model, conv, x, layout, shift, right = call
    found = _ok_or_refused(
        lambda: equivariance_error(model, x, shift, boundary="circular", layout=layout, reduction="none")
    )
    report = _ok_or_refused(lambda: check_equivariance(model, x, [shift], boundary="circular", layout=layout))
    assert isinstance(report, (InvalidArgument, EquivarianceReport))
    if not right or isinstance(found, InvalidArgument):
        assert not right or shift.is_identity, f"the right layout {layout!r} was refused: {found}"
        return
    expected = equivariance_error(conv, x, shift, boundary="circular", reduction="none")
    event("a layout compared with channels first")
    assert found == pytest.approx(expected, rel=1e-5, abs=1e-7)


class Drawn(Action):
    """An action of one's own, drawn: a spatial permutation or a negation (some writing in place), or
    something that is not an action at all (another shape, not a tensor, an exception)."""

    def __init__(self, how: str) -> None:
        self.how = how

    def act(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        how = self.how
        if how == "negate in place":
            return x.mul_(-1)
        if how == "flip":
            return torch.flip(x, (-1,))
        if how == "roll in place":
            return x.copy_(torch.roll(x.clone(), 1, dims=-1))
        if how == "transpose view":
            return x.transpose(-1, -2)
        if how == "shape":
            return x[..., :-1]
        if how == "text":
            return "moved"  # type: ignore[return-value]
        raise RuntimeError("this action is broken")

    def inverse(self) -> Drawn:
        return self

    def __repr__(self) -> str:
        return f"Drawn({self.how!r})"


ACTS = ["negate in place", "flip", "roll in place", "transpose view", "shape", "text", "raises"]


def _moved_by_hand(how: str, t: torch.Tensor) -> torch.Tensor:
    return {
        "negate in place": lambda: -t,
        "flip": lambda: torch.flip(t, (-1,)),
        "roll in place": lambda: torch.roll(t, 1, dims=-1),
        "transpose view": lambda: t.transpose(-1, -2),
    }[how]()


@pytest.mark.filterwarnings("ignore::UserWarning")
@FUZZ
@given(
    st.sampled_from(ACTS),
    st.integers(0, 99),
    st.booleans(),
    st.sampled_from(["check", "metric", "loss", "profile"]),
)
def test_an_action_of_ones_own_gives_the_number_by_hand_or_a_clear_refusal(
    how: str, seed: int, pointwise: bool, entry: str
) -> None:
    """A user's action, however written (in place, a view, the wrong shape, not a tensor, raising):
    the entry points return the error computed by hand from the action, or refuse it, and leave
    ``x`` alone."""
    torch.manual_seed(seed)
    conv = nn.Conv2d(2, 3, 1 if pointwise else 3, padding="same", padding_mode="circular", bias=False)
    x = torch.randn(2, 2, 6, 6)
    kept = x.clone()
    element = Drawn(how)
    runs = {
        "check": lambda: check_equivariance(conv, x, transforms=[element]).max_error,
        "metric": lambda: float(equivariance_error(conv, x, element, reduction="max")),
        "loss": lambda: float(equivariance_loss(conv.eval(), x, [element])) ** 0.5,
        "profile": lambda: profile_equivariance(conv, x, element).layers[-1].error,
    }
    found = _ok_or_refused(runs[entry])
    assert torch.equal(x, kept), "the input changed"
    if how in ("shape", "text", "raises"):
        assert isinstance(found, InvalidArgument)
        return
    assert not isinstance(found, InvalidArgument), str(found)
    with torch.no_grad():
        expected = _moved_by_hand(how, conv(x))
        diff = (conv(_moved_by_hand(how, x)) - expected).flatten(1).norm(dim=1) / expected.flatten(1).norm(
            dim=1
        )
    by_hand = float(diff.max()) if entry != "loss" else float(diff.square().mean()) ** 0.5
    assert found == pytest.approx(by_hand, rel=1e-4, abs=1e-6)
