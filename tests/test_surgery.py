"""Model surgery: the conversions, the copy they return, the layers they refuse, what they change in a check;
and the profile that names them (its fix line and fixed_copy)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from _resnet import ResNet18, calibrated
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from equivariance import (
    EquivarianceWarning,
    InvalidArgument,
    check_equivariance,
    check_invariance,
    circular_group,
    profile_equivariance,
)
from equivariance.downsampling import BlurPool, PolyphaseSampling
from equivariance.invariance import consistency
from equivariance.surgery import antialias, circular_padding, padded_layers, polyphase, subsampling_layers


def strided_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AvgPool2d(2), nn.Conv2d(8, 4, 1),
    ).eval()  # fmt: skip


class Block(nn.Module):
    """A strided convolution whose activation is called in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


# -- the copy -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("convert", [antialias, polyphase, circular_padding])
def test_the_copy_keeps_the_weights_and_the_original_is_untouched(convert: object) -> None:
    model = strided_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kinds = [type(m) for m in model.modules()]
    fixed = convert(model)  # type: ignore[operator]
    assert fixed is not model
    assert type(fixed) is nn.Sequential
    assert [type(m) for m in model.modules()] == kinds
    assert model[4].stride == (2, 2)
    assert model[0].padding_mode == "zeros"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(fixed.state_dict()) == set(before)  # the parameters keep their names
    assert all(torch.equal(before[k], v) for k, v in fixed.state_dict().items())
    assert all(p is not q for p, q in zip(model.parameters(), fixed.parameters()))
    fixed.load_state_dict(model.state_dict())  # a checkpoint of the original loads (strict)
    x = torch.randn(2, 3, 32, 32)
    assert fixed(x).shape == model(x).shape


def test_antialias_follows_zhang() -> None:
    model = strided_net()
    fixed = antialias(model)
    x = torch.randn(2, 3, 32, 32)
    # max pooling: the max at stride 1, then the blur
    assert type(fixed[3]).__name__ == "AntialiasedMaxPool2d"
    assert isinstance(fixed[3], nn.MaxPool2d)
    h = model[2](model[1](model[0](x)))
    torch.testing.assert_close(fixed[3](h), BlurPool(2, 4, "reflect")(F.max_pool2d(h, 2, 1)))
    # a strided convolution in a Sequential: at stride 1, its BatchNorm, its activation, then the blur
    assert fixed[4].stride == (1, 1)
    assert type(fixed[4]) is nn.Conv2d
    assert isinstance(fixed[6], nn.Sequential)
    assert isinstance(fixed[6][1], BlurPool)
    h = fixed[3](h)
    stride_one = F.conv2d(h, model[4].weight, model[4].bias, padding=1)
    torch.testing.assert_close(fixed[6](fixed[5](fixed[4](h))), BlurPool()(F.relu(model[5](stride_one))))
    # an average pooling becomes the blur
    assert type(fixed[7]) is BlurPool
    assert fixed[7].stride == 2


def test_a_convolution_whose_activation_is_in_forward_is_blurred_right_after_it() -> None:
    model = nn.Sequential(Block())
    fixed = antialias(model)
    conv = fixed[0].conv
    assert type(conv).__name__ == "AntialiasedConv2d"
    assert isinstance(conv, nn.Conv2d)
    assert conv.stride == (1, 1)
    x = torch.randn(2, 2, 16, 16)
    expected = F.relu(BlurPool((2, 2))(F.conv2d(x, conv.weight, conv.bias, padding=1)))
    torch.testing.assert_close(fixed(x), expected)


@settings(max_examples=15, deadline=None)
@given(
    kind=st.sampled_from(["conv", "max", "lp"]),
    kernel=st.integers(1, 5),
    stride=st.integers(2, 3),
    size=st.integers(9, 20),
    padded=st.booleans(),
)
def test_output_sizes_stay_those_of_the_original(
    kind: str, kernel: int, stride: int, size: int, padded: bool
) -> None:
    padding = kernel // 2 if padded else 0
    layer: nn.Module = {
        "conv": lambda: nn.Conv2d(2, 3, kernel, stride, padding),
        "max": lambda: nn.MaxPool2d(kernel, stride, padding),
        "lp": lambda: nn.LPPool2d(2, kernel, stride),
    }[kind]()
    model = nn.Sequential(layer)
    x = torch.rand(1, 2, size, size) + 0.1
    for convert in (antialias, polyphase):
        assert convert(model, filter_size=3)(x).shape == model(x).shape


def test_any_module_tree_the_model_itself_a_shared_layer_and_dicts() -> None:
    assert type(antialias(nn.Conv2d(1, 2, 3, stride=2))).__name__ == "AntialiasedConv2d"
    assert type(antialias(nn.AvgPool2d(2))) is BlurPool
    shared = nn.Conv2d(2, 2, 3, stride=2, padding=1)

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.again = shared, shared
            self.heads = nn.ModuleDict(
                {"pool": nn.MaxPool1d(2), "list": nn.ModuleList([nn.Conv3d(1, 1, 1, 2)])}
            )

    fixed = antialias(Twice())
    assert fixed.first is fixed.again
    assert fixed.first.stride == (1, 1)
    assert type(fixed.heads["pool"]).__name__ == "AntialiasedMaxPool1d"
    assert type(fixed.heads["list"][0]).__name__ == "AntialiasedConv3d"
    assert fixed.heads["list"][0](torch.randn(1, 1, 8, 8, 8)).shape == (1, 1, 4, 4, 4)


# -- layers by name, and what cannot be converted ----------------------------------------------------


def test_layers_named_are_the_only_ones_converted() -> None:
    model = strided_net()
    fixed = antialias(model, layers=["3"])
    assert type(fixed[3]).__name__ == "AntialiasedMaxPool2d"
    assert fixed[4].stride == (2, 2)
    assert type(fixed[7]) is nn.AvgPool2d
    net = nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), nn.MaxPool2d(2)), nn.Conv2d(2, 2, 3, stride=2)
    )
    inner = polyphase(net, layers=["0"])  # a container: the strided layers in it
    assert [type(m).__name__ for m in inner[0]] == ["PolyphaseConv2d", "PolyphaseMaxPool2d"]
    assert type(inner[1]) is nn.Conv2d
    assert inner[1].stride == (2, 2)


@pytest.mark.parametrize(
    ("convert", "model", "layers", "match"),
    [
        (
            antialias,
            strided_net(),
            ["conv9"],
            r"Sequential has no layer named 'conv9'; its layers include: '0', '1'",
        ),
        (
            antialias,
            strided_net(),
            ["2"],
            r"'2' \(ReLU\) is not one of the strided convolutions and pooling layers that antialias converts, and holds none",
        ),
        (
            antialias,
            strided_net(),
            "3",
            r"layers must be a list of layer names, found '3' \(str\); pass e\.g\. antialias\(model, layers=\['3'\]\)",
        ),
        (
            polyphase,
            nn.Sequential(nn.PixelUnshuffle(2)),
            ["0"],
            r"polyphase cannot convert '0' \(PixelUnshuffle\): a PixelUnshuffle subsamples by moving each grid into channels",
        ),
        (
            antialias,
            nn.Sequential(nn.MaxPool2d(2, return_indices=True)),
            ["0"],
            r"antialias cannot convert '0' \(MaxPool2d\): it returns the indices of its maxima \(for MaxUnpool\)",
        ),
        (
            circular_padding,
            nn.Sequential(nn.ConvTranspose2d(1, 1, 2, 2)),
            ["0"],
            r"circular_padding cannot convert '0' \(ConvTranspose2d\): a transposed convolution cannot pad circularly in torch",
        ),
        (
            circular_padding,
            nn.Sequential(nn.Conv2d(1, 1, 3)),
            ["0"],
            r"'0' \(Conv2d\) is not one of the padded convolutions, pooling, padding layers and blurs that circular_padding converts",
        ),
    ],
    ids=["unknown", "not-strided", "a-string", "pixel-unshuffle", "indices", "transposed", "unpadded"],
)
def test_a_layer_named_that_cannot_be_converted_is_refused_with_why(
    convert: object, model: nn.Module, layers: object, match: str
) -> None:
    with pytest.raises(InvalidArgument, match=match):
        convert(model, layers=layers)  # type: ignore[operator]


def test_converting_all_names_what_it_left_in_a_warning() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.PixelUnshuffle(2), nn.ConvTranspose2d(16, 1, 2, 2))
    with pytest.warns(
        EquivarianceWarning,
        match=r"antialias left 1 layer of Sequential as it was: '1' \(PixelUnshuffle\): a PixelUnshuffle subsamples .* Pass layers= without them",
    ):
        fixed = antialias(model)
    assert type(fixed[0]).__name__ == "AntialiasedConv2d"
    with pytest.warns(
        EquivarianceWarning,
        match=r"circular_padding left 1 layer of Sequential as it was: '1' \(ConvTranspose2d\)",
    ):
        circular_padding(nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ConvTranspose2d(16, 1, 2, 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        antialias(model, layers=["0"])  # named: nothing left to warn about


def test_a_conv_that_pads_in_its_own_forward_is_named_not_made_circular_silently() -> None:
    class SamePadded(nn.Conv2d):  # as timm's Conv2dSame: padding 0, zeros added in forward
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(F.pad(x, (1, 1, 1, 1)))

    assert padded_layers(nn.Sequential(SamePadded(1, 1, 3))) == {
        "0": "SamePadded defines its own forward, which may pad its own way (with zeros, 'same' padding "
        "computed per input); replace it by hand with a circularly padded layer"
    }
    with pytest.warns(EquivarianceWarning, match=r"'0' \(SamePadded\): SamePadded defines its own forward"):
        circular_padding(nn.Sequential(SamePadded(1, 1, 3)))


def test_a_model_that_subsamples_in_forward_gets_a_warning_that_surgery_cannot_see_it() -> None:
    from equivariance.models import LeNet

    with pytest.warns(
        EquivarianceWarning,
        match=r"antialias found nothing to convert in LeNet: no strided convolutions and pooling layers among its modules\. A subsampling or padding written in forward \(F\.max_pool2d",
    ):
        antialias(LeNet())


def test_subsampling_layers_lists_what_the_conversions_see() -> None:
    assert subsampling_layers(strided_net()) == {"3": None, "4": None, "7": None}
    assert list(subsampling_layers(antialias(strided_net()))) == []  # the blurs are already anti-aliased
    assert list(subsampling_layers(polyphase(strided_net()))) == []


# -- circular padding ---------------------------------------------------------------------------------


def test_circular_padding_makes_every_padded_layer_the_model_of_circular_shifts() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 1, 1), nn.ZeroPad2d(2), nn.Conv2d(4, 4, 5),
        nn.ReflectionPad2d(1), nn.Conv2d(4, 4, 3), nn.AvgPool2d(3, 1, 1), nn.Conv2d(4, 4, 3, padding=1, padding_mode="replicate"),
    )  # fmt: skip
    x = torch.rand(2, 1, 16, 16)
    assert not check_equivariance(model, x, max_shift=2, boundary="circular").passed
    fixed = circular_padding(model)
    assert type(fixed[3]) is nn.CircularPad2d
    assert type(fixed[5]) is nn.CircularPad2d
    assert type(fixed[2]).__name__ == "CircularMaxPool2d"
    assert fixed[8].padding_mode == "circular"
    assert check_equivariance(fixed, x, max_shift=2, boundary="circular").passed
    blurred = circular_padding(antialias(nn.Sequential(nn.MaxPool2d(2))))
    assert blurred[0].blur.pad_type == "circular"


def test_the_order_of_conversions_does_not_matter() -> None:
    model = ResNet18(width=2).eval()
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(circular_padding(polyphase(model))(x), polyphase(circular_padding(model))(x))
    assert type(circular_padding(polyphase(model)).maxpool).__name__ == "PolyphaseCircularMaxPool2d"


# -- polyphase: the invariance the paper claims ------------------------------------------------------


@pytest.fixture(scope="module")
def resnets() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = calibrated(circular_padding(ResNet18(width=4)), torch.rand(64, 3, 32, 32))
    return model, polyphase(model)


def box(size: int = 32) -> torch.Tensor:
    x = torch.zeros(1, 3, size, size)
    x[..., size // 6 : size // 2, size // 4 : 2 * size // 3] = 1.0
    return x


@pytest.mark.parametrize(
    ("dtype", "size"), [(torch.float32, 32), (torch.float64, 16)], ids=["float32-32x32", "float64-16x16"]
)
def test_polyphase_resnet18_is_invariant_to_every_circular_shift_of_a_box(
    resnets: tuple[nn.Module, nn.Module], dtype: torch.dtype, size: int
) -> None:
    # every subsampling sees a size its stride divides (down to 1x1 on 16x16, whose one grid is trivial);
    # float64 on the smaller box keeps the test fast (float64 convolutions are slow on the CPU)
    model, fixed = resnets
    x = box(size).to(dtype)
    report = check_invariance(fixed.to(dtype), x, circular_group((size, size)), boundary="circular")
    assert report.passed
    assert len(report.results) == size * size
    assert report.vacuous is None
    plain = check_invariance(model.to(dtype), x, circular_group((2, 2)), boundary="circular")  # the control
    assert not plain.passed
    assert plain.max_error > 0.1
    fixed.float(), model.float()


def test_polyphase_resnet18_is_fully_consistent_and_the_original_is_not(
    resnets: tuple[nn.Module, nn.Module],
) -> None:
    model, fixed = resnets
    x = torch.rand(40, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    after, before = consistency(fixed, x, pairs=2), consistency(model, x, pairs=2)
    assert after.value == 1.0
    assert after.distinct is not None
    assert after.distinct >= 4
    assert before.value < 0.5
    assert before.high < 1.0


def test_without_the_shared_grid_the_residual_sum_breaks_invariance(
    resnets: tuple[nn.Module, nn.Module], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, fixed = resnets
    import equivariance.downsampling as downsampling

    monkeypatch.setattr(downsampling, "_shared_phases", lambda source, stride: None)
    shifts = [(dy, dx) for dy in range(2) for dx in range(4)]
    assert not check_invariance(fixed, box(), shifts, boundary="circular").passed


# -- the profile offers the call, and makes the copy -------------------------------------------------


def canvas() -> torch.Tensor:
    x = torch.zeros(4, 3, 48, 48)
    x[..., 8:40, 8:40] = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return x


def test_the_fix_line_names_the_conversion_and_the_strided_layers() -> None:
    model = strided_net()
    profile = profile_equivariance(model, canvas(), (1, 0))
    first = profile.first_failure
    assert first is not None
    assert (first.name, first.cause) == ("3", "aliasing")
    assert first.fix is not None
    assert first.fix.endswith(
        "; antialias(model, layers=['3', '4', '7']) (equivariance.surgery) makes a copy that blurs before "
        "each of those layers subsamples, as does profile.fixed_copy(model)"
    )
    circular = profile_equivariance(model, torch.rand(2, 3, 32, 32), (1, 0), boundary="circular")
    assert circular["0"].cause == "borders"
    assert "circular_padding(model)" in str(circular["0"].fix)
    assert "; polyphase(circular_padding(model), layers=['3', '4', '7']) (equivariance.surgery)" in str(
        circular["3"].fix
    )


def test_borders_name_circular_padding() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1))
    profile = profile_equivariance(model, torch.rand(2, 1, 16, 16), (1, 0))
    first = profile.first_failure
    assert first is not None
    assert first.cause == "borders"
    assert first.fix is not None
    assert "circular_padding(model) (equivariance.surgery)" in first.fix
    fixed = profile.fixed_copy(model)
    assert fixed[0].padding_mode == "circular"
    assert profile_equivariance(fixed, torch.rand(2, 1, 16, 16), (1, 0), boundary="circular").passed


def test_the_profile_of_the_fixed_copy_shows_the_error_lower_at_each_blur_with_the_number() -> None:
    model, x = strided_net(), canvas()
    before = profile_equivariance(model, x, (1, 0))
    fixed = before.fixed_copy(model)
    assert type(fixed[3]).__name__ == "AntialiasedMaxPool2d"
    after = profile_equivariance(fixed, x, (1, 0))
    pairs = {"3": "3.blur", "6": "6.1", "7": "7"}  # each subsampling, and the blur that replaced it
    for old, new in pairs.items():
        assert after[new].error < before[old].error / 1.5
        assert after[new].fix is not None
        assert "so the blur divides the error by" in after[new].fix
    assert after["8"].error < before["8"].error / 2


def test_the_polyphase_copy_of_a_circular_profile_is_exact_after_pooling() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )  # fmt: skip
    x = torch.rand(4, 1, 16, 16)
    before = profile_equivariance(model, x, (1, 0), boundary="circular")
    fixed = before.fixed_copy(model)
    assert fixed[0].padding_mode == "circular"
    assert type(fixed[2]).__name__ == "PolyphaseMaxPool2d"
    after = profile_equivariance(fixed, x, (1, 0), boundary="circular")
    assert not before["5"].passed
    assert not before["7"].passed
    assert after["5"].error < 1e-6
    assert after["7"].error < 1e-6
    sampled = after["2.sampling"]  # a whole-sample shift that depends on the sample: said so
    assert not sampled.passed
    assert sampled.fix is not None
    assert sampled.fix.startswith("adaptive polyphase sampling at 2.sampling keeps, for each sample")


def test_fixed_copy_refuses_what_it_cannot_do() -> None:
    model = strided_net()
    profile = profile_equivariance(model, canvas(), (1, 0))
    with pytest.raises(
        InvalidArgument,
        match=r"this profile is of a Sequential, found a Conv2d; pass the model that was profiled",
    ):
        profile.fixed_copy(nn.Conv2d(1, 1, 1))
    with pytest.raises(
        InvalidArgument,
        match=r"method must be one of 'auto', 'antialias', 'polyphase', 'circular_padding', found 'blur'",
    ):
        profile.fixed_copy(model, method="blur")  # type: ignore[arg-type]
    conv = nn.Sequential(nn.Conv2d(1, 2, 3))
    passing = profile_equivariance(conv, torch.rand(2, 1, 16, 16), (1, 0))
    with pytest.raises(
        InvalidArgument, match=r"nothing in this profile calls for surgery: every layer passed"
    ):
        passing.fixed_copy(conv)
    dense = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(392, 3))
    gone = profile_equivariance(dense, torch.rand(2, 1, 16, 16), (1, 0))
    with pytest.raises(
        InvalidArgument,
        match=r"nothing in this profile calls for surgery: failing layers 1 \(spatial dims gone\)",
    ):
        gone.fixed_copy(dense)
    assert isinstance(profile.fixed_copy(model, method="polyphase")[4].sampling, PolyphaseSampling)
