"""The shift operators: group laws, boundaries, valid regions, strides, shift sets, batching."""

from __future__ import annotations

import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from equivariance import InvalidArgument, Shift, apply_shifts, circular_group, multiples_of, shifts_in_box
from equivariance.shifts import ShiftedWindows


def offsets(ndim: int, bound: int = 12) -> st.SearchStrategy[tuple[int, ...]]:
    return st.tuples(*[st.integers(-bound, bound)] * ndim)


@st.composite
def shift_and_signal(draw: st.DrawFn, count: int = 1) -> tuple[list[Shift], torch.Tensor]:
    ndim = draw(st.integers(1, 3))
    sizes = draw(st.tuples(*[st.integers(1, 7)] * ndim))
    shifts = [Shift(draw(offsets(ndim))) for _ in range(count)]
    seed = draw(st.integers(0, 2**16))
    x = torch.randn(2, 3, *sizes, generator=torch.Generator().manual_seed(seed))
    return shifts, x


# -- group laws of circular shifts ----------------------------------------------------------------


@given(shift_and_signal())
def test_circular_identity(case: tuple[list[Shift], torch.Tensor]) -> None:
    _, x = case
    ndim = x.dim() - 2
    assert torch.equal(Shift.identity(ndim).apply(x, "circular"), x)


@given(shift_and_signal())
def test_circular_inverse(case: tuple[list[Shift], torch.Tensor]) -> None:
    (s,), x = case
    assert torch.equal((-s).apply(s.apply(x, "circular"), "circular"), x)
    assert torch.equal(s.inverse().apply(s.apply(x, "circular"), "circular"), x)


@given(shift_and_signal(count=3))
def test_circular_composition_is_the_sum_and_associative(case: tuple[list[Shift], torch.Tensor]) -> None:
    (a, b, c), x = case
    step_by_step = a.apply(b.apply(x, "circular"), "circular")
    assert torch.equal(step_by_step, (a + b).apply(x, "circular"))
    assert torch.equal(step_by_step, a.compose(b).apply(x, "circular"))
    assert (a + b) + c == a + (b + c)
    left = ((a + b) + c).apply(x, "circular")
    assert torch.equal(left, a.apply(b.apply(c.apply(x, "circular"), "circular"), "circular"))


@given(shift_and_signal(), st.integers(-3, 3))
def test_circular_periodicity(case: tuple[list[Shift], torch.Tensor], turns: int) -> None:
    (s,), x = case
    sizes = tuple(x.shape[2:])
    period = Shift(tuple(turns * n for n in sizes))
    assert torch.equal((s + period).apply(x, "circular"), s.apply(x, "circular"))
    assert torch.equal(s.wrap(sizes).apply(x, "circular"), s.apply(x, "circular"))


@given(shift_and_signal())
def test_circular_matches_torch_roll(case: tuple[list[Shift], torch.Tensor]) -> None:
    (s,), x = case
    dims = tuple(range(2, x.dim()))
    assert torch.equal(s.apply(x, "circular"), torch.roll(x, s.offsets, dims))


# -- the zeros boundary ----------------------------------------------------------------------------


@given(shift_and_signal())
def test_zeros_agrees_with_circular_on_the_valid_mask(case: tuple[list[Shift], torch.Tensor]) -> None:
    (s,), x = case
    sizes = tuple(x.shape[2:])
    mask = s.valid_mask(sizes)
    zeros, circular = s.apply(x, "zeros"), s.apply(x, "circular")
    assert torch.equal(zeros[..., mask], circular[..., mask])
    assert not zeros[..., ~mask].any()


@given(shift_and_signal())
def test_zeros_loses_exactly_the_content_pushed_out(case: tuple[list[Shift], torch.Tensor]) -> None:
    (s,), x = case
    sizes = tuple(x.shape[2:])
    back = (-s).apply(s.apply(x, "zeros"), "zeros")
    kept = (-s).valid_mask(sizes)  # positions whose content stays on the grid under s
    assert torch.equal(back[..., kept], x[..., kept])
    assert not back[..., ~kept].any()


def test_zeros_example() -> None:
    x = torch.arange(1.0, 6.0)
    assert Shift(2).apply(x).tolist() == [0, 0, 1, 2, 3]
    assert Shift(-2).apply(x).tolist() == [3, 4, 5, 0, 0]
    assert Shift(7).apply(x).tolist() == [0] * 5
    assert Shift(2).valid_mask(5).tolist() == [False, False, True, True, True]
    assert Shift(7).valid_region(5) == (slice(5, 5),)
    assert Shift(0).valid_mask(3, boundary="circular").all()


def test_apply_acts_on_trailing_dims_of_any_tensor() -> None:
    image = torch.arange(6.0).reshape(2, 3)
    assert Shift(1, 0).apply(image, "circular").tolist() == [[3, 4, 5], [0, 1, 2]]
    assert Shift(1).apply(image).tolist() == [[0, 0, 1], [0, 3, 4]]


# -- strides ---------------------------------------------------------------------------------------


@given(offsets(2), st.integers(1, 4))
def test_division_by_stride_inverts_multiplication(base: tuple[int, int], stride: int) -> None:
    s = Shift(base)
    assert (s * stride) / stride == s
    assert (stride * s).divisible_by(stride)


def test_a_shift_the_stride_does_not_divide_has_no_counterpart() -> None:
    assert Shift(4, -2) / 2 == Shift(2, -1)
    assert Shift(4, 3) / (2, 3) == Shift(2, 1)
    assert not Shift(3, 0).divisible_by(2)
    with pytest.raises(InvalidArgument, match=r"Shift\(3, 0\) is not a multiple of stride 2.*no exact"):
        Shift(3, 0) / 2
    with pytest.raises(InvalidArgument, match="stride must be positive, found 0"):
        Shift(2, 2) / 0


# -- the object ------------------------------------------------------------------------------------


def test_construction_equality_hash_repr() -> None:
    assert Shift(3, -2) == Shift((3, -2)) == Shift([3, -2])
    assert Shift(torch.tensor(3), -2) == Shift(3, -2)
    assert Shift(3, -2) != Shift(-2, 3)
    assert Shift(1) != Shift(1, 0)
    assert len({Shift(1, 2), Shift((1, 2)), Shift(2, 1)}) == 2
    assert repr(Shift(3, -2)) == "Shift(3, -2)"
    assert str(Shift(3, -2)) == "(3, -2)"
    assert str(Shift(4)) == "(4,)"
    assert tuple(Shift(3, -2)) == (3, -2)
    assert Shift(3, -2).offsets == (3, -2)
    assert Shift(3, -2)[1] == -2
    assert len(Shift(1, 2, 3)) == Shift(1, 2, 3).ndim == 3
    assert Shift.identity(2).is_identity
    assert not Shift(0, 1).is_identity
    assert Shift(1, 2) - Shift(1, 2) == Shift.identity(2)
    assert pickle.loads(pickle.dumps(Shift(5, -1))) == Shift(5, -1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((1.5,), r"shift offsets must be integers, found 1\.5 \(float\)"),
        ((1, 2.0), r"must be integers, found 2\.0 \(float\) in \(1, 2\.0\)"),
        ((True,), r"must be integers, found True \(bool\)"),
        (("3",), r"must be integers, found '3' \(str\)"),
        ((), r"a shift needs at least one offset"),
        (((),), r"a shift needs at least one offset"),
    ],
    ids=["float", "float-in-tuple", "bool", "str", "nothing", "empty-tuple"],
)
def test_invalid_shifts(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        Shift(*args)  # type: ignore[arg-type]


def test_composing_shifts_of_different_dims_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"cannot compose Shift\(1\) \(1 dims\) with Shift\(1, 2\)"):
        Shift(1) + Shift(1, 2)


# -- shift sets ------------------------------------------------------------------------------------


def test_shifts_in_box() -> None:
    box = shifts_in_box(5, ndim=2)
    assert len(box) == 121
    assert len(set(box)) == 121
    assert Shift(0, 0) in box
    assert max(max(abs(o) for o in s) for s in box) == 5
    assert len(shifts_in_box((1, 2), ndim=2)) == 15
    assert len(shifts_in_box(1, ndim=3)) == 27


def test_circular_group_is_the_whole_group() -> None:
    group = circular_group((3, 4))
    assert len(group) == 12
    x = torch.randn(1, 1, 3, 4)
    images = {tuple(s.apply(x, "circular").flatten().tolist()) for s in group}
    assert len(images) == 12  # every element acts differently
    closed = {(a + b).wrap((3, 4)) for a in group for b in group}
    assert closed == {s.wrap((3, 4)) for s in group}


def test_multiples_of() -> None:
    shifts = multiples_of(2, max_shift=5, ndim=2)
    assert len(shifts) == 25
    assert all(s.divisible_by(2) for s in shifts)
    assert Shift(4, -4) in shifts
    assert multiples_of((1, 3), max_shift=3, ndim=2)[:3] == [Shift(-3, -3), Shift(-3, 0), Shift(-3, 3)]


# -- the batched action ----------------------------------------------------------------------------


@given(shift_and_signal(count=4), st.sampled_from(["zeros", "circular"]))
def test_apply_shifts_equals_applying_each_shift(
    case: tuple[list[Shift], torch.Tensor], boundary: str
) -> None:
    shifts, x = case
    batched = apply_shifts(x, shifts, boundary)  # type: ignore[arg-type]
    assert batched.shape == (len(shifts), *x.shape)
    for k, s in enumerate(shifts):
        assert torch.equal(batched[k], s.apply(x, boundary))  # type: ignore[arg-type]


@settings(max_examples=25)
@given(
    st.lists(st.tuples(st.integers(-4, 4), st.integers(-4, 4)), min_size=1, max_size=5),
    st.integers(0, 14),
    st.integers(1, 15),
    st.booleans(),
    st.sampled_from([1, 70]),
    st.sampled_from(["zeros", "circular"]),
)
def test_shifted_windows_take_equals_each_shift_in_both_of_its_copy_paths(
    shifts: list[tuple[int, int]], lo: int, length: int, shuffle: bool, channels: int, boundary: str
) -> None:
    # the engine's items: shift-major, every sample per shift, in chunks (here one slice of them),
    # or in any order. 70 channels of 8x8 are 4,480 elements a sample: runs of samples that share
    # a shift are copied as slices; one channel is gathered element-wise
    x = torch.randn(3, channels, 8, 8)
    items = torch.arange(len(shifts) * 3)[lo : lo + length]
    if shuffle:
        items = items[torch.randperm(len(items), generator=torch.Generator().manual_seed(lo))]
    if len(items) == 0:
        return
    offsets = torch.tensor(shifts)[items // 3]
    windows = ShiftedWindows(x, offsets, boundary)  # type: ignore[arg-type]
    taken = windows.take(items % 3, offsets)
    for k, item in enumerate(items.tolist()):
        expected = Shift(*shifts[item // 3]).apply(x[item % 3], boundary)  # type: ignore[arg-type]
        assert torch.equal(taken[k], expected)
    first = taken[0].clone()
    taken.zero_()  # a copy: writing to it (a model with an in-place first layer) changes nothing
    assert torch.equal(windows.take(items % 3, offsets)[0], first)
    # the offsets it was made with, by index: under either boundary, long runs are copied tile by
    # tile from x itself (the valid region, or the parts before and after the wrap), no padding
    given = windows.take_given(items % 3, torch.arange(len(items)))
    for k, item in enumerate(items.tolist()):
        expected = Shift(*shifts[item // 3]).apply(x[item % 3], boundary)  # type: ignore[arg-type]
        assert torch.equal(given[k], expected)


def test_apply_shifts_accepts_an_offsets_tensor_and_any_channel_layout() -> None:
    x = torch.randn(2, 5, 6)  # no channel dim: the shifts act on the last 2 dims
    out = apply_shifts(x, torch.tensor([[1, -2], [0, 3]]), "circular")
    assert torch.equal(out[0], torch.roll(x, (1, -2), (1, 2)))
    assert torch.equal(out[1], torch.roll(x, (0, 3), (1, 2)))


def test_apply_shifts_rejects_mixed_dims() -> None:
    with pytest.raises(InvalidArgument, match=r"same number of dims, found \[1, 2\]"):
        apply_shifts(torch.zeros(1, 1, 4, 4), [Shift(1), Shift(1, 1)])


# any int: unbounded Python ints, and the edges of int64 and of the old 2**62 clamp
ANY_INT = st.one_of(
    st.integers(),
    st.integers(-(2**80), 2**80),
    st.sampled_from([2**62, 2**62 + 1, -(2**62) - 3, 2**63 - 1, -(2**63), 2**63, 2**64 + 7]),
)
INT64 = st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([2**63 - 1, 2**63 - 2, -(2**63)]))


@st.composite
def huge_shifts_and_signal(
    draw: st.DrawFn, offset: st.SearchStrategy[int]
) -> tuple[list[Shift], torch.Tensor]:
    ndim = draw(st.integers(1, 2))
    sizes = draw(st.tuples(*[st.integers(1, 6)] * ndim))
    shifts = [Shift(draw(st.tuples(*[offset] * ndim))) for _ in range(draw(st.integers(1, 3)))]
    x = torch.randn(2, *sizes, generator=torch.Generator().manual_seed(draw(st.integers(0, 2**16))))
    return shifts, x


@given(huge_shifts_and_signal(ANY_INT), st.sampled_from(["zeros", "circular"]))
def test_apply_shifts_agrees_with_shift_apply_for_every_int(
    case: tuple[list[Shift], torch.Tensor], boundary: str
) -> None:
    shifts, x = case
    batched = apply_shifts(x, shifts, boundary)  # type: ignore[arg-type]
    for k, s in enumerate(shifts):
        assert torch.equal(batched[k], s.apply(x, boundary))  # type: ignore[arg-type]


@given(huge_shifts_and_signal(INT64), st.sampled_from(["zeros", "circular"]))
def test_a_tensor_of_int64_offsets_agrees_with_shift_apply(
    case: tuple[list[Shift], torch.Tensor], boundary: str
) -> None:
    shifts, x = case
    batched = apply_shifts(x, torch.tensor([s.offsets for s in shifts]), boundary)  # type: ignore[arg-type]
    for k, s in enumerate(shifts):
        assert torch.equal(batched[k], s.apply(x, boundary))  # type: ignore[arg-type]


def test_the_offsets_that_disagreed_before() -> None:
    x = torch.arange(5.0)
    # 2**64 + 2 wraps to 2**64 + 2 mod 5 = 3, but the old clamp to 2**62 gave 2**62 mod 5 = 4
    assert torch.equal(apply_shifts(x, [Shift(2**64 + 2)], "circular")[0], torch.roll(x, 3))
    # an int64 near its limit overflowed when centred: 2**63 - 1 mod 5 = 2
    assert torch.equal(apply_shifts(x, torch.tensor([[2**63 - 1]]), "circular")[0], torch.roll(x, 2))


def test_huge_offsets_and_bad_arguments_of_the_operators() -> None:
    x = torch.arange(5.0)
    assert torch.equal(Shift(2**63 + 1).apply(x, "circular"), Shift((2**63 + 1) % 5).apply(x, "circular"))
    assert not Shift(-(2**70)).apply(x).any()
    assert torch.equal(apply_shifts(x, [Shift(2**70)], "circular")[0], Shift(2**70 % 5).apply(x, "circular"))
    assert apply_shifts(torch.zeros(2, 0), [Shift(1)]).shape == (1, 2, 0)
    with pytest.raises(InvalidArgument, match=r"x must be a torch.Tensor, found \[1, 2\] \(list\)"):
        apply_shifts([1, 2], [Shift(1)])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=r"shifts must be a list of shifts, found None"):
        apply_shifts(x, None)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=r"a tensor of shifts must be a \(K, d\) integer tensor"):
        apply_shifts(x, torch.zeros(2, 1))
