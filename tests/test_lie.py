"""The Lie derivative: zero where the model commutes with the continuous group, the limit of the sub-pixel
error, the layers' contributions summing to it, and the model left as it was found."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from torch import nn

from equivariance import EquivarianceWarning, check_equivariance
from equivariance.errors import InvalidArgument
from equivariance.fractional import fractional_equivariance_error
from equivariance.generators import Rotation, Translation
from equivariance.lie import lie_derivative, lie_derivative_error, profile_lie_derivative

F64 = torch.float64
CIRCULAR = {"padding": 1, "padding_mode": "circular", "dtype": F64}


def smooth(n: int = 3, channels: int = 2, size: int = 16, keep: int = 3, seed: int = 0) -> torch.Tensor:
    """Random images with no frequency above ``keep`` cycles per image: band-limited, well below Nyquist."""
    x = torch.randn(n, channels, size, size, dtype=F64, generator=torch.Generator().manual_seed(seed))
    k = torch.fft.fftfreq(size, dtype=F64) * size
    low = (k.abs()[:, None] <= keep) & (k.abs()[None, :] <= keep)
    return torch.fft.ifft2(torch.fft.fft2(x) * low).real


def noise(n: int = 3, channels: int = 2, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, channels, size, size, dtype=F64, generator=torch.Generator().manual_seed(seed))


def stack(nonlinearity: type[nn.Module] | None = None) -> nn.Sequential:
    torch.manual_seed(0)
    between = [] if nonlinearity is None else [nonlinearity()]
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, **CIRCULAR), *between, nn.Conv2d(4, 4, 3, **CIRCULAR), *between,
        nn.Conv2d(4, 3, 3, **CIRCULAR),
    )  # fmt: skip


def mlp(size: int = 16) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(2 * size * size, 32, dtype=F64), nn.Tanh(),
        nn.Linear(32, 2 * size * size, dtype=F64), nn.Unflatten(1, (2, size, size)),
    )  # fmt: skip


@pytest.mark.parametrize("generator", ["translation", Translation(1, 0), Translation(0.5, -2)], ids=repr)
def test_a_circular_linear_conv_stack_has_a_zero_lie_derivative(generator: object) -> None:
    for x in (smooth(), noise()):  # band-limited or not: a circular convolution commutes with Fourier shifts
        assert float(lie_derivative_error(stack(), x, generator, reduction="max")) < 1e-13  # type: ignore[arg-type]


@pytest.mark.parametrize("nonlinearity", [nn.Tanh, nn.ReLU], ids=["tanh", "relu"])
def test_a_pointwise_nonlinearity_aliases_under_sub_pixel_shifts_small_but_nonzero(
    nonlinearity: type[nn.Module],
) -> None:
    x = smooth(keep=2)  # smoother content aliases less; a ReLU's kink aliases more than tanh
    found = float(lie_derivative_error(stack(nonlinearity), x, reduction="max"))
    dense = float(lie_derivative_error(mlp(), x, reduction="mean"))
    assert 1e-4 < found < 0.2  # far above the linear stack's 1e-15, far below a dense map's
    assert dense > 1.0
    assert found < dense / 5
    rougher = float(lie_derivative_error(stack(nonlinearity), smooth(keep=3), reduction="max"))
    assert rougher > 1.5 * found
    # integer shifts do not see it: the same stack passes a circular integer shift exactly
    assert float(fractional_equivariance_error(stack(nonlinearity), x, (0, 1))) < 1e-12


def test_an_mlp_and_a_stride_two_layer_have_clearly_nonzero_lie_derivatives() -> None:
    x = noise()
    strided = nn.Conv2d(2, 4, 3, stride=2, **CIRCULAR)
    assert float(lie_derivative_error(mlp(), x)) > 1.0
    assert float(lie_derivative_error(strided, x)) > 0.5  # output stride 2 read off the sizes
    # below half the Nyquist frequency, subsampling by 2 commutes with Fourier shifts (fractional.py)
    assert float(lie_derivative_error(strided, smooth(keep=3))) < 1e-12


@pytest.mark.parametrize(
    ("model", "x", "stride"),
    [
        (stack(nn.Tanh), smooth(), 1),
        (stack(nn.ReLU), smooth(), 1),
        (nn.Conv2d(2, 3, 3, stride=2, **CIRCULAR), noise(), 2),
    ],
    ids=["tanh", "relu", "stride-2"],
)
def test_it_is_the_finite_difference_limit_of_the_fractional_error(
    model: nn.Module, x: torch.Tensor, stride: int
) -> None:
    t = 1e-5
    limit = fractional_equivariance_error(model, x, (0, t), stride=stride, reduction="none") / t
    found = lie_derivative_error(model, x, Translation(0, 1), reduction="none")
    assert float(found.min()) > 1e-3
    assert float(((limit - found).abs() / found).max()) < 1e-3


def test_valid_convolutions_are_measured_on_their_own_grid_not_a_stride_read_off_the_sizes() -> None:
    from equivariance.models import LeNet

    torch.manual_seed(0)
    model = LeNet().double()
    canvas = torch.zeros(2, 1, 38, 38, dtype=F64)
    canvas[..., 5:33, 5:33] = smooth(2, 1, 28, keep=4)
    t = 1e-5
    limit = fractional_equivariance_error(model.features, canvas, (0, t), reduction="none") / t  # stride 1
    found = lie_derivative_error(model.features, canvas, reduction="none")  # 38 -> 22: still stride 1
    assert float(((limit - found).abs() / found).max()) < 1e-3
    halved = lie_derivative_error(model.features, canvas, stride=2, reduction="none")
    assert float(((halved - found).abs() / found).min()) > 0.01  # the stride matters


def test_a_classifier_is_measured_for_invariance_and_a_map_can_be_asked_to_be_invariant() -> None:
    torch.manual_seed(0)
    pooled = nn.Sequential(nn.Conv2d(2, 4, 3, **CIRCULAR), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    x = noise()
    assert float(lie_derivative_error(pooled, x)) < 1e-13  # logits: compared unmoved
    conv = nn.Conv2d(2, 4, 3, **CIRCULAR)
    assert float(lie_derivative_error(conv, x)) < 1e-13
    assert float(lie_derivative_error(conv, x, invariant=True)) > 0.1  # a map that moves is not invariant
    derivative = lie_derivative(conv, x, invariant=True)
    assert derivative.shape == conv(x).shape


def test_rotation_separates_an_isotropic_blur_from_a_directional_filter() -> None:
    x = torch.zeros(2, 1, 25, 25, dtype=F64)
    x[..., 8:17, 8:17] = smooth(2, 1, 9, keep=2)  # content clear of the edges
    r = torch.arange(5, dtype=F64) - 2
    blur = nn.Conv2d(1, 1, 5, padding=2, padding_mode="circular", bias=False, dtype=F64)
    edge = nn.Conv2d(1, 1, 5, padding=2, padding_mode="circular", bias=False, dtype=F64)
    with torch.no_grad():
        blur.weight.copy_(torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / 2))
        edge.weight.copy_(r[None, :] * torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / 2))
    isotropic = float(lie_derivative_error(blur, x, "rotation"))
    directional = float(lie_derivative_error(edge, x, Rotation()))
    assert directional > 0.5
    assert isotropic < directional / 20


def test_chunks_give_the_same_answer_and_the_absolute_form_is_the_norm() -> None:
    model, x = stack(nn.Tanh), smooth(5)
    whole = lie_derivative(model, x)
    assert torch.allclose(lie_derivative(model, x, batch_size=2), whole, atol=1e-14)
    absolute = lie_derivative_error(model, x, relative=False, reduction="none")
    assert torch.allclose(absolute, whole.flatten(1).norm(dim=1))
    assert float(lie_derivative_error(model, x, reduction="max")) >= float(lie_derivative_error(model, x))


def test_an_all_zero_output_is_measured_absolutely_with_a_warning() -> None:
    dead = nn.Sequential(nn.Conv2d(2, 2, 3, **CIRCULAR), nn.ReLU())
    with torch.no_grad():
        dead[0].weight.zero_()
        dead[0].bias.fill_(-1.0)
    with pytest.warns(EquivarianceWarning, match="3 of 3 samples have an all-zero output"):
        assert float(lie_derivative_error(dead, noise())) == 0.0


def test_the_model_its_state_the_rng_and_the_input_are_left_as_found() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, **CIRCULAR), nn.BatchNorm2d(4, dtype=F64), nn.Dropout(0.5), nn.Tanh()
    )
    model.train()
    model[2].eval()  # a mixed state, restored flag by flag
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = smooth()
    x_before = x.clone()
    rng = torch.random.get_rng_state()
    value = lie_derivative_error(model, x)
    profile = profile_lie_derivative(model, x)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert torch.equal(x, x_before)
    assert [m.training for m in model.modules()] == [True, True, True, False, True]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert float(value) == pytest.approx(profile.error, rel=1e-9)  # eval mode: no dropout noise


def test_the_layers_contributions_sum_to_the_lie_derivative_and_name_the_layer() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, **CIRCULAR), nn.Tanh(), nn.Conv2d(4, 4, 3, stride=2, **CIRCULAR),
        nn.Conv2d(4, 3, 3, **CIRCULAR),
    )  # fmt: skip
    x = noise()
    profile = profile_lie_derivative(model, x)
    names = [row.name for row in profile.layers]
    assert names == ["0", "1", "2", "3", "(other operations)"]
    assert profile.error == pytest.approx(float(lie_derivative_error(model, x)), rel=1e-9)
    assert sum(row.share for row in profile.layers) == pytest.approx(1.0, abs=1e-9)
    assert profile["(other operations)"].error < 1e-12  # a Sequential has nothing between its layers
    assert profile["0"].error < 1e-12
    assert profile["3"].error < 1e-12  # a stride-1 layer on the coarse grid commutes
    assert profile["2"].error > 0.1  # the subsampling aliases white noise
    assert profile.largest.name == "2"
    assert profile["2"].stride == (2, 2)
    assert "largest part: 2" in str(profile)
    data = json.loads(json.dumps(profile.to_dict()))
    assert data["largest"] == "2"
    assert data["layers"][2]["stride"] == [2, 2]
    assert data["error"] == profile.error


class Positional(nn.Module):
    """A conv net that adds a coordinate ramp in its forward: a non-equivariant operation outside any layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, **CIRCULAR)
        self.conv2 = nn.Conv2d(4, 3, 3, **CIRCULAR)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-1, 1, x.shape[-1], dtype=x.dtype)
        return self.conv2(self.conv1(x) + ramp)


def test_what_no_layer_accounts_for_is_reported_as_other_operations() -> None:
    profile = profile_lie_derivative(Positional(), smooth())
    assert profile.largest.name == "(other operations)"
    assert profile["conv1"].error < 1e-12
    assert profile["conv2"].error < 1e-12
    assert profile["(other operations)"].share == pytest.approx(1.0, abs=1e-9)
    only = profile_lie_derivative(Positional(), smooth(), layers=["conv2"])
    assert [row.name for row in only.layers] == ["conv2", "(other operations)"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, x: lie_derivative(m, x, "shear"), r"generator must be 'translation', 'rotation' or an"),
        (lambda m, x: lie_derivative(m, x, Translation(1.0)), r"acts on 1 spatial dims but x of shape \(3, 2, 16, 16\) has 2"),
        (lambda m, x: lie_derivative(m, x[..., 0], Rotation()), "acts on 2 spatial dims"),
        (lambda m, x: lie_derivative(m, x, invariant="yes"), "invariant must be True, False or None"),
        (lambda m, x: lie_derivative(m, x, stride=0), "stride must be positive"),
        (lambda m, x: lie_derivative(m, x, batch_size=0), "batch_size must be positive"),
        (lambda m, x: lie_derivative_error(m, x, reduction="sum"), "reduction must be 'mean', 'max' or 'none'"),
        (lambda m, x: lie_derivative(m, x.float()), "the model's parameters are torch.float64 but x is torch.float32"),
        (lambda m, x: lie_derivative(nn.Flatten(), x, invariant=False), r"invariant=False moves the output .* has no 2 spatial dims"),
        (lambda m, x: profile_lie_derivative(lambda v: v, x), "needs an nn.Module to hook its layers"),  # type: ignore[arg-type]
        (lambda m, x: profile_lie_derivative(m, x, layers="0"), "layers must be a non-empty list of layer names"),
        (lambda m, x: profile_lie_derivative(m, x, layers=["conv9"]), "has no layer named 'conv9'"),
    ],
    ids=[
        "generator", "dims", "rotation-1d", "invariant", "stride", "batch", "reduction", "dtype", "not-a-map",
        "callable", "layers-str", "layers-unknown",
    ],
)  # fmt: skip
def test_bad_arguments_are_refused_with_a_fix(call: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        call(stack(), noise())  # type: ignore[operator]


def _conjugated_step(
    model: nn.Module, x: torch.Tensor, index: int, stride_in: int, stride_out: int
) -> torch.Tensor:
    """d/dt of the output with layer ``index`` alone conjugated by real sub-pixel shifts along the width
    (the input moved by t / stride_in, the output back by t / stride_out), by central differences."""
    from equivariance.fractional import FractionalShift

    layer, t = model[index], 1e-5
    results = []
    for offset in (t, -t):
        before = layer.register_forward_pre_hook(
            lambda _m, args, o=offset: (FractionalShift(0.0, o / stride_in).apply(args[0]),)
        )
        after = layer.register_forward_hook(
            lambda _m, _a, out, o=offset: FractionalShift(0.0, -o / stride_out).apply(out)
        )
        try:
            with torch.no_grad():
                results.append(model(x))
        finally:
            before.remove()
            after.remove()
    return (results[0] - results[1]) / (2 * t)


def test_each_contribution_is_the_derivative_with_only_that_layer_conjugated_by_a_real_shift() -> None:
    """An independent check of the decomposition, with actual FractionalShifts instead of generators."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, **CIRCULAR), nn.Tanh(), nn.Conv2d(4, 4, 3, stride=2, **CIRCULAR),
        nn.Conv2d(4, 3, 3, **CIRCULAR),
    )  # fmt: skip
    x = smooth(keep=5)
    profile = profile_lie_derivative(model, x)
    reference = model(x).detach().flatten(1).norm(dim=1)
    for index, (stride_in, stride_out) in enumerate([(1, 1), (1, 1), (1, 2), (2, 2)]):
        step = _conjugated_step(model, x, index, stride_in, stride_out)
        expected = float((step.flatten(1).norm(dim=1) / reference).mean())
        assert profile[str(index)].error == pytest.approx(expected, rel=1e-4, abs=1e-9)
    assert profile["2"].error > 0.01
    assert profile["1"].error > 1e-4


class Twice(nn.Module):
    """One convolution applied twice, with a nonlinearity between: a module with two calls."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, 2, 3, **CIRCULAR)
        self.act = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.act(self.conv(x)))


def test_a_module_called_twice_is_one_layer_with_both_calls() -> None:
    x = noise()
    profile = profile_lie_derivative(Twice(), x)
    assert [row.name for row in profile.layers] == ["conv", "act", "(other operations)"]
    assert profile["conv"].error < 1e-12
    assert profile["(other operations)"].error < 1e-12
    assert profile["act"].share == pytest.approx(1.0, abs=1e-9)
    assert profile.error == pytest.approx(float(lie_derivative_error(Twice(), x)), rel=1e-9)


# -- every finite scale (issue 21, item 1) -------------------------------------------------------


class Scaled(nn.Module):
    """A circular conv stack with a tanh whose output is multiplied by ``scale``: the relative Lie
    derivative does not depend on it."""

    def __init__(self, scale: float, dtype: torch.dtype = F64) -> None:
        super().__init__()
        torch.manual_seed(0)
        circular = {"padding": 1, "padding_mode": "circular", "dtype": dtype}
        self.conv1, self.conv2 = nn.Conv2d(2, 4, 3, **circular), nn.Conv2d(4, 3, 3, **circular)  # type: ignore[arg-type]
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.tanh(self.conv1(x))) * self.scale


@pytest.mark.parametrize(
    ("dtype", "scale"),
    [(F64, s) for s in (1e200, 1e-200, 1e300, 1e-300, 1e-310)]
    + [(torch.float32, s) for s in (1e37, 1e-30, 1e-38)],
    ids=lambda v: str(v).removeprefix("torch."),
)
def test_the_relative_lie_derivative_is_the_same_at_every_finite_scale(
    dtype: torch.dtype, scale: float
) -> None:
    x = noise().to(dtype)
    truth = lie_derivative_error(Scaled(1.0, dtype), x, reduction="none")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no false "all-zero output" warning
        found = lie_derivative_error(Scaled(scale, dtype), x, reduction="none")
        absolute = lie_derivative_error(Scaled(scale, dtype), x, relative=False, reduction="none")
    assert float(truth.min()) > 0.05
    assert torch.allclose(found, truth, rtol=1e-9 if dtype == F64 and scale > 1e-300 else 1e-4)
    plain = lie_derivative_error(Scaled(1.0, dtype), x, relative=False, reduction="none")
    assert torch.allclose(absolute / scale, plain, rtol=1e-4)


def test_the_profile_is_the_same_at_every_finite_scale() -> None:
    x = noise()
    truth = profile_lie_derivative(Scaled(1.0), x)
    for scale in (1e200, 1e-200):
        found = profile_lie_derivative(Scaled(scale), x)
        assert found.error == pytest.approx(truth.error, rel=1e-9)
        for row, expected in zip(found.layers, truth.layers):
            assert row.error == pytest.approx(expected.error, rel=1e-6, abs=1e-12)
            assert row.share == pytest.approx(expected.share, rel=1e-6, abs=1e-12)


def test_an_all_zero_output_is_measured_on_its_derivatives_scale() -> None:
    """A dead output with a huge derivative (``f(v) = (v - x) * 1e200`` at ``v = x``): its RMS is
    exact, not an overflow."""
    x = noise()
    with pytest.warns(EquivarianceWarning, match="3 of 3 samples have an all-zero output"):
        found = lie_derivative_error(lambda v: (v - x) * 1e200, x, invariant=True, reduction="none")
    generated = Translation(0, 1).apply(x, (1, 1)).flatten(1)
    expected = generated.norm(dim=1) / generated.shape[1] ** 0.5 * 1e200
    assert torch.allclose(found, expected, rtol=1e-12)


# -- the tangent must flow (item 4) --------------------------------------------------------------


class Detached(nn.Module):
    """An equivariant circular conv whose output is detached whole, in part (a branch added), or only
    for a tensor kept aside that does not reach the output."""

    def __init__(self, how: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, 3, 3, **CIRCULAR)
        self.branch = nn.Conv2d(2, 3, 3, **CIRCULAR)
        self.how = how
        self.kept: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.how == "whole":
            return y.detach()
        if self.how == "data":
            return y + torch.tanh(self.branch(x)).data
        if self.how == "part":
            return y + torch.tanh(self.branch(x)).detach()
        if self.how == "written in place":
            y[:, :1] = torch.tanh(self.branch(x))[:, :1].detach()
            return y
        self.kept = torch.tanh(self.branch(x)).detach()  # "aside": kept for a plot, never used
        return y + torch.tanh(self.branch(x))


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("whole", r"the model's output depends on x through a tensor whose derivative it drops \(\.detach\(\) in the model's own forward at test_lie\.py:\d+\)"),
        ("part", r"drops \(\.detach\(\) in the model's own forward at test_lie\.py:\d+\)"),
        ("data", r"drops \(\.data in the model's own forward"),
        ("written in place", r"drops \(\.detach\(\)"),
    ],
)  # fmt: skip
def test_a_model_that_cuts_the_derivative_of_its_output_is_refused(how: str, message: str) -> None:
    model = Detached(how)
    if how == "whole":  # an equivariant conv, detached: the check passes it, by its outputs
        assert check_equivariance(model, noise(), [(0, 1)], boundary="circular").passed
    with pytest.raises(InvalidArgument, match=message):
        lie_derivative_error(model, noise())
    with pytest.raises(InvalidArgument, match=r"depends on x through a tensor whose derivative it drops"):
        profile_lie_derivative(model, noise())


def test_a_detached_tensor_that_does_not_reach_the_output_is_no_cut() -> None:
    aside = Detached("aside")
    plain = Detached("plain")  # the same sum without the tensor kept aside
    x = noise()
    assert float(lie_derivative_error(aside, x)) == pytest.approx(
        float(lie_derivative_error(plain, x)), rel=1e-12
    )
    assert aside.kept is not None


def test_a_detached_tensor_that_only_chooses_is_no_cut() -> None:
    """A detached copy used to pick an index (the phase a polyphase sampling keeps, a mask) has no
    derivative to miss: the choice is piecewise constant, and the values picked carry the tangent."""

    class Chooses(nn.Module):
        def __init__(self, mask: bool) -> None:
            super().__init__()
            self.mask = mask

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            energy = x.detach().square().sum(dim=(1, 2))
            if self.mask:
                return torch.where(energy[:, None, None] > 0, x, -x) * 2
            picked = energy.argmax(dim=-1)  # a column index per sample, from the detached copy
            return x * (1 + picked.to(x.dtype)[:, None, None, None])

    class Plain(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    x = noise()
    assert float(lie_derivative_error(Chooses(mask=True), x)) == pytest.approx(
        float(lie_derivative_error(Plain(), x)), rel=1e-12
    )
    assert math.isfinite(float(lie_derivative_error(Chooses(mask=False), x)))


def test_an_output_no_tangent_reaches_is_refused_with_the_reasons() -> None:
    def through_numpy(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(x.numpy().copy()) * 2

    def through_a_list(x: torch.Tensor) -> torch.Tensor:
        return torch.tensor(x.tolist(), dtype=x.dtype) * 2

    with pytest.raises(
        InvalidArgument,
        match=r"converts a tensor that carries the derivative of x to NumPy \(\.numpy\(\) at test_lie\.py",
    ):
        lie_derivative_error(through_numpy, noise())
    with pytest.raises(
        InvalidArgument,
        match=r"does not depend on x through autograd, so no derivative reaches it; the tangent was cut \.tolist\(\) at test_lie\.py:\d+",
    ):
        lie_derivative_error(through_a_list, noise())

    class InferenceMode(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return x * 2

    with pytest.raises(InvalidArgument, match="does not depend on x through autograd"):
        lie_derivative_error(InferenceMode(), noise())


def test_a_python_number_made_from_the_derivative_is_warned_about() -> None:
    def normalized(x: torch.Tensor) -> torch.Tensor:
        return x / float(x.abs().max())

    with pytest.warns(
        EquivarianceWarning,
        match=r"turns a tensor that carries the derivative of x into a Python number \(float\(\) at test_lie\.py",
    ):
        lie_derivative_error(normalized, noise())


def test_torch_no_grad_does_not_cut_a_forward_mode_derivative() -> None:
    """Forward-mode AD ignores no_grad: such a model is measured, and rightly (the finite-difference
    limit agrees)."""

    class NoGrad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = stack(nn.Tanh)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return self.inner(x)

    x = smooth()
    t = 1e-5
    limit = fractional_equivariance_error(NoGrad(), x, (0, t), reduction="none") / t
    found = lie_derivative_error(NoGrad(), x, Translation(0, 1), reduction="none")
    assert float(found.min()) > 1e-3
    assert float(((limit - found).abs() / found).max()) < 1e-3


# -- layouts in the profile (item 5) -------------------------------------------------------------


class Permute(nn.Module):
    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


def channels_last_block(last: bool) -> nn.Sequential:
    """conv -> (Permute ->) Linear -> GELU -> (Permute ->) conv, circular, as in a ConvNeXt block; or the
    same with 1x1 convolutions in channels-first order."""
    torch.manual_seed(0)
    conv1, conv2 = nn.Conv2d(2, 4, 3, **CIRCULAR), nn.Conv2d(4, 3, 3, **CIRCULAR)
    linear = nn.Linear(4, 4, dtype=F64)
    if last:
        return nn.Sequential(conv1, Permute(0, 2, 3, 1), linear, nn.GELU(), Permute(0, 3, 1, 2), conv2)
    pointwise = nn.Conv2d(4, 4, 1, dtype=F64)
    with torch.no_grad():
        pointwise.weight.copy_(linear.weight[..., None, None])
        pointwise.bias.copy_(linear.bias)
    return nn.Sequential(conv1, pointwise, nn.GELU(), conv2)


def test_channels_last_layers_are_read_in_their_layout() -> None:
    x = smooth()
    last = profile_lie_derivative(channels_last_block(last=True), x)
    first = profile_lie_derivative(channels_last_block(last=False), x)
    assert last.error == pytest.approx(first.error, rel=1e-9)
    assert last["3"].error == pytest.approx(first["2"].error, rel=1e-9)  # the GELU aliases alike
    assert last["3"].share == pytest.approx(1.0, abs=1e-6)
    for name in ("0", "1", "2", "4", "5", "(other operations)"):  # convs, permutes, the Linear: exact
        assert last[name].error < 1e-12
    assert last["1"].stride == last["3"].stride == (1, 1)
    assert sum(row.share for row in last.layers) == pytest.approx(1.0, abs=1e-9)


class OnSixBySix(nn.Module):
    """6 channels on a 6x6 map, then a module of the library's unknown kind that keeps the shape: its
    output reads as channels first or channels last."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, 6, 3, **CIRCULAR)
        self.mix = Squash()
        self.out = nn.Conv2d(6, 2, 3, **CIRCULAR)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.mix(self.conv(x)))


class Squash(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)


def test_an_ambiguous_layout_is_left_out_with_a_warning_until_named() -> None:
    x = smooth(size=6, keep=1)
    with pytest.warns(
        EquivarianceWarning, match=r"layer 'mix' is left out of the Lie profile .*layouts=\{'mix'"
    ):
        profile = profile_lie_derivative(OnSixBySix(), x)
    assert [row.name for row in profile.layers] == ["conv", "out", "(other operations)"]
    named = profile_lie_derivative(OnSixBySix(), x, layouts={"mix": "channels_first"})
    assert [row.name for row in named.layers] == ["conv", "mix", "out", "(other operations)"]
    assert named["mix"].share == pytest.approx(1.0, abs=1e-6)
    assert named.error == pytest.approx(profile.error, rel=1e-12)


# -- attention (item 7) --------------------------------------------------------------------------


class TinyViT(nn.Module):
    """Patches of 4, a class token, one attention block (``F.scaled_dot_product_attention`` or
    ``nn.MultiheadAttention``) and a linear head on the class token."""

    def __init__(self, multihead: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        width = 8
        self.patch = nn.Conv2d(2, width, 4, stride=4, dtype=F64)
        self.cls = nn.Parameter(torch.randn(1, 1, width, dtype=F64))
        self.norm = nn.LayerNorm(width, dtype=F64)
        self.qkv = nn.Linear(width, 3 * width, dtype=F64)
        self.attention = nn.MultiheadAttention(width, 2, batch_first=True, dtype=F64) if multihead else None
        self.head = nn.Linear(width, 3, dtype=F64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(tokens), -1, -1), tokens], dim=1)
        h = self.norm(tokens)
        if self.attention is not None:
            mixed = self.attention(h, h, h, need_weights=False)[0]
        else:
            n, length, width = h.shape
            q, k, v = self.qkv(h).reshape(n, length, 3, 2, width // 2).permute(2, 0, 3, 1, 4)
            mixed = (
                nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, length, width)
            )
        return self.head((tokens + mixed)[:, 0])


@pytest.mark.parametrize("multihead", [False, True], ids=["sdpa", "MultiheadAttention"])
def test_attention_runs_on_the_math_kernel_and_is_measured_right(multihead: bool) -> None:
    from equivariance.fractional import FractionalShift

    model, x = TinyViT(multihead).eval(), noise(2, size=16)
    fast_path = torch.backends.mha.get_fastpath_enabled()
    found = lie_derivative_error(model, x, reduction="none")
    t = 1e-5
    with torch.no_grad():
        step = (model(FractionalShift(0, t).apply(x)) - model(FractionalShift(0, -t).apply(x))) / (2 * t)
        expected = step.norm(dim=1) / model(x).norm(dim=1)
    assert float(found.min()) > 1e-3
    assert torch.allclose(found, expected, rtol=1e-6)
    profile = profile_lie_derivative(model, x)
    assert profile.error == pytest.approx(float(found.mean()), rel=1e-9)
    assert profile["patch"].stride == profile["norm"].stride == (4, 4)  # tokens on the patch grid
    assert torch.backends.mha.get_fastpath_enabled() == fast_path


def test_an_op_without_a_forward_mode_derivative_is_named() -> None:
    def warped(x: torch.Tensor) -> torch.Tensor:
        grid = torch.zeros(len(x), 4, 4, 2, dtype=x.dtype)
        return nn.functional.grid_sample(x, grid, align_corners=False)

    with pytest.raises(
        InvalidArgument, match=r"the model calls grid_sampler_2d, which has no forward-mode derivative"
    ):
        lie_derivative_error(warped, noise())
    with pytest.raises(InvalidArgument, match=r"the model calls grid_sampler_2d"):
        profile_lie_derivative(nn.Sequential(Warp()), noise())


class Warp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = torch.zeros(len(x), 4, 4, 2, dtype=x.dtype)
        return nn.functional.grid_sample(x, grid, align_corners=False)


# -- non-finite outputs and derivatives (item 10) ------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_a_non_finite_output_is_refused_like_the_checks_refuse_it(value: float) -> None:
    model = stack()
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = value
    message = r"the model's output is not finite \(nan or inf\) for 3 of 3 samples of x"
    with pytest.raises(InvalidArgument, match=message):
        lie_derivative_error(model, noise())
    with pytest.raises(InvalidArgument, match=message):
        lie_derivative(model, noise())
    with pytest.raises(InvalidArgument, match=message):
        profile_lie_derivative(model, noise())


def test_a_derivative_that_is_not_finite_is_refused() -> None:
    def magnitude(x: torch.Tensor) -> torch.Tensor:
        return x.square().sqrt()  # finite everywhere, not differentiable at the zeros

    x = noise()
    x[0, 0, 3, 3] = 0.0
    with pytest.raises(
        InvalidArgument, match=r"the Lie derivative is not finite \(nan or inf\) for 1 of 3 samples"
    ):
        lie_derivative_error(magnitude, x)


# -- normalizations of a zero canvas (item 12) ---------------------------------------------------


class LayerNorm2d(nn.LayerNorm):
    """A LayerNorm over the channels of an (N, C, H, W) map, as ConvNeXt's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def convnext_like() -> nn.Sequential:
    """A patchify stem, a LayerNorm over channels, a depthwise 7x7 conv and a pointwise MLP, pooled
    logits; biases zero as timm initializes them, so the stem is exactly zero on a zero canvas."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 4, stride=4), LayerNorm2d(16, eps=1e-6), nn.Conv2d(16, 16, 7, padding=3, groups=16),
        LayerNorm2d(16, eps=1e-6), nn.Conv2d(16, 32, 1), nn.GELU(), nn.Conv2d(32, 16, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    ).double()  # fmt: skip
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(module.weight, std=0.2)
            nn.init.zeros_(module.bias)
    return model.eval()


def bilinear_lie_derivative(model: nn.Module, x: torch.Tensor, t: float = 1e-4) -> float:
    """The relative Lie derivative of logits under a bilinear translation along the width with reflection
    at the edges, as Gruver et al. translate, by central differences (a reference, not the library's)."""
    n, _, _, w = x.shape

    def moved(step: float) -> torch.Tensor:
        theta = torch.tensor([[1.0, 0.0, -2 * step / (w - 1)], [0.0, 1.0, 0.0]], dtype=x.dtype).expand(
            n, 2, 3
        )
        grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=True)
        return nn.functional.grid_sample(x, grid, padding_mode="reflection", align_corners=True)

    with torch.no_grad():
        step = (model(moved(t)) - model(moved(-t))) / (2 * t)
        return float((step.norm(dim=1) / model(x).norm(dim=1)).mean())


def canvas(fill: str) -> torch.Tensor:
    content = nn.functional.avg_pool2d(
        torch.rand(3, 3, 36, 36, dtype=F64, generator=torch.Generator().manual_seed(0)), 5, 1
    )
    x = torch.zeros(3, 3, 64, 64, dtype=F64)
    if fill == "mean":
        x += content.mean(dim=(-2, -1), keepdim=True)
    x[..., 16:48, 16:48] = content
    return x


def test_a_normalization_of_a_zero_canvas_is_named_and_the_docs_canvas_is_right() -> None:
    model = convnext_like()
    with pytest.warns(
        EquivarianceWarning,
        match=r"layer '1' \(LayerNorm2d\) normalizes \d+ of 768 groups that are constant .* eps=1e-06 amplifies .* 1000x",
    ):
        zero = float(lie_derivative_error(model, canvas("zero")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        filled = float(lie_derivative_error(model, canvas("mean")))
    reference = bilinear_lie_derivative(model, canvas("mean"))
    assert 0.5 < filled / reference < 2  # the band-limited and the bilinear derivative, alike
    assert zero > 50 * filled


def test_a_normalization_whose_constant_groups_get_no_derivative_is_not_reported() -> None:
    """ReLU'd features that die all together at some positions: constant groups, but no derivative
    reaches them (the ReLU's is zero there), so nothing is amplified."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, **CIRCULAR), nn.ReLU(), LayerNorm2d(4, dtype=F64), nn.Conv2d(4, 3, 3, **CIRCULAR)
    )
    with torch.no_grad():
        model[0].bias.fill_(-50.0)  # dead except where the input is large
    x = noise() * 10
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lie_derivative_error(model, x)


class _Affine(nn.Module):
    """Broadcast products and sums with parameters: the ops whose plain operands the Lie derivative
    gives dense zero tangents."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, 4, dtype=F64).reshape(1, 4, 1, 1))
        self.bias = nn.Parameter(torch.linspace(-1.0, 1.0, 4, dtype=F64).reshape(1, 4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.sigmoid(x) * self.gain + self.bias
        return self.gain * torch.addcmul(self.bias, y, self.gain) / (self.gain + 2.0) - self.bias


class _ChannelsLast(nn.Module):
    """A linear layer over the channels, kept last (as in a ConvNeXt block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(channels, channels, dtype=F64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


@pytest.mark.parametrize("training", [False, True])  # a check runs it in eval mode, and restores the flag
@pytest.mark.parametrize("stats", [True, False])  # without running statistics: the batch norm itself
def test_batch_norms_and_broadcast_ops_push_the_derivative_as_torch_func_jvp_does(
    training: bool, stats: bool
) -> None:
    """The fast paths of the pushforward (an eval batch norm's tangent as its affine map's scale,
    convolutions and linear layers as two plain ops, products and quotients by plain tensors by hand,
    other plain operands given dense zero tangents) give the derivative ``torch.func.jvp`` gives the
    model itself."""
    torch.manual_seed(0)
    norm = nn.BatchNorm2d(4, track_running_stats=stats, dtype=F64)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
        if stats:
            norm.running_mean.uniform_(-1.0, 1.0)
            norm.running_var.uniform_(0.5, 2.0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, **CIRCULAR), norm, nn.ReLU(), _Affine(),
        nn.Conv2d(4, 4, 3, groups=4, bias=False, **CIRCULAR), _ChannelsLast(4), nn.Conv2d(4, 3, 1, dtype=F64),
    )  # fmt: skip
    model.eval()  # as the Lie derivative runs it; without running statistics, on the batch's own
    x = smooth()
    generator = Translation(1, 1)
    tangent = generator.apply(x, (1, 1))
    with torch.no_grad():  # the reference: torch.func.jvp of the model itself
        _, expected = torch.func.jvp(model, (x,), (tangent,))
        plain = model(x)
    expected = expected - generator.apply(plain, (1, 1))
    measured = lie_derivative(model.train(training), x, generator)
    torch.testing.assert_close(measured, expected, rtol=1e-9, atol=1e-12)
    assert model.training is training


class _SelfSimilarity(nn.Module):
    """A grid model that mixes its pixels by their feature distances (``torch.cdist``, which has no
    forward-mode formula in torch)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular").double()
        self.out = nn.Conv2d(3, 1, 1).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        f = h.flatten(2).transpose(1, 2)  # (B, HW, 3)
        mixed = torch.softmax(-torch.cdist(f, f), -1) @ f
        return self.out(mixed.transpose(1, 2).reshape(h.shape))


def test_a_grid_model_that_calls_cdist_is_measured_and_profiled() -> None:
    model, x = _SelfSimilarity(), torch.randn(2, 2, 8, 8, dtype=torch.float64)
    error = lie_derivative_error(model, x, "translation", reduction="none")
    t = 1e-5  # the finite-difference limit the errors suggest
    limit = fractional_equivariance_error(model, x, (0, t), reduction="none") / t
    assert float(error.min()) > 1e-2  # softmax of distances is not band-limited: sub-pixel shifts alias
    assert float(((limit - error).abs() / error).max()) < 1e-3
    profile = profile_lie_derivative(model, x, "translation")
    assert profile.error == pytest.approx(float(error.mean()), rel=1e-9)
