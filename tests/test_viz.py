"""Pictures: the error heatmap, k-means colouring and the seed's animation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import canvas
from PIL import Image
from torch import nn

from equivariance import InvalidArgument, check_equivariance
from equivariance.models import MLP, LeNet
from equivariance.viz import cluster_colors, feature_animation, kmeans, shift_heatmap


def test_heatmap_marks_the_failing_shifts(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 2, stride=2), nn.Upsample(scale_factor=2))
    report = check_equivariance(model, torch.randn(2, 1, 16, 16), max_shift=2)
    ax = shift_heatmap(report)
    crosses = [line for line in ax.get_lines() if line.get_marker() == "x"]
    assert len(crosses) == len(report.failures) == 16  # every shift with an odd offset
    assert ax.get_title() == "Sequential: 16 shifts fail"
    ax.figure.savefig(tmp_path / "heatmap.png")
    assert Image.open(tmp_path / "heatmap.png").size[0] > 100


def test_heatmap_refuses_other_dims() -> None:
    report = check_equivariance(nn.Conv1d(1, 1, 3), torch.randn(1, 1, 12))
    with pytest.raises(InvalidArgument, match="shift_heatmap draws 2-D shifts, found shifts of 1 dims"):
        shift_heatmap(report)


def test_kmeans_finds_separated_clusters() -> None:
    points = torch.cat([torch.randn(50, 3) * 0.05 + c for c in (0.0, 5.0, -5.0)])
    centres = kmeans(points, 3)
    assert sorted(round(v) for v in centres.mean(1).tolist()) == [-5, 0, 5]
    with pytest.raises(InvalidArgument, match=r"M >= k >= 1, found shape \(2, 3\) and k=3"):
        kmeans(points[:2], 3)


def test_cluster_labels_move_with_an_equivariant_map() -> None:
    model = LeNet()
    x = canvas(batch=6)
    colour = cluster_colors(model.features, x, k=4)
    moved = torch.roll(x, (3, 2), (2, 3))  # the content stays inside the zero border
    a, b = colour(x), colour(moved)
    assert torch.equal(torch.roll(a, (3, 2), (1, 2))[:, 3:, 2:], b[:, 3:, 2:])


def test_feature_animation_writes_a_gif(tmp_path: Path) -> None:
    lenet, mlp = LeNet(), MLP(input_size=38, hidden=32)
    frames = torch.stack([torch.roll(canvas(batch=1)[0], (0, dx), (1, 2)) for dx in range(-3, 4)])
    path = feature_animation(
        {"LeNet conv4": lenet.features, "MLP": mlp}, frames, canvas(batch=5), tmp_path / "moving.gif", k=4
    )
    gif = Image.open(path)
    assert gif.format == "GIF"
    assert gif.n_frames == 7


def test_profile_chart_colours_the_failing_layers(tmp_path: Path) -> None:
    from equivariance import Rot90, profile_equivariance
    from equivariance.viz import profile_chart

    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 2, stride=2), nn.Flatten())
    profile = profile_equivariance(net, torch.randn(2, 1, 16, 16), (1, 0))
    ax = profile_chart(profile)
    colours = [bar.get_facecolor()[:3] for bar in ax.patches]
    failing = [not layer.passed for layer in profile.layers]
    assert failing == [False, False, True, True]
    assert colours[0] != colours[2]  # green for the equivariant layers, red from the stride on
    assert ax.get_title() == "Sequential under shift (1, 0)"
    ax.figure.savefig(tmp_path / "profile.png")
    rotated = profile_chart(profile_equivariance(net, torch.randn(2, 1, 16, 16), Rot90(1), up_to="2"))
    assert rotated.get_title() == "Sequential up to 2 under transform Rot90(1)"
