"""Reference models: the seed article's convolutional LeNet and a dense counterpart.

[`LeNet`][equivariance.models.LeNet] is the network of the article the project started from (C. Wolf, "What is
translation equivariance, and why do we use convolutions to get it?", 2020): four 5x5 convolutions without
padding or pooling between them, so its convolutional part is translation equivariant on any canvas of at
least 17x17. [`MLP`][equivariance.models.MLP] maps an image to a tensor of exactly the same shape as LeNet's
conv4 map, through dense layers; it runs through the same checks and fails them, which is the article's point.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from equivariance._engine.validation import describe, per_dim
from equivariance.errors import InvalidArgument

__all__ = ["MLP", "LeNet"]

#: Spatial size lost by LeNet's four unpadded 5x5 convolutions (4 * (5 - 1)).
LENET_SHRINK = 16


class LeNet(nn.Module):
    """The seed's 4-layer convolutional LeNet, with the same layers and names.

    ``conv1`` .. ``conv4`` are 5x5 convolutions (1 -> 20 -> 40 -> 40 -> 5 channels, stride 1, no padding),
    each followed by a ReLU; then a 2x2 max-pool and ``fc1``, a linear layer from 6*6*5 features to 10 logits.
    Trained on 28x28 MNIST digits.

    It demonstrates that a stack of convolutions is translation equivariant:
    [`features`][equivariance.models.LeNet.features] (or ``layer="conv4"`` in a check) maps a digit moved on a
    larger canvas to a feature map moved by the same amount. The head only accepts 28x28 inputs, like the
    seed's, but says so instead of reshaping silently.

    Examples:
        >>> import torch
        >>> model = LeNet()
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
        >>> model.features(torch.zeros(2, 1, 38, 38)).shape
        torch.Size([2, 5, 22, 22])
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5, 1)
        self.conv2 = nn.Conv2d(20, 40, 5, 1)
        self.conv3 = nn.Conv2d(40, 40, 5, 1)
        self.conv4 = nn.Conv2d(40, 5, 5, 1)
        self.fc1 = nn.Linear(6 * 6 * 5, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The ReLU'd conv4 map, ``(N, 5, H - 16, W - 16)``, for any input of at least 17x17."""
        _check_image(x, "LeNet.features", minimum=LENET_SHRINK + 1)
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        out: torch.Tensor = F.relu(self.conv4(x))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 10)`` for 28x28 digits ``(N, 1, 28, 28)``."""
        features = self.features(x)
        # Checked after the convolutions, so that a check with layer="conv4" or a
        # profile with up_to="conv4" (whose hook stops the pass at conv4) works on any canvas.
        if tuple(x.shape[-2:]) != (28, 28):
            raise InvalidArgument(
                f"LeNet's head takes 28x28 inputs (fc1 expects 6*6*5 features), found "
                f"{tuple(x.shape[-2:])}; for larger canvases use model.features(x), "
                "layer='conv4' in a check, or up_to='conv4' in a profile"
            )
        logits: torch.Tensor = self.fc1(F.max_pool2d(features, 2, 2).flatten(1))
        return logits


class MLP(nn.Module):
    """A dense network with the input and output shapes of LeNet's convolutional part.

    It flattens ``(N, 1, H, W)``, applies ``fc1`` (H*W -> ``hidden``), a ReLU and ``fc2`` (``hidden`` ->
    5*(H-16)*(W-16)), and reshapes to ``(N, 5, H - 16, W - 16)``, exactly the shape of
    ``LeNet().features(x)``. Every output unit has its own weights for every input pixel, so nothing ties a
    moved input to a moved output: it demonstrates what convolutions avoid, and is the negative control of
    every equivariance check.

    Args:
        input_size: the input's spatial size, ``H`` for a square or ``(H, W)``.
        hidden: width of the hidden layer (the seed's example uses 500).

    Examples:
        >>> import torch
        >>> MLP(input_size=38)(torch.zeros(2, 1, 38, 38)).shape
        torch.Size([2, 5, 22, 22])
    """

    def __init__(self, input_size: int | Sequence[int], hidden: int = 500) -> None:
        super().__init__()
        height, width = per_dim(input_size, 2, "input_size", minimum=LENET_SHRINK + 1)
        (hidden,) = per_dim(hidden, 1, "hidden", minimum=1)
        self.input_size = (height, width)
        self.output_shape = (5, height - LENET_SHRINK, width - LENET_SHRINK)
        self.fc1 = nn.Linear(height * width, hidden)
        self.fc2 = nn.Linear(hidden, 5 * (height - LENET_SHRINK) * (width - LENET_SHRINK))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The dense map, ``(N, 1, H, W) -> (N, 5, H - 16, W - 16)``."""
        _check_image(x, "MLP", minimum=1)
        if tuple(x.shape[-2:]) != self.input_size:
            raise InvalidArgument(
                f"this MLP was built for {self.input_size} inputs, found {tuple(x.shape[-2:])}; "
                f"build it with MLP(input_size={tuple(x.shape[-2:])})"
            )
        hidden = F.relu(self.fc1(x.flatten(1)))
        out: torch.Tensor = self.fc2(hidden).view(-1, *self.output_shape)
        return out


def _check_image(x: object, who: str, *, minimum: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 1:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else describe(x)
        raise InvalidArgument(
            f"{who} takes single-channel images (N, 1, H, W), found {shape}; add the missing "
            "dims, e.g. x[:, None] for (N, H, W)"
        )
    if min(x.shape[-2:]) < minimum:
        raise InvalidArgument(
            f"{who} needs images of at least {minimum}x{minimum}, found {tuple(x.shape[-2:])}"
        )
