"""stride="auto" and margin="auto": what they infer, that the report says so, and their errors."""

from __future__ import annotations

import pytest
import torch
from conftest import canvas
from torch import nn

from equivariance import InvalidArgument, check_equivariance, equivariance_error


def strided(total: int) -> nn.Module:
    """A valid convolution, then a patch embedding of size and stride ``total``."""
    if total == 1:
        return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 3))
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, total, stride=total))


def padded(halvings: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(1, 3, 3, padding=1)]
    for _ in range(halvings):
        layers += [nn.ReLU(), nn.Conv2d(3, 3, 3, stride=2, padding=1)]
    return nn.Sequential(*layers)


@pytest.mark.parametrize("total", [1, 2, 4, 8])
def test_stride_auto_recovers_the_stride(total: int) -> None:
    report = check_equivariance(strided(total), canvas(batch=2, size=66, content=32), stride="auto")
    assert report.passed
    expected = "shift" if total == 1 else f"shift / {total}"
    assert report.output_action == f"{expected} (inferred)"
    assert report.inferred[0].startswith(f"stride {total}, the input shift that moves the output")
    assert f"inferred: stride {total}" in str(report)
    assert report.to_dict()["inferred"] == list(report.inferred)


@pytest.mark.parametrize("halvings", [0, 1, 2])
def test_stride_and_margin_auto_on_zero_padded_strided_convolutions(halvings: int) -> None:
    report = check_equivariance(
        padded(halvings), canvas(batch=2, size=48, content=24), stride="auto", margin="auto"
    )
    assert report.passed
    assert report.output_action.startswith("shift / " if halvings else "shift")
    assert report.margin == (1, 1)


def test_margin_auto_makes_a_zero_padded_same_cnn_pass() -> None:
    same = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1))
    x = torch.rand(2, 1, 16, 16)
    assert not check_equivariance(same, x).passed  # negative control: the borders see the padding
    report = check_equivariance(same, x, margin="auto")
    assert report.passed
    assert report.margin == (2, 2)
    assert report.inferred == (
        "margin 2: the output at the centre of the map depends on 5 x 5 input samples (one backward "
        "pass), a radius of 2 output samples at stride 1",
    )
    assert float(equivariance_error(same, x, (1, 2), margin="auto")) == 0.0


def test_margin_auto_does_not_make_a_dense_layer_pass() -> None:
    dense = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.Unflatten(1, (1, 8, 8)))
    with pytest.raises(InvalidArgument, match=r"margin='auto' measured a receptive-field radius of 4"):
        check_equivariance(dense, torch.rand(2, 1, 8, 8), margin="auto")


def test_margin_auto_leaving_nothing_is_an_error() -> None:
    same = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1))
    with pytest.raises(
        InvalidArgument,
        match=r"which leaves nothing of the output \(6, 6\) to compare for shift \(-2, -2\); .* use a larger input",
    ):
        check_equivariance(same, torch.rand(2, 1, 6, 6), margin="auto")


def test_margin_auto_leaves_parameter_gradients_alone() -> None:
    conv = nn.Conv2d(1, 2, 3, padding=1)
    check_equivariance(conv, torch.rand(1, 1, 12, 12), margin="auto")
    assert conv.weight.grad is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"stride": "Auto"}, r"stride must be an int, one int per spatial dim or 'auto', found 'Auto'"),
        ({"margin": "max"}, r"margin must be an int, one int per spatial dim or 'auto', found 'max'"),
        (
            {"stride": "auto", "output_action": lambda y, s: y},
            r"pass either stride='auto' or output_action=, not both",
        ),
    ],
    ids=["stride-typo", "margin-typo", "stride-and-action"],
)
def test_invalid_auto_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        check_equivariance(nn.Conv2d(1, 1, 3), torch.rand(1, 1, 12, 12), **kwargs)  # type: ignore[arg-type]


def test_stride_auto_needs_spatial_output() -> None:
    head = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with pytest.raises(InvalidArgument, match=r"stride='auto' needs an output with 2 spatial dims"):
        check_equivariance(head, torch.rand(1, 1, 8, 8), stride="auto")


def test_equivariance_error_takes_auto_too() -> None:
    x = canvas(batch=2, size=66, content=32)
    assert float(equivariance_error(strided(2), x, (4, -2), stride="auto")) == 0.0
    assert float(equivariance_error(strided(2), x, (4, -2))) > 0.1  # negative control: stride 1 assumed


class _Ramp(nn.Module):
    """Adds the column index: an output that no input shift moves cleanly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.arange(x.shape[-1], dtype=x.dtype)


def test_where_no_shift_moves_the_output_cleanly_the_stride_is_read_off_the_sizes_by_the_one_rule() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1, padding_mode="circular"), _Ramp())
    report = check_equivariance(model, torch.randn(2, 1, 15, 15), stride="auto", boundary="circular")
    # 15 -> 8 is a padded stride 2 at its limit (ceil(15 / 2) = 8), not the 1 that 15 // 8 says
    assert report.inferred[0].startswith("stride 2, the input's size over the output's: no input shift")
    assert report.output_action == "shift / 2 (inferred)"
