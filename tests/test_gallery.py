"""What the library says about small models with the structures of common architectures (issue 11).

The models are in ``examples/gallery.py`` (the docs page "What the profile says about common
architectures" draws their profiles). Each test pins the verdict, the culprit and its cause, the
inferred stride and margin.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from equivariance import (
    EquivarianceProfile,
    Shift,
    check_equivariance,
    check_invariance,
    multiples_of,
    profile_equivariance,
)
from equivariance.layouts import Tokens

# examples/ is not a package: it goes on the path before the import
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import gallery


def _strides(profile: object) -> set[tuple[int, ...] | None]:
    return {layer.stride for layer in profile.layers}  # type: ignore[attr-defined]


def test_resnet_stage() -> None:
    model, x = gallery.resnet_stage(), gallery.canvas()
    profile = profile_equivariance(model, x, (1, 0))
    first = profile.first_failure
    assert first is not None
    assert (first.name, first.cause, first.stride) == ("layer2.downsample.0", "aliasing", (2, 2))
    assert _strides(profile) == {(1, 1), (2, 2)}
    assert profile_equivariance(model, x, (2, 0)).passed
    report = check_equivariance(model, x, stride="auto", margin="auto")
    assert report.passed
    assert (report.output_action, report.margin) == ("shift / 2 (inferred)", (3, 3))


def test_resnet_stage_with_zero_initialised_residuals_gets_the_architectures_margin() -> None:
    x = gallery.canvas(size=96, content=48)
    trained_like = check_equivariance(gallery.resnet_stage(), x, stride="auto", margin="auto")
    zero_init = check_equivariance(
        gallery.resnet_stage(zero_init_residual=True), x, stride="auto", margin="auto"
    )
    assert zero_init.margin == trained_like.margin == (3, 3)  # the shortcut alone reaches 1
    assert "depends on 13 x 13 input samples" in zero_init.inferred[1]
    assert "all-zero weights (layer1.bn2.weight, layer2.bn2.weight) set to ones" in zero_init.inferred[1]
    assert "all-zero weights" not in trained_like.inferred[1]
    assert zero_init.passed


def test_convnext_stage() -> None:
    model, x = gallery.convnext_stage(), gallery.canvas(size=128, content=64)
    profile = profile_equivariance(model, x, (4, 0))
    first = profile.first_failure
    assert first is not None
    assert (first.name, first.type, first.cause, first.stride) == (
        "downsample.3",
        "Conv2d",
        "aliasing",
        (8, 8),
    )
    assert _strides(profile) == {(4, 4), (8, 8)}
    layouts = {layer.name: layer.layout for layer in profile.layers}
    assert layouts["stage1.block.2"] == layouts["downsample.1"] == "channels_last"  # the LayerNorms
    assert layouts["stage1.block.6"] == layouts["downsample.3"] == "channels_first"
    assert all(layer.passed for layer in profile.layers if layer.stride == (4, 4))
    report = check_equivariance(model, x, stride="auto", margin="auto")
    assert report.passed
    assert (report.output_action, report.margin) == ("shift / 8 (inferred)", (5, 5))


def test_vit() -> None:
    model, x = gallery.vit(), gallery.canvas()
    profile = profile_equivariance(model, x, (16, 0))
    assert profile["patch_embed"].passed
    assert profile["patch_embed"].stride == (16, 16)
    first = profile.first_failure
    assert first is not None
    assert (first.name, first.type, first.cause, first.layout) == (
        "blocks.0.norm1 (input)", "(forward)", "absolute positions", "tokens",
    )  # fmt: skip
    assert first.fix is not None
    assert first.fix.startswith(
        "the parameter pos_embed of shape (1, 17, 16) holds a different value at every position"
    )
    assert "The break happens between patch_embed and blocks.0.norm1, in forward." in first.fix
    assert (
        "first failure between patch_embed and blocks.0.norm1 (in forward, not a submodule)"
        in profile.summary()
    )
    report = check_equivariance(model, x, multiples_of(16, 16), layer="patch_embed", stride="auto")
    assert report.passed
    assert report.output_action == "shift / 16 (inferred)"


def test_squeeze_excite_is_global_pooling_not_aliasing() -> None:
    model = gallery.squeeze_excite_net()
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    profile = profile_equivariance(model, image, (1, 0))
    pool = profile["se.pool"]
    assert (pool.passed, pool.cause) == (False, "global pooling")
    assert pool.fix is not None
    assert "pools the whole map into one value per channel" in pool.fix
    assert "subsampled" not in pool.fix
    assert "global" in next(line for line in str(profile).splitlines() if line.lstrip().startswith("se.pool"))
    first = profile.first_failure
    assert first is not None
    assert (first.name, first.cause) == ("conv1", "borders")  # the image's own edges come first
    # content inside a zero canvas: the pooled statistics do not change, and the map follows the shift
    assert check_equivariance(model, gallery.canvas(), margin=2).passed


def test_mobilenet_blocks() -> None:
    model, x = gallery.depthwise_net(), gallery.canvas()
    profile = profile_equivariance(model, x, (1, 0))
    first = profile.first_failure
    assert first is not None
    assert (first.name, first.cause, first.stride) == ("block2.depthwise.0", "aliasing", (2, 2))
    report = check_equivariance(model, x, stride="auto", margin="auto")
    assert report.passed
    assert (report.output_action, report.margin) == ("shift / 2 (inferred)", (2, 2))


def test_fcn_head() -> None:
    model, x = gallery.fcn_head(), gallery.canvas()
    profile = profile_equivariance(model, x, (1, 0))
    first = profile.first_failure
    assert first is not None
    assert (first.name, first.cause) == ("conv1", "aliasing")
    upsample = profile["upsample"]
    assert (upsample.stride, upsample.cause) == ((1, 1), "aliasing")  # not "no symmetry"
    assert upsample.fix is not None
    assert upsample.fix.startswith("the map was subsampled by 2 at conv1 (Conv2d)")
    report = check_equivariance(model, x, stride="auto")
    assert not report.passed
    assert report.output_action == "shift (inferred)"
    assert "no input shift of 1 to 2 tried moves the output (64, 64) cleanly" in report.inferred[0]
    assert not any("Dense layers" in h for h in report.hints)
    # margin='auto' (5, the centre output's reach) is short of the reach of the zero padding of the
    # stride-4 map, which the upsampling spreads over whole cells of 4 samples: pass it by hand
    assert check_equivariance(model, x, multiples_of(4, 8), margin=8).passed


def test_unet() -> None:
    model, x = gallery.unet(), gallery.canvas()
    profile = profile_equivariance(model, x, (1, 0))
    first = profile.first_failure
    assert first is not None
    assert (first.name, first.cause) == ("enc1.2", "borders")  # biases meet the canvas's zero padding
    assert (profile["pool"].cause, profile["up"].cause) == ("aliasing", "aliasing")
    assert profile["up"].fix is not None
    assert profile["up"].fix.startswith("the map was subsampled by 2 at pool (MaxPool2d)")
    report = check_equivariance(model, x, stride="auto", margin="auto")
    assert not report.passed
    assert (report.output_action, report.margin) == ("shift (inferred)", (9, 9))
    assert any("looks like a stride-2 layer followed by upsampling" in h for h in report.hints)
    assert check_equivariance(model, x, multiples_of(2, 4), margin="auto").passed


def test_blur_pooling() -> None:
    model, x = gallery.blurpool_net(), gallery.canvas()
    profile = profile_equivariance(model, x, (1, 0))
    first = profile.first_failure
    assert first is not None
    assert (first.name, first.cause) == ("blurpool", "aliasing")
    assert first.fix is not None
    assert first.fix.startswith(
        "blurpool blurs before it subsamples by 2: blurring reduces aliasing but does not remove it"
    )
    assert "make the downsampling anti-aliased" not in first.fix
    report = check_equivariance(model, x, stride="auto", margin="auto")
    assert report.passed
    assert (report.output_action, report.margin) == ("shift / 2 (inferred)", (3, 3))


def test_the_blur_fix_says_by_how_much_the_blur_lowers_the_error() -> None:
    """The profile also compares the blurring layer's input subsampled by the same step without the
    blur: recomputed here by hand (the shift of 1 rounds to no move on the stride-2 grid)."""
    model, x = gallery.blurpool_net(), gallery.canvas()
    first = profile_equivariance(model, x, (1, 0)).first_failure
    assert first is not None
    assert first.fix is not None
    found = re.search(
        r"without the blur: ([0-9.e+-]+), so the blur divides the error by ([0-9.]+)\)", first.fix
    )
    assert found is not None, first.fix
    without, factor = float(found[1]), float(found[2])
    before_blur = model[:3]  # conv1, relu, maxpool: what the BlurPool is given
    with torch.no_grad():
        moved = before_blur(Shift(1, 0).apply(x))[..., ::2, ::2]
        still = before_blur(x)[..., ::2, ::2]
    by_hand = float(((moved - still).flatten(1).norm(dim=1) / still.flatten(1).norm(dim=1)).max())
    assert without == pytest.approx(by_hand, rel=0.05)  # as printed, two significant digits
    assert factor == pytest.approx(by_hand / first.error, rel=0.05)
    assert factor > 1.5  # the blur removes a good part of the aliasing, not all of it


# the docs page's checks that fail, to show their hints
FAILING = {
    "FCN head",
    "U-Net",
    "patchify and a 7x7 depthwise convolution",
    "a global-pool branch (LRASPP)",
    "circular ResNet stem",
    "ResNet classifier",
    "ViT without a position embedding",
}


@pytest.mark.parametrize("name", sorted(gallery.GALLERY))
def test_every_case_of_the_docs_page_runs_and_profiles_without_ambiguity(name: str) -> None:
    profile, report = gallery.CASES[name].run(gallery.GALLERY[name]())
    assert all(layer.compared for layer in profile.layers)
    assert profile.first_failure is not None  # each case shows where its model breaks
    assert report.passed == (name not in FAILING)
    assert report.vacuous is None
    assert not any("Dense layers" in hint for hint in report.hints)  # none of them has one


@pytest.mark.parametrize("name", sorted(gallery.GALLERY))
def test_every_way_of_comparing_the_layers_gives_each_the_same_verdict(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The profile compares small layers together at the end of its pass (from copy-on-write
    snapshots), large ones as they return, and a permuted view or an Identity by the row it was
    computed from; each must judge every layer as comparing it on its own, at once, would: the
    engine's GridSums and FlatSums (taken when a float64 output needs scaling)."""
    case = gallery.CASES[name]
    x = eval(case.inputs, {"canvas": gallery.canvas, "image": gallery.image})
    _judged_every_way(gallery.GALLERY[name](), x, case.shift, monkeypatch, case.boundary)


@pytest.mark.parametrize("name", sorted(gallery.GALLERY))
def test_two_passes_joined_layer_by_layer_give_the_profile_of_the_one_batch(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the samples of a batch interact, the profile runs x and its moved copy apart and joins
    each layer's outputs (views, in-place writes, tensors computed in forward) into one batch's: on
    models whose samples do not interact, forced to take that path, every row must come out as the
    one batch's, bit for bit."""
    import equivariance._engine.passes as passes

    case = gallery.CASES[name]
    model = gallery.GALLERY[name]()
    x = eval(case.inputs, {"canvas": gallery.canvas, "image": gallery.image})
    one = profile_equivariance(model, x, case.shift)
    assert one.separate_passes is None
    monkeypatch.setattr(passes, "_interaction", lambda *_: "forced")
    two = profile_equivariance(model, x, case.shift)
    assert two.separate_passes == "forced"
    assert [dataclasses.replace(row, error=0.0) for row in two.layers] == [
        dataclasses.replace(row, error=0.0) for row in one.layers
    ]
    assert [row.error for row in two.layers] == pytest.approx(
        [row.error for row in one.layers], rel=0, abs=0, nan_ok=True
    )


def test_zero_layers_are_judged_in_the_one_pass_as_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Residual branches whose last BatchNorm starts at zero return all-zero maps: their squares are
    exact in float64, so the one pass judges them (an all-zero reference, measured absolutely)."""
    import equivariance._engine.passes as passes

    calls = []
    call_until = passes.call_until
    monkeypatch.setattr(passes, "call_until", lambda *a: calls.append(1) or call_until(*a))
    model, x = gallery.resnet_stage(zero_init_residual=True), gallery.canvas()
    profile = profile_equivariance(model, x, (1, 0))
    assert len(calls) == 1  # a stride fails first (no x[:1] alone), and no pass runs again
    assert profile["layer1.bn2"].error == 0.0
    assert profile["layer1.bn2"].passed
    monkeypatch.undo()
    _judged_every_way(model, x, (1, 0), monkeypatch)


def _judged_every_way(
    model: torch.nn.Module,
    x: torch.Tensor,
    shift: tuple[int, ...],
    monkeypatch: pytest.MonkeyPatch,
    boundary: str = "zeros",
) -> None:
    import equivariance._engine.passes as passes

    def profiled() -> EquivarianceProfile:
        return profile_equivariance(model, x, shift, boundary=boundary)  # type: ignore[arg-type]

    profiles = [profiled()]
    monkeypatch.setattr(passes, "_signature", lambda view: None)  # no comparison shared
    profiles.append(profiled())
    monkeypatch.setattr(passes, "sample_scale", lambda base: torch.ones(len(base)))
    profiles.append(profiled())  # a sink of its own per layer
    reference = profiles[-1]
    assert any(not row.passed for row in reference.layers)
    for profile in profiles[:-1]:
        assert [row.name for row in profile.layers] == [row.name for row in reference.layers]
        for a, b in zip(profile.layers, reference.layers):
            assert a.error == pytest.approx(b.error, rel=1e-5, abs=1e-12), a.name
            assert (a.passed, a.border, a.cause) == (b.passed, b.border, b.cause), a.name
    # the pooled ways also measure a blurring layer's input without the blur, for its fix
    assert [row.fix for row in profiles[0].layers] == [row.fix for row in profiles[1].layers]


def test_a_permuted_view_shares_the_comparison_of_the_map_it_views() -> None:
    model, x = gallery.convnext_stage(), gallery.canvas(size=128, content=64)
    profile = profile_equivariance(model, x, (4, 0))
    # stem.1 permutes stem.0's map to channels last; stage1.block.6 permutes block.5's back
    assert profile["stem.1"].error == profile["stem.0"].error
    assert profile["stage1.block.6"].error == profile["stage1.block.5"].error
    assert profile["stem.1"].layout == "channels_last"
    assert profile["stem.0"].layout == "channels_first"


@pytest.mark.parametrize("name", ["blur pooling", "ViT", "ConvNeXt stage", "U-Net"])
def test_a_float64_profile_measures_every_kind_of_row_as_float32_does(name: str) -> None:
    """Every kind of row (layer outputs, tensors computed in forward, a blurring layer's input
    without the blur, permuted views) gives the same error, verdict, cause and fix in float64 as in
    float32, where its error is above float32's rounding."""
    case = gallery.CASES[name]
    model = gallery.GALLERY[name]()
    x = eval(case.inputs, {"canvas": gallery.canvas, "image": gallery.image})
    single = profile_equivariance(model, x, case.shift)
    double = profile_equivariance(model.double(), x.double(), case.shift)
    assert single.first_failure is not None
    assert [row.name for row in double.layers] == [row.name for row in single.layers]
    for a, b in zip(double.layers, single.layers):
        if b.error > 1e-3:
            assert a.error == pytest.approx(b.error, rel=1e-3), a.name
            assert (a.passed, a.cause, a.fix) == (b.passed, b.cause, b.fix), a.name
        else:
            assert a.error < 1e-3, a.name
    blurred = [row.fix for row in double.layers if row.fix and "without the blur" in row.fix]
    assert bool(blurred) == (name == "blur pooling")


# -- diagnoses on real blocks (issue 21, items 13 and 14) -------------------------------------------
#
# Each failing case is pinned with its cause and its reason, and beside it a model where that reason
# is false, which must not get it.


class DenseOnMap(nn.Module):
    """A linear map of every position of each channel to every other: a dense layer on a map."""

    def __init__(self, channels: int, size: int) -> None:
        super().__init__()
        self.size = size
        self.mix = nn.Parameter(torch.randn(size * size, size * size) / size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = x.flatten(2) @ self.mix
        return mixed.unflatten(2, (self.size, self.size))


class AddedPositions(nn.Module):
    """A learned value for every position and channel, added to the map."""

    def __init__(self, channels: int, size: int) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(channels, size, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.embedding


def test_a_padding_whose_reach_covers_a_small_map_is_borders_not_no_symmetry() -> None:
    """A 7x7 depthwise convolution (padding 3) on the 6x6 map a stride-4 stem leaves of a 24x24 image:
    every compared sample is within 3 samples of an edge, so the error everywhere is the borders'."""
    model, x = gallery.patchify_depthwise(), gallery.image(size=24)
    profile = profile_equivariance(model, x, (4, 0))
    first = profile.first_failure
    assert first is not None
    assert (first.name, first.cause, first.border) == ("dwconv", "borders", None)
    reach = (
        "the padding of 'dwconv' (Conv2d, padding 3, zero padding) reaches 3 samples in from each edge "
        "of this map at stride 4, whose compared region has 5 along dim 0"
    )
    assert first.fix is not None
    assert first.fix.startswith(reach)
    report = check_equivariance(model, x, stride=4)
    assert not report.passed
    (hint,) = report.hints
    assert "the padding of 'dwconv' (Conv2d, padding 3, zero padding) reaches 3 samples" in hint
    assert "Dense layers" not in hint
    # the same model padded circularly follows circular shifts: it was the borders
    circular = gallery.patchify_depthwise(padding_mode="circular")
    assert check_equivariance(circular, x, stride=4, boundary="circular").passed
    assert profile_equivariance(circular, x, (4, 0), boundary="circular").passed


def test_a_dense_layer_on_a_small_map_without_padding_is_still_no_symmetry() -> None:
    """The negative control: the same stem and map, a dense layer and no padding to reach anything."""
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("stem", nn.Conv2d(3, 8, 4, stride=4))
    model.add_module("dense", DenseOnMap(8, 6))
    x = gallery.image(size=24)
    first = profile_equivariance(model, x, (4, 0)).first_failure
    assert first is not None
    assert (first.name, first.cause) == ("dense", "no symmetry")
    (hint,) = check_equivariance(model, x, stride=4).hints
    assert "Dense layers" in hint
    assert "reaches" not in hint


def test_a_position_embedding_on_a_map_the_padding_does_not_cover_is_named_not_the_borders() -> None:
    """The padding reaches 3 samples of a 12x12 map: the error beyond them is a position embedding's."""
    torch.manual_seed(0)
    model = gallery.patchify_depthwise()
    model.add_module("positions", AddedPositions(8, 12))
    x = gallery.image(size=48)
    profile = profile_equivariance(model, x, (4, 0))
    assert profile["dwconv"].cause == "borders"
    positions = profile["positions"]
    assert positions.cause == "absolute positions"
    assert positions.fix is not None
    assert positions.fix.startswith("the parameter positions.embedding of shape (8, 12, 12)")
    hints = check_equivariance(model, x, stride=4).hints
    assert hints[0].startswith("the parameter positions.embedding of shape (8, 12, 12) holds a different")
    assert not any("reaches" in hint for hint in hints)


def test_the_convnext_stage_on_a_small_image_is_borders_at_its_second_block() -> None:
    """ConvNeXt's 7x7 depthwise convolutions on the 4x4 map of a 32x32 image at stride 8: as
    ``stages.2.blocks.0.conv_dw`` of a ConvNeXt at a 16-pixel shift, the borders', not no symmetry."""
    model, x = gallery.convnext_stage(), gallery.image()
    profile = profile_equivariance(model, x, (8, 0))
    row = profile["stage2.block.0"]
    assert (row.stride, row.cause) == ((8, 8), "borders")
    assert not any(layer.cause == "no symmetry" for layer in profile.layers)
    (hint,) = check_equivariance(model, x, stride=8).hints
    assert "reaches 5 samples in from each edge of this map at stride 8" in hint


def test_a_global_pool_branch_is_global_pooling_in_the_check_and_the_profile() -> None:
    """LRASPP's head, on whole images: the default check's one- and two-sample shifts meet the
    stride-4 backbone that was upsampled back first, then the pooled value they change."""
    model, x = gallery.lraspp_head(), gallery.image()
    hints = check_equivariance(model, x).hints
    assert hints[0].startswith("the model subsamples by 4 inside (down to 'conv2')")
    assert hints[1].startswith("head.scale.0 pools the whole map into one value per channel, and the shift")
    assert not any("Dense layers" in hint for hint in hints)
    profile = profile_equivariance(model, x, (4, 0))
    assert [profile[f"head.scale.{i}"].cause for i in range(3)] == ["global pooling"] * 3
    # the gate moves the map it multiplies by less than the tolerance away from the borders: measured,
    # the borders are the cause there
    assert (profile["classifier"].cause, profile["classifier"].border) == ("borders", 1)


def test_the_rows_a_changed_global_pooling_gates_are_global_pooling() -> None:
    """The squeeze-excite block's gate, changed by a shift of whole images, multiplies every sample of
    the map after it: the error there is everywhere, and it is the pooling's."""
    model, x = gallery.squeeze_excite_net(), gallery.image()
    profile = profile_equivariance(model, x, (4, 0))
    conv2 = profile["conv2"]
    assert (conv2.cause, conv2.border) == ("global pooling", None)
    assert conv2.fix is not None
    assert conv2.fix.startswith("the error is everywhere, after se.pool pooled the whole map")
    # negative control: a one-sample shift changes the gate less, and conv2's error stays at the borders
    assert profile_equivariance(model, x, (1, 0))["conv2"].cause == "borders"


class Gated(nn.Module):
    """A squeeze-excite gate without the squeeze: the map times the sigmoid of its global average."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.pool(x))


def test_a_global_pooling_is_named_only_where_the_shift_changes_its_value() -> None:
    """A gate on the global average, then a dense layer on the map. On a zero canvas whose content the
    shifts keep inside, the average does not change: the dense layer is named, not the pooling. On
    whole images the shift changes the average, and the hint says by how much."""
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("conv", nn.Conv2d(3, 4, 1, bias=False))
    model.add_module("gate", Gated())
    model.add_module("dense", DenseOnMap(4, 12))
    model.eval()
    canvas = gallery.canvas(size=12, content=6)
    (hint,) = check_equivariance(model, canvas).hints
    assert "Dense layers" in hint
    image = gallery.image(size=12)
    (hint,) = check_equivariance(model, image).hints
    assert hint.startswith("gate.pool pools the whole map into one value per channel, and the shift changes")


def test_the_fcn_head_at_full_resolution_is_its_stride_not_a_dense_layer() -> None:
    model, x = gallery.fcn_head(), gallery.canvas()
    (hint,) = check_equivariance(model, x).hints
    assert hint.startswith(
        "the model subsamples by 4 inside (down to 'conv2') and brings the map back to stride 1"
    )
    assert "a map subsampled by 4 follows only shifts that 4 divides" in hint
    # negative control: shifts by multiples of 4 are followed, away from the borders
    assert check_equivariance(model, x, multiples_of(4, 8), margin=8).passed


def test_a_circular_resnet_whose_maxpool_still_pads_is_blamed_on_the_maxpool() -> None:
    model, x = gallery.circular_resnet_stem(), gallery.image()
    profile = profile_equivariance(model, x, (2, 0), boundary="circular")
    first = profile.first_failure
    assert first is not None
    assert (first.name, first.cause) == ("maxpool", "borders")
    assert first.fix is not None
    assert first.fix.startswith(
        "boundary='circular' moves content across the edges, but 'maxpool' (MaxPool2d, padding 1, "
        "padding with -inf) does not pad circularly"
    )
    assert "F.pad(x, ..., mode='circular')" in first.fix
    assert not any(layer.cause == "no symmetry" for layer in profile.layers)
    (hint,) = check_equivariance(model, x, stride=2, boundary="circular").hints
    assert "'maxpool' (MaxPool2d, padding 1, padding with -inf) does not pad circularly" in hint
    # negative control: pad circularly before it, as the fix says, and the check passes
    model.maxpool = CircularMaxPool()
    assert check_equivariance(model, x, stride=2, boundary="circular").passed


class CircularMaxPool(nn.Module):
    """``MaxPool2d(3, 2)`` after one sample of circular padding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.max_pool2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="circular"), 3, 2)


def test_a_resnet_with_global_pooling_is_told_its_stride_not_to_pool() -> None:
    model = gallery.resnet_classifier()
    (hint,) = check_invariance(model, gallery.canvas()).hints
    assert hint.startswith("errors only at shifts that 2 does not divide")
    assert "looks like a stride-2 layer before the pooling" in hint
    # on whole images the content leaving under the zeros boundary changes the pooled value too
    hints = check_invariance(model, gallery.image()).hints
    assert hints[0].startswith("the model subsamples by 2 before it pools (down to 'layer2.downsample.0';")
    assert hints[1].startswith("the model pools the whole map (at avgpool), but under boundary='zeros'")
    assert not any("invariance needs pooling over the whole map" in hint for hint in hints)


def test_a_model_without_global_pooling_is_told_to_pool() -> None:
    """The negative control: a flatten and a dense head, no pooling: the hint that it needs one."""
    model = gallery.resnet_stage()
    model.add_module("flatten", nn.Flatten(1))
    model.add_module("fc", nn.Linear(16 * 32 * 32, 10))
    (hint,) = check_invariance(model, gallery.canvas()).hints
    assert hint.startswith(
        "the output changes when the input moves; invariance needs pooling over the whole map"
    )


def test_a_vit_without_a_position_embedding_is_told_about_attention_and_the_zeros_boundary() -> None:
    model, x = gallery.vit_without_positions(), gallery.image(size=64)
    tokens = {"layer": "blocks", "stride": 16, "layout": Tokens((4, 4), prefix=1)}
    (hint,) = check_equivariance(model, x, multiples_of(16, 16), **tokens).hints  # type: ignore[arg-type]
    assert hint.startswith("self-attention ('blocks.0.attn' and 1 more) mixes every token with every other")
    assert "position" not in hint.split(".")[0]
    assert check_equivariance(model, x, multiples_of(16, 16), boundary="circular", **tokens).passed  # type: ignore[arg-type]
    first = profile_equivariance(model, x, (16, 0)).first_failure
    assert first is not None
    assert (first.name, first.cause) == ("blocks.0.norm2 (input)", "borders")
    assert first.fix is not None
    assert first.fix.startswith("self-attention ('blocks.0.attn') mixes every token")
    (hint,) = check_invariance(model, x, multiples_of(16, 16)).hints
    assert hint.startswith("self-attention ('blocks.0.attn' and 1 more)")
    assert check_invariance(model, x, multiples_of(16, 16), boundary="circular").passed


def test_a_vit_with_a_position_embedding_is_told_about_it_first() -> None:
    """The negative control: the same ViT with its position embedding; zeroed, the embedding holds
    nothing for any position, and is not named."""
    model, x = gallery.vit(), gallery.image(size=64)
    tokens = {"layer": "blocks", "stride": 16, "layout": Tokens((4, 4), prefix=1)}
    hints = check_equivariance(model, x, multiples_of(16, 16), **tokens).hints  # type: ignore[arg-type]
    assert hints[0].startswith("the parameter pos_embed of shape (1, 17, 16) holds a different value")
    profile = profile_equivariance(model, x, (16, 0))
    assert {row.cause for row in profile.layers if not row.passed} == {
        "absolute positions",
        "spatial dims gone",
    }
    with torch.no_grad():
        model.pos_embed.zero_()  # type: ignore[union-attr]
    first = profile_equivariance(model, x, (16, 0)).first_failure
    assert first is not None
    assert first.cause == "borders"
    hints = check_equivariance(model, x, multiples_of(16, 16), **tokens).hints  # type: ignore[arg-type]
    assert not any("pos_embed" in hint for hint in hints)
