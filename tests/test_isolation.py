"""Nothing lost: a check leaves the model, the input, the RNG and TF32 exactly as it found them."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import pytest
import torch
from torch import nn

from equivariance import (
    assert_equivariant,
    check_equivariance,
    check_invariance,
    equivariance_error,
    invariance_error,
    profile_equivariance,
)
from equivariance._engine.isolation import exact_float32
from equivariance.actions import Action, Grid
from equivariance.generators import Generator, Translation
from equivariance.lie import lie_derivative_error
from equivariance.loss import equivariance_loss


class Noisy(nn.Module):
    """BatchNorm, Dropout, an in-place ReLU on the input, and randomness in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(2, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(x)  # modifies the caller's tensor unless the check protects it
        return self.head(self.drop(self.bn(self.conv(x)))) + 0 * torch.rand(1)


CHECKS = {
    "check_equivariance": lambda m, x: check_equivariance(m, x, max_shift=1),
    "assert_equivariant-failing": lambda m, x: assert_equivariant(m, x, max_shift=1, rtol=0.0),
    "check_invariance": lambda m, x: check_invariance(m, x, max_shift=1),
    "equivariance_error": lambda m, x: equivariance_error(m, x, (1, 1)),
    "invariance_error": lambda m, x: invariance_error(m, x, (1, 1)),
    "layer": lambda m, x: check_equivariance(m, x, max_shift=1, layer="head.1"),
}


@pytest.fixture
def model() -> Noisy:
    model = Noisy().train()
    model.head.eval()  # mixed flags must come back mixed
    return model


@pytest.mark.parametrize("run", list(CHECKS.values()), ids=list(CHECKS))
def test_model_input_and_rng_are_untouched(model: Noisy, run) -> None:  # type: ignore[no-untyped-def]
    x = torch.randn(3, 2, 12, 12)
    x_before = x.clone()
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    flags_before = {name: m.training for name, m in model.named_modules()}
    rng_before = torch.random.get_rng_state()
    with contextlib.suppress(AssertionError):  # a failing assert must not leave traces either
        run(model, x)
    assert torch.equal(x, x_before)
    assert {name: m.training for name, m in model.named_modules()} == flags_before
    state_after = model.state_dict()
    assert state_after.keys() == state_before.keys()
    for key, value in state_before.items():
        assert torch.equal(state_after[key], value), key  # BatchNorm statistics included
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert all(p.grad is None for p in model.parameters())


def test_the_model_runs_in_eval_mode_without_autograd(model: Noisy) -> None:
    seen: list[tuple[bool, bool]] = []
    model.conv.register_forward_hook(lambda m, i, o: seen.append((m.training, torch.is_grad_enabled())))
    check_equivariance(model, torch.randn(2, 2, 10, 10), max_shift=1)
    assert seen
    assert all(flags == (False, False) for flags in seen)
    assert model.conv.training


def _precision_state() -> list[object]:
    leaves = [torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.mkldnn.matmul]
    if all(hasattr(leaf, "fp32_precision") for leaf in leaves):
        return [leaf.fp32_precision for leaf in leaves]
    return [torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32]


def _set_reduced_precision() -> None:
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    else:  # torch < 2.9
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def test_tf32_is_disabled_during_the_check_and_restored_after() -> None:
    before = _precision_state()
    try:
        _set_reduced_precision()
        caller = _precision_state()
        seen: list[list[object]] = []

        def spy(x: torch.Tensor) -> torch.Tensor:
            seen.append(_precision_state())
            return x

        check_equivariance(spy, torch.randn(1, 1, 8), max_shift=1)
        assert seen
        assert all("tf32" not in state and "bf16" not in state and True not in state for state in seen)
        assert _precision_state() == caller
    finally:
        for leaf, value in zip(
            [torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.mkldnn.matmul], before
        ):
            if hasattr(leaf, "fp32_precision"):
                leaf.fp32_precision = value


def test_exact_float32_restores_even_when_the_block_raises() -> None:
    before = _precision_state()
    with pytest.raises(RuntimeError), exact_float32():
        raise RuntimeError("boom")
    assert _precision_state() == before


def test_buffers_updated_in_forward_are_put_back() -> None:
    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("calls", torch.zeros(()))
            self.register_buffer("cache", torch.zeros(1), persistent=False)
            self.conv = nn.Conv1d(1, 1, 3)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            self.cache = t.mean().reshape(1)  # rebinds the buffer to a new tensor
            return self.conv(t)

    model = Counting()
    calls, cache = model.calls, model.cache
    check_equivariance(model, torch.randn(2, 1, 12))
    assert model.calls is calls
    assert model.calls == 0
    assert model.cache is cache
    assert model.cache == 0


class Features(nn.Module):
    """A model whose convolutional part is checked through a bound method, as ``LeNet.features``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.drop = nn.Dropout2d(0.5)

    def features(self, t: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.drop(self.norm(self.conv(t)))
        return out


def test_a_bound_method_is_checked_in_eval_mode_and_its_module_left_as_it_was() -> None:
    model = Features().train()
    stats = {k: v.clone() for k, v in model.norm.state_dict().items()}
    report = check_equivariance(model.features, torch.randn(4, 1, 12, 12), max_shift=1)
    assert report.passed  # in train mode, dropout and batch statistics would fail it
    assert model.training
    assert all(m.training for m in model.modules())
    assert all(torch.equal(v, model.norm.state_dict()[k]) for k, v in stats.items())


def test_a_model_already_in_eval_mode_is_not_touched() -> None:
    model = Features().eval()
    calls: list[bool] = []
    model.train = lambda mode=True: calls.append(mode) or model  # type: ignore[method-assign, assignment]
    check_equivariance(model.features, torch.randn(2, 1, 12, 12), max_shift=1)
    assert calls == []  # neither eval() nor train() was called


@pytest.mark.parametrize("run", list(CHECKS.values()), ids=list(CHECKS))
def test_an_expanded_input_reaches_a_model_that_writes_to_it(model: Noisy, run) -> None:  # type: ignore[no-untyped-def]
    """The model gets a copy it can write to (copy-on-write where torch has it): a batch expanded
    from one sample (stride 0) is copied out densely, else the model's in-place ReLU would raise."""
    x = torch.randn(1, 2, 12, 12).expand(3, 2, 12, 12)
    x_before = x.clone()
    with contextlib.suppress(AssertionError):
        run(model, x)
    assert torch.equal(x, x_before)


class Negate(Action):
    """An action of the caller's own that writes to the tensor it is given."""

    def act(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        return x.mul_(-1)

    def inverse(self) -> Negate:
        return self


class OverwritingTranslation(Generator):
    """A generator of the caller's own that returns the translation's derivative and zeroes ``h``."""

    def apply(self, h: torch.Tensor, stride: Sequence[float]) -> torch.Tensor:
        derivative = Translation.along(-1, len(stride)).apply(h, stride).clone()
        h.mul_(0)
        return derivative


class Energy(nn.Module):
    """The mean square of each channel: even, so invariant under negation."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.square().mean(dim=(-2, -1))


_CONV = nn.Conv2d(1, 3, 3, padding=1, padding_mode="circular", bias=False, dtype=torch.float64)
_POOLED = nn.Sequential(_CONV, Energy())

IN_PLACE_ACTIONS = {  # each is exact on a bias-free circular conv: the error must be 0
    "check_equivariance": lambda x: check_equivariance(_CONV, x, transforms=[Negate()]).max_error,
    "check_invariance": lambda x: check_invariance(_POOLED, x, transforms=[Negate()]).max_error,
    "equivariance_error": lambda x: float(equivariance_error(_CONV, x, Negate())),
    "invariance_error": lambda x: float(invariance_error(_POOLED, x, Negate())),
    "profile_equivariance": lambda x: max(r.error for r in profile_equivariance(_CONV, x, Negate()).layers),
    "equivariance_loss": lambda x: equivariance_loss(_CONV, x, [Negate()]).item(),
    "equivariance_loss-chunked": lambda x: equivariance_loss(_CONV, x, [Negate()], batch_size=1).item(),
    "lie_derivative_error": lambda x: float(
        lie_derivative_error(_CONV, x, OverwritingTranslation(), reduction="max")
    ),
}


@pytest.mark.parametrize("run", list(IN_PLACE_ACTIONS.values()), ids=list(IN_PLACE_ACTIONS))
def test_an_action_that_writes_in_place_leaves_the_input_and_the_numbers_alone(run) -> None:  # type: ignore[no-untyped-def]
    """Issue 21, item 8: a user's ``act`` (or generator) that writes to what it is given acts on a
    private copy, for the input and for the model's reference outputs alike."""
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    kept = x.clone()
    assert run(x) < 1e-12
    assert torch.equal(x, kept)
