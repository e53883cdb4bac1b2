"""The profile's pooled comparisons: a layer after an exact one is tested for all-zero differences
first (`LayerSums.exact`); its numbers must be those of the full comparison, at every scale."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from equivariance import profile_equivariance
from equivariance._engine import layer_sums


class Tilted(nn.Module):
    """Multiplies by a fixed ramp along the width: not shift equivariant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(0.5, 1.5, x.shape[-1], dtype=x.dtype)
        return x * ramp


def _model() -> nn.Module:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular")
    return nn.Sequential(conv, nn.Identity(), Tilted(), nn.Identity()).eval()


def _errors(model: nn.Module, x: torch.Tensor) -> list[tuple[str, float, bool]]:
    profile = profile_equivariance(model, x, (0, 3), boundary="circular")
    return [(layer.name, layer.error, layer.passed) for layer in profile.layers]


@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e30])
def test_a_layer_after_an_exact_one_is_measured_as_by_the_full_comparison(
    scale: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    # at 1e-30 the broken layer's squared differences underflow in float32: summed again in float64
    x = torch.rand(2, 2, 8, 8) * scale
    model = _model()
    found = _errors(model, x)
    # every layer through the full comparison: the pool never takes a layer for exact
    never = property(lambda _: False, lambda *_: None)
    monkeypatch.setattr(layer_sums.LayerSums, "exact", never, raising=False)
    expected = _errors(model, x)
    assert found == expected
    assert found[0][1:] == (0.0, True)  # the circular convolution is exact
    name, error, passed = found[2]  # the ramp fails, at any scale
    assert name == "2"
    assert not passed
    assert error > 0.05
