"""What the library says about small models with the structures of common architectures (issue 11).

The models are in ``examples/gallery.py`` (the docs page "What the profile says about common
architectures" draws their profiles). Each test pins the verdict, the culprit and its cause, the
inferred stride and margin.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from pathlib import Path

import pytest
import torch

from equivariance import Shift, check_equivariance, multiples_of, profile_equivariance

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
        "the parameter pos_embed of shape (1, 17, 16) holds a value for every position"
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


@pytest.mark.parametrize("name", sorted(gallery.GALLERY))
def test_every_case_of_the_docs_page_runs_and_profiles_without_ambiguity(name: str) -> None:
    profile, report = gallery.CASES[name].run(gallery.GALLERY[name]())
    assert all(layer.compared for layer in profile.layers)
    assert profile.first_failure is not None  # each case shows where its model breaks
    assert report.passed == (name not in ("FCN head", "U-Net"))
    assert report.vacuous is None


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
    _judged_every_way(gallery.GALLERY[name](), x, case.shift, monkeypatch)


@pytest.mark.parametrize("name", sorted(gallery.GALLERY))
def test_two_passes_joined_layer_by_layer_give_the_profile_of_the_one_batch(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the samples of a batch interact, the profile runs x and its moved copy apart and joins
    each layer's outputs (views, in-place writes, tensors computed in forward) into one batch's: on
    models whose samples do not interact, forced to take that path, every row must come out as the
    one batch's, bit for bit."""
    import equivariance.profile as profile_module

    case = gallery.CASES[name]
    model = gallery.GALLERY[name]()
    x = eval(case.inputs, {"canvas": gallery.canvas, "image": gallery.image})
    one = profile_equivariance(model, x, case.shift)
    assert one.separate_passes is None
    monkeypatch.setattr(profile_module, "_interaction", lambda *_: "forced")
    two = profile_equivariance(model, x, case.shift)
    assert two.separate_passes == "forced"
    assert [dataclasses.replace(row, error=0.0) for row in two.layers] == [
        dataclasses.replace(row, error=0.0) for row in one.layers
    ]
    assert [row.error for row in two.layers] == pytest.approx(
        [row.error for row in one.layers], rel=0, abs=0, nan_ok=True
    )


def test_zero_layers_are_measured_again_in_float64_and_judged_as_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Residual branches whose last BatchNorm starts at zero return all-zero maps, which float32 sums
    cannot judge: the pass runs again for them, in float64."""
    import equivariance.profile as profile_module

    calls = []
    call_until = profile_module.call_until
    monkeypatch.setattr(profile_module, "call_until", lambda *a: calls.append(1) or call_until(*a))
    model, x = gallery.resnet_stage(zero_init_residual=True), gallery.canvas()
    profile = profile_equivariance(model, x, (1, 0))
    assert len(calls) == 2  # a stride fails first (no x[:1] alone), then the pass again in float64
    assert profile["layer1.bn2"].error == 0.0
    assert profile["layer1.bn2"].passed
    monkeypatch.undo()
    _judged_every_way(model, x, (1, 0), monkeypatch)


def _judged_every_way(
    model: torch.nn.Module, x: torch.Tensor, shift: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    import equivariance._layer_sums as layer_sums
    import equivariance.profile as profile_module

    case = type("Case", (), {"shift": shift})
    profiles = [profile_equivariance(model, x, case.shift)]
    monkeypatch.setattr(layer_sums, "_DEFERRED_BYTES", 1 << 40)  # every layer at the end
    profiles.append(profile_equivariance(model, x, case.shift))
    monkeypatch.setattr(layer_sums, "_DEFERRED_BYTES", 0)  # every layer as it returns, none shared
    monkeypatch.setattr(profile_module, "_signature", lambda view: None)
    profiles.append(profile_equivariance(model, x, case.shift))
    monkeypatch.setattr(profile_module, "sample_scale", lambda base: torch.ones(len(base)))
    profiles.append(profile_equivariance(model, x, case.shift))  # a sink of its own per layer
    reference = profiles[-1]
    assert any(not row.passed for row in reference.layers)
    for profile in profiles[:-1]:
        assert [row.name for row in profile.layers] == [row.name for row in reference.layers]
        for a, b in zip(profile.layers, reference.layers):
            assert a.error == pytest.approx(b.error, rel=1e-5, abs=1e-12), a.name
            assert (a.passed, a.border, a.cause) == (b.passed, b.border, b.cause), a.name
    # the pooled ways also measure a blurring layer's input without the blur, for its fix
    assert [row.fix for row in profiles[0].layers] == [row.fix for row in profiles[1].layers]
    assert [row.fix for row in profiles[0].layers] == [row.fix for row in profiles[2].layers]


def test_a_permuted_view_shares_the_comparison_of_the_map_it_views() -> None:
    model, x = gallery.convnext_stage(), gallery.canvas(size=128, content=64)
    profile = profile_equivariance(model, x, (4, 0))
    # stem.1 permutes stem.0's map to channels last; stage1.block.6 permutes block.5's back
    assert profile["stem.1"].error == profile["stem.0"].error
    assert profile["stage1.block.6"].error == profile["stage1.block.5"].error
    assert profile["stem.1"].layout == "channels_last"
    assert profile["stem.0"].layout == "channels_first"


@pytest.mark.parametrize("name", ["blur pooling", "ViT", "ConvNeXt stage", "U-Net"])
def test_a_pass_run_again_in_float64_measures_every_kind_of_row_as_the_first(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Layers float32 cannot sum exactly enough are measured again in float64, by a second run of
    the batch: made here to be every layer, the rows of the second run (layer outputs, tensors
    computed in forward, a blurring layer's input without the blur, permuted views) must give the
    errors and fixes of the first."""
    import equivariance._layer_sums as layer_sums
    import equivariance.profile as profile_module

    case = gallery.CASES[name]
    model = gallery.GALLERY[name]()
    x = eval(case.inputs, {"canvas": gallery.canvas, "image": gallery.image})
    once = profile_equivariance(model, x, case.shift)
    calls = []
    call_until = profile_module.call_until
    monkeypatch.setattr(profile_module, "call_until", lambda *a: calls.append(1) or call_until(*a))
    monkeypatch.setattr(layer_sums, "_FLOAT32_MIN_REFERENCE", math.inf)
    twice = profile_equivariance(model, x, case.shift)
    # the pass and the pass again; and x[:1] alone where a failure the geometry does not explain may
    # come from the batch (the ViT's position embedding)
    assert once.first_failure is not None
    probed = once.first_failure.cause not in profile_module.GEOMETRIC_CAUSES
    assert len(calls) == 2 + probed
    assert [row.name for row in twice.layers] == [row.name for row in once.layers]
    for a, b in zip(twice.layers, once.layers):
        assert a.error == pytest.approx(b.error, rel=1e-4, abs=1e-9), a.name
        assert (a.passed, a.cause) == (b.passed, b.cause), a.name
    blurred = [row.fix for row in twice.layers if row.fix and "without the blur" in row.fix]
    assert bool(blurred) == (name == "blur pooling")
