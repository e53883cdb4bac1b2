"""The downsampling layers: Zhang's blur pooling (equal to antialiased_cnns.BlurPool), adaptive polyphase
sampling (a circular shift in, a circular shift out), and the converted layer classes."""

from __future__ import annotations

import io
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from equivariance import InvalidArgument
from equivariance.downsampling import BlurPool, PolyphaseSampling, binomial_filter, converted_class

# -- BlurPool ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "taps"),
    [
        (1, [1]),
        (2, [1, 1]),
        (3, [1, 2, 1]),
        (4, [1, 3, 3, 1]),
        (5, [1, 4, 6, 4, 1]),
        (7, [1, 6, 15, 20, 15, 6, 1]),
    ],
)
def test_the_filter_is_a_normalized_row_of_pascals_triangle(size: int, taps: list[int]) -> None:
    expected = torch.tensor(taps, dtype=torch.float32) / sum(taps)
    assert torch.equal(binomial_filter(size), expected)


@pytest.mark.parametrize("filter_size", range(1, 8))
@pytest.mark.parametrize("pad_type", ["reflect", "replicate", "zero"])
@pytest.mark.parametrize("stride", [2, 3])
def test_blurpool_equals_antialiased_cnns(filter_size: int, pad_type: str, stride: int) -> None:
    antialiased_cnns = pytest.importorskip(
        "antialiased_cnns", reason="the antialiased extra is not installed"
    )
    x = torch.randn(2, 3, 17, 20, generator=torch.Generator().manual_seed(filter_size))
    theirs = antialiased_cnns.BlurPool(3, pad_type=pad_type, filt_size=filter_size, stride=stride)(x)
    ours = BlurPool(stride, filter_size, "zeros" if pad_type == "zero" else pad_type)(x)  # type: ignore[arg-type]
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("filter_size", [1, 3, 4, 5])
def test_blurpool1d_equals_antialiased_cnns(filter_size: int) -> None:
    antialiased_cnns = pytest.importorskip(
        "antialiased_cnns", reason="the antialiased extra is not installed"
    )
    x = torch.randn(2, 3, 23)
    theirs = antialiased_cnns.BlurPool1D(3, pad_type="reflect", filt_size=filter_size, stride=2)(x)
    torch.testing.assert_close(BlurPool(2, filter_size)(x), theirs, rtol=1e-6, atol=1e-6)


def test_blurpool_in_three_dims_blurs_each_dim_alike() -> None:
    x = torch.zeros(1, 1, 9, 9, 9)
    x[..., 4, 4, 4] = 1.0
    out = BlurPool(1, 3, "zeros")(x)
    taps = torch.tensor([0.25, 0.5, 0.25])
    expected = taps[:, None, None] * taps[None, :, None] * taps[None, None, :]
    torch.testing.assert_close(out[0, 0, 3:6, 3:6, 3:6], expected)
    assert float(out.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("size", [7, 8, 31, 32])
@pytest.mark.parametrize("stride", [1, 2, 3, 4])
def test_blurpool_gives_ceil_of_size_over_stride(size: int, stride: int) -> None:
    assert BlurPool(stride)(torch.randn(1, 2, size, size)).shape[-2:] == (-(-size // stride),) * 2


def test_circular_blur_commutes_with_circular_shifts() -> None:
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    blur = BlurPool(1, 4, "circular").double()
    torch.testing.assert_close(blur(x.roll((3, -5), (-2, -1))), blur(x).roll((3, -5), (-2, -1)))


def test_the_filter_is_not_saved_with_the_model() -> None:
    assert BlurPool().state_dict() == {}
    assert BlurPool().double()(torch.randn(1, 1, 8, 8, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: BlurPool(0), r"stride must be positive, found 0; pass e\.g\. stride=2"),
        (
            lambda: BlurPool(2, 0),
            r"filter_size must be 1 or more .* found 0; pass Zhang's default filter_size=4",
        ),
        (
            lambda: BlurPool(2, 4, "wrap"),
            r"pad_type must be one of 'reflect', 'replicate', 'zeros', 'circular', found 'wrap'",
        ),
        (lambda: BlurPool(2.0), r"stride must be an integer, found 2\.0 \(float\)"),
    ],
)
def test_bad_options_are_refused(make: object, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        make()  # type: ignore[operator]


def test_reflection_on_a_map_too_small_for_it_is_refused_with_the_fix() -> None:
    with pytest.raises(
        InvalidArgument,
        match=r"BlurPool pads by 2 samples with pad_type 'reflect', which needs maps of more than 2 samples, found a map of \(2, 2\); use a larger input, or pad_type='zeros' or 'replicate'",
    ):
        BlurPool()(torch.randn(1, 4, 2, 2))
    assert BlurPool(2, 4, "zeros")(torch.randn(1, 4, 2, 2)).shape == (1, 4, 1, 1)


def test_a_tensor_that_is_not_a_batch_of_maps_is_refused() -> None:
    with pytest.raises(
        InvalidArgument, match=r"BlurPool takes \(N, C, \*spatial\) with 1 to 3 spatial dims, found \(4, 4\)"
    ):
        BlurPool()(torch.randn(4, 4))


# -- adaptive polyphase sampling --------------------------------------------------------------------


def components(x: torch.Tensor, stride: int) -> list[torch.Tensor]:
    """Every polyphase component of a 2-D map, by hand."""
    return [x[..., a::stride, b::stride] for a in range(stride) for b in range(stride)]


@settings(max_examples=25, deadline=None)
@given(
    stride=st.integers(2, 3),
    blocks=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    offsets=st.tuples(st.integers(-12, 12), st.integers(-12, 12)),
    seed=st.integers(0, 2**16),
)
def test_a_circular_shift_in_is_a_circular_shift_out(
    stride: int, blocks: tuple[int, int], offsets: tuple[int, int], seed: int
) -> None:
    size = (blocks[0] * stride, blocks[1] * stride)
    x = torch.randn(3, 2, *size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    sampling = PolyphaseSampling(stride)
    out, moved = sampling(x), sampling(x.roll(offsets, (-2, -1)))
    for sample in range(3):  # each sample keeps its own grid: its own whole-sample shift
        candidates = [out[sample].roll((a, b), (-2, -1)) for a in range(blocks[0]) for b in range(blocks[1])]
        assert any(torch.equal(moved[sample], c) for c in candidates)


def test_the_component_of_largest_norm_is_kept_per_sample() -> None:
    x = torch.randn(5, 3, 8, 8)
    out = PolyphaseSampling(2)(x)
    for sample in range(5):
        parts = components(x[sample], 2)
        best = max(parts, key=lambda p: float(p.double().pow(2).sum()))
        assert torch.equal(out[sample], best)


def test_plain_subsampling_is_not_a_shift_of_itself_the_negative_control() -> None:
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    out, moved = x[..., ::2, ::2], x.roll(1, -1)[..., ::2, ::2]
    assert not any(torch.equal(moved, out.roll((a, b), (-2, -1))) for a in range(4) for b in range(4))


def test_layers_given_the_same_source_keep_the_same_grid() -> None:
    x = torch.randn(4, 3, 8, 8)
    sampling = PolyphaseSampling(2)
    first, second = torch.randn(4, 5, 8, 8), torch.randn(4, 5, 8, 8)
    chosen = sampling(first, x)
    shared = sampling(second, x)
    alone = sampling(second)
    for sample in range(4):
        index = next(i for i, p in enumerate(components(first[sample], 2)) if torch.equal(p, chosen[sample]))
        assert torch.equal(shared[sample], components(second[sample], 2)[index])
    assert not torch.equal(shared, alone)  # the second map's own largest grids differ (seeded draw)


def test_a_source_written_to_since_is_not_shared() -> None:
    x = torch.randn(4, 3, 8, 8)
    sampling = PolyphaseSampling(2)
    sampling(torch.randn(4, 5, 8, 8), x)
    x.add_(1.0)
    second = torch.randn(4, 5, 8, 8)
    assert torch.equal(sampling(second, x), sampling(second))


def test_a_size_the_stride_does_not_divide_continues_circularly() -> None:
    assert PolyphaseSampling(2)(torch.randn(2, 3, 7, 9)).shape == (2, 3, 4, 5)


def test_polyphase_with_a_blur_blurs_at_stride_one_first() -> None:
    x = torch.randn(2, 3, 8, 8)
    blurred = BlurPool(1, 3, "circular")(x)
    torch.testing.assert_close(PolyphaseSampling(2, 3)(x), PolyphaseSampling(2)(blurred))


# -- the converted classes --------------------------------------------------------------------------


def test_a_converted_class_is_a_subclass_of_the_layers_class_made_once() -> None:
    cls = converted_class("Antialiased", nn.Conv2d)
    assert cls.__name__ == "AntialiasedConv2d"
    assert issubclass(cls, nn.Conv2d)
    assert converted_class("Antialiased", nn.Conv2d) is cls
    assert converted_class("Circular", converted_class("Polyphase", nn.MaxPool2d)).__name__ == (
        "PolyphaseCircularMaxPool2d"
    )
    with pytest.raises(
        InvalidArgument,
        match=r"kind must be one of \['Antialiased', 'Circular', 'Polyphase'\], found 'Blurred'",
    ):
        converted_class("Blurred", nn.Conv2d)


def test_a_model_with_converted_layers_pickles_and_loads() -> None:
    from equivariance.surgery import antialias, circular_padding, polyphase

    model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.MaxPool2d(3, 2, 1))
    for fixed in (antialias(model), circular_padding(polyphase(model))):
        buffer = io.BytesIO()
        torch.save(fixed, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        x = torch.randn(2, 1, 16, 16)
        assert type(loaded[0]).__name__ == type(fixed[0]).__name__
        torch.testing.assert_close(loaded(x), fixed(x))
    assert pickle.loads(pickle.dumps(converted_class("Polyphase", nn.Conv1d))).__name__ == "PolyphaseConv1d"
