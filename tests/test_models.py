"""The reference models: the seed's LeNet, and the dense MLP with the same shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from equivariance import InvalidArgument
from equivariance.models import MLP, LeNet


def test_lenet_has_the_seed_layers() -> None:
    model = LeNet()
    convs = [model.conv1, model.conv2, model.conv3, model.conv4]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 20), (20, 40), (40, 40), (40, 5)]
    assert all(c.kernel_size == (5, 5) and c.stride == (1, 1) and c.padding == (0, 0) for c in convs)
    assert (model.fc1.in_features, model.fc1.out_features) == (6 * 6 * 5, 10)
    assert [name for name, _ in model.named_children()] == ["conv1", "conv2", "conv3", "conv4", "fc1"]


def test_lenet_forward_matches_the_seed_computation() -> None:
    model = LeNet()
    x = torch.randn(3, 1, 28, 28)
    h = x
    for conv in (model.conv1, model.conv2, model.conv3, model.conv4):
        h = torch.relu(conv(h))
    expected = model.fc1(torch.nn.functional.max_pool2d(h, 2, 2).view(-1, 6 * 6 * 5))
    assert torch.equal(model(x), expected)
    assert torch.equal(model.features(x), h)


@pytest.mark.parametrize("size", [17, 28, 38, 64])
def test_lenet_features_work_on_any_canvas(size: int) -> None:
    assert LeNet().features(torch.zeros(2, 1, size, size + 3)).shape == (2, 5, size - 16, size - 13)


def test_lenet_head_refuses_other_sizes_clearly() -> None:
    with pytest.raises(
        InvalidArgument, match=r"LeNet's head takes 28x28 inputs .* found \(38, 38\).*layer='conv4'"
    ):
        LeNet()(torch.zeros(1, 1, 38, 38))
    with pytest.raises(InvalidArgument, match=r"at least 17x17, found \(16, 16\)"):
        LeNet().features(torch.zeros(1, 1, 16, 16))
    with pytest.raises(
        InvalidArgument, match=r"single-channel images \(N, 1, H, W\), found \(1, 3, 28, 28\)"
    ):
        LeNet()(torch.zeros(1, 3, 28, 28))


@pytest.mark.parametrize("size", [17, 28, 38, (30, 40)])
def test_mlp_has_the_shape_of_lenet_features(size: int | tuple[int, int]) -> None:
    h, w = (size, size) if isinstance(size, int) else size
    x = torch.randn(2, 1, h, w)
    assert MLP(input_size=size)(x).shape == LeNet().features(x).shape
    assert isinstance(MLP(input_size=size).fc1, nn.Linear)


def test_mlp_refuses_the_wrong_size() -> None:
    with pytest.raises(InvalidArgument, match=r"built for \(38, 38\) inputs, found \(28, 28\)"):
        MLP(input_size=38)(torch.zeros(1, 1, 28, 28))
    with pytest.raises(InvalidArgument, match="input_size must be >= 17, found 10"):
        MLP(input_size=10)
    assert MLP(input_size=20, hidden=7).fc1.out_features == 7
