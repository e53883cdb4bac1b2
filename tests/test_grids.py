"""The one stride rule (``equivariance._engine.grids``): its edges, its laws, and sizes it must refuse."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from equivariance._engine.grids import divides, shown, stated_stride, step, stride_of, times, whole_samples
from equivariance.downsampling import BlurPool

SIZES = st.integers(1, 400)


@pytest.mark.parametrize(
    ("size_in", "size_out", "stride"),
    [
        (6, 4, 1),  # a valid 3x3 convolution: a ratio of exactly 1.5, and stride 2 makes only 3
        (12, 8, 1),  # a valid 5x5 convolution: 1.5 again
        (8, 5, 1),  # a ratio of 1.6 rounds to 2, which makes at most ceil(8 / 2) = 4 samples
        (18, 7, 2),  # 2.57 rounds to 3, which makes at most 6
        (16, 8, 2),  # exactly at the limit: ceil(16 / 2) = 8
        (15, 8, 2),  # an odd size, padded: ceil(15 / 2) = 8, at the limit
        (7, 4, 2),  # odd, at the limit, a ratio of 1.75
        (9, 3, 3),
        (10, 4, 2),  # a ratio of exactly 2.5 rounds down: stride 2 with a valid 3-tap kernel
        (5, 2, 2),  # 2.5 at a small size: pooling by 2 in forward (floor), not stride 3
        (20, 7, 3),  # a ratio of 2.86, not an integer
        (11, 4, 3),
        (28, 12, 2),  # LeNet's four valid 5x5 convolutions read at once: the sizes cannot tell
        (224, 7, 32),
        (9, 1, 9),  # one sample left: global pooling, a stride of the whole map
        (1, 1, 1),  # a one-sample map stays one sample
        (5, 5, 1),
        (4, 8, 1),  # a map that grows has stride 1 (the upsampling factor is read the other way)
    ],
    ids=lambda v: str(v),
)
def test_stride_of_reads_the_sizes_at_its_edges(size_in: int, size_out: int, stride: int) -> None:
    assert stride_of(size_in, size_out) == stride


@pytest.mark.parametrize(
    ("size_in", "size_out", "refused"),
    [
        (6, 4, 2),  # what the old rule said: 1.5 rounded to 2
        (12, 8, 2),
        (8, 5, 2),
        (18, 7, 3),
        (16, 9, 2),  # one past the limit
        (15, 9, 2),
        (9, 2, 9),  # two samples are not global pooling
        (7, 2, 4),  # the largest stride that makes 2 of 7 is 6, but the ratio says 3 or 4: not 4
    ],
    ids=lambda v: str(v),
)
def test_a_stride_that_cannot_make_the_size_or_that_the_ratio_does_not_say_is_not_chosen(
    size_in: int, size_out: int, refused: int
) -> None:
    assert stride_of(size_in, size_out) != refused


@given(SIZES, SIZES)
def test_stride_of_never_chooses_a_stride_that_cannot_make_the_size(a: int, b: int) -> None:
    size_in, size_out = max(a, b), min(a, b)
    stride = stride_of(size_in, size_out)
    assert stride >= 1
    assert math.ceil(size_in / stride) >= size_out
    assert stride_of(size_in, size_out) >= stride_of(size_in, min(size_out + 1, size_in))  # monotone


@given(st.integers(1, 40), st.integers(1, 60), st.data())
def test_a_padded_stride_is_read_exactly_unless_its_remainder_is_half_the_map(
    stride: int, size_out: int, data: st.DataObject
) -> None:
    """``size_out = ceil(size_in / stride)`` (any ordinary padding at the limit) with a remainder ``r``:
    ``size_in = stride * size_out - r``; the ratio is ``stride - r / size_out``."""
    remainder = data.draw(st.integers(0, min(stride - 1, stride * size_out - 1)))
    size_in = stride * size_out - remainder
    assert math.ceil(size_in / stride) == size_out
    if 2 * remainder < size_out:
        assert stride_of(size_in, size_out) == stride
    else:  # the sizes say less: 3 -> 2 is a valid 2-tap kernel as much as a padded stride 2
        assert stride_of(size_in, size_out) < stride


@given(st.integers(2, 400), st.data())
def test_a_map_larger_than_half_its_input_is_stride_1(size_in: int, data: st.DataObject) -> None:
    """No stride of 2 or more makes more than ``ceil(n / 2)`` samples: a valid kernel shrinks, no more."""
    size_out = data.draw(st.integers(math.ceil(size_in / 2) + 1, size_in))
    assert stride_of(size_in, size_out) == 1
    assert stride_of(size_in, math.ceil(size_in / 2)) == 2 or size_in <= 3


@pytest.mark.parametrize(
    ("size_in", "size_out", "stated", "factor"),
    [
        (8, 16, None, Fraction(1, 2)),  # upsampling by 2 divides
        (8, 24, None, Fraction(1, 3)),  # and by 3
        (5, 15, None, Fraction(1, 3)),
        (8, 15, None, Fraction(1, 2)),  # an odd size upsampled to a map of stride 16 from one of 32
        (1, 2, None, Fraction(1, 2)),  # a one-sample map upsampled
        (8, 12, None, Fraction(1)),  # 1.5 is no integer factor: read as stride 1, not 2/3
        (256, 262, None, Fraction(1)),  # reflection padding grows the map by a few samples
        (2, 3, 2, Fraction(1, 2)),  # a transposed convolution states its factor: 2n - 1 samples
        (8, 16, 2, Fraction(1, 2)),
        (6, 4, None, Fraction(1)),
        (6, 2, 2, Fraction(2)),  # a stated stride wins over the sizes (a valid 3x3, stride 2)
        (112, 57, 2, Fraction(2)),  # a padded ceil-mode pooling makes one more than ceil(n / 2)
        (1, 1, 2, Fraction(2)),
        (6, 6, None, Fraction(1)),
    ],
    ids=lambda v: str(v),
)
def test_step_multiplies_where_the_map_shrinks_and_divides_where_it_grows(
    size_in: int, size_out: int, stated: int | None, factor: Fraction
) -> None:
    assert step(size_in, size_out, stated) == factor


@given(SIZES, SIZES)
def test_reading_a_growing_map_is_reading_the_shrinking_one_the_other_way(a: int, b: int) -> None:
    assert step(a, b) * step(b, a) == 1


def test_strides_multiply_exactly_and_say_which_shifts_they_divide() -> None:
    third = times((1,), (Fraction(1, 3),))
    assert third == (1 / 3,)
    assert times(third, (Fraction(3),)) == (1,)
    assert isinstance(times(third, (Fraction(3),))[0], int)
    assert [divides(s, o) for s, o in (((2, 2), (4, -2)), (third, (1,)), ((1 / 2,), (1,)))] == [True] * 3
    assert [divides(s, o) for s, o in (((2, 2), (1, 0)), ((1.5,), (1,)), ((4,), (2,)))] == [False] * 3
    assert 1 % third[0] != 0  # the reason divides reads fractions: a float remainder is not zero
    assert whole_samples((4, 0.5, 1.5)) == (4, 1, 2)
    assert [shown(s) for s in (2, 0.5, 1 / 3, 1.5)] == ["2", "1/2", "1/3", "3/2"]


@pytest.mark.parametrize(
    ("module", "stated"),
    [
        (nn.Conv2d(1, 1, 3, stride=(2, 1)), (2, 1)),
        (nn.Conv1d(1, 1, 3), (1,)),
        (nn.MaxPool2d(3), (3, 3)),  # a pooling without a stride: its kernel
        (nn.AvgPool2d(3, stride=2), (2, 2)),
        (nn.LPPool2d(2, 3), (3, 3)),  # an LPPool keeps stride None: its kernel
        (nn.ConvTranspose2d(1, 1, 2, stride=2), (2, 2)),  # an upsampling factor (the map grows)
        (BlurPool(stride=2), (2, 2)),
        (nn.ReLU(), None),
        (nn.AdaptiveAvgPool2d(1), None),
        (nn.Upsample(scale_factor=2), None),
        (nn.Conv3d(1, 1, 3), None),  # three strides for two spatial dims: not a stride of this map
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else str(v),
)
def test_the_stride_a_module_states(module: nn.Module, stated: tuple[int, ...] | None) -> None:
    assert stated_stride(module, 2 if stated is None or len(stated) != 1 else 1) == stated


def test_a_stride_attribute_that_is_no_stride_is_not_one() -> None:
    odd = nn.Module()
    for value in (True, 0, 1.5, "2", (2, "a")):
        odd.stride = value  # type: ignore[assignment]
        assert stated_stride(odd, 2) is None, value
