"""Small models with the structures of the architectures people build, for the profile gallery.

Each builder returns a randomly initialised model, in eval mode, that
reproduces one structure seen in a well-known architecture, small enough to
profile on a CPU in well under a second: a ResNet stage, a ConvNeXt stage
(channels-last blocks), a ViT (tokens, a class token, a learned position
embedding), a squeeze-excite block, MobileNet-like depthwise blocks, an
FCN-like head that upsamples back to full resolution, a U-Net with skips, and
blur pooling; then the cases whose diagnosis is subtle (issue 21): a 7x7
depthwise convolution whose zero padding reaches across a small map, a
global-pool branch as in LRASPP, a circularly padded ResNet stem whose
MaxPool still pads, a ResNet classifier checked for invariance, and a ViT
without a position embedding. ``tests/test_gallery.py`` pins what the
library says about each, and the docs page "What the profile says about
common architectures" draws their profiles.

Run it to print every profile::

    python examples/gallery.py
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from equivariance import (
    EquivarianceProfile,
    EquivarianceReport,
    check_equivariance,
    check_invariance,
    multiples_of,
    profile_equivariance,
)
from equivariance.layouts import Tokens

__all__ = [
    "CASES",
    "GALLERY",
    "Case",
    "BlurPool",
    "blurpool_net",
    "canvas",
    "image",
    "circular_resnet_stem",
    "convnext_stage",
    "depthwise_net",
    "fcn_head",
    "lraspp_head",
    "patchify_depthwise",
    "resnet_classifier",
    "resnet_stage",
    "squeeze_excite_net",
    "unet",
    "vit",
    "vit_without_positions",
]


def canvas(n: int = 2, channels: int = 3, size: int = 64, content: int = 32, seed: int = 0) -> torch.Tensor:
    """A batch of random images of ``content`` x ``content`` samples centred on a zero canvas."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, channels, size, size)
    lo = (size - content) // 2
    x[..., lo : lo + content, lo : lo + content] = torch.rand(
        n, channels, content, content, generator=generator
    )
    return x


def _ready(model: nn.Module, seed: int) -> nn.Module:
    """The model in eval mode, with PyTorch's default initialisation (``torch.manual_seed(seed)`` first)."""
    return model.eval()


# -- a ResNet stage ----------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut, as in ResNet-18 (a 1x1 strided shortcut when it subsamples)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        result: torch.Tensor = self.relu(self.bn2(self.conv2(out)) + shortcut)
        return result


def resnet_stage(zero_init_residual: bool = False, seed: int = 0) -> nn.Module:
    """A stem, a block at full resolution and a block that subsamples by 2 (ResNet-18's layout).

    With ``zero_init_residual`` the last BatchNorm of each block starts at
    zero, as torchvision's option of that name does: each block is then its
    shortcut until it is trained.
    """
    torch.manual_seed(seed)
    model = nn.Sequential()
    model.add_module("stem", nn.Conv2d(3, 8, 3, 1, 1, bias=False))
    model.add_module("bn", nn.BatchNorm2d(8))
    model.add_module("relu", nn.ReLU())
    model.add_module("layer1", BasicBlock(8, 8))
    model.add_module("layer2", BasicBlock(8, 16, stride=2))
    model.eval()
    if zero_init_residual:
        with torch.no_grad():
            for block in (model.layer1, model.layer2):
                assert isinstance(block, BasicBlock)
                block.bn2.weight.zero_()
                block.bn2.bias.zero_()
    return model


# -- a ConvNeXt stage (channels last inside the blocks) ---------------------------------------------


class Permute(nn.Module):
    """``x.permute(*dims)`` as a module, as ConvNeXt's blocks use it."""

    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7, then LayerNorm and an MLP on channels last, and a residual connection."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, 7, padding=3, groups=dim),
            Permute(0, 2, 3, 1),
            nn.LayerNorm(dim),
            nn.Linear(dim, 4 * dim),
            nn.GELU(),
            nn.Linear(4 * dim, dim),
            Permute(0, 3, 1, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = x + self.block(x)
        return result


def convnext_stage(seed: int = 0) -> nn.Module:
    """A 4x4 stride-4 stem, a block, a downsampling layer (LayerNorm, 2x2 stride-2 conv), a block.

    The stem has no bias (ConvNeXt's has one), so that content on a zero
    canvas is the only thing that is not zero: the profile then shows the
    downsampling, not the canvas's edges, as the first failure.
    """
    torch.manual_seed(seed)
    model = nn.Sequential()
    # no bias in the stem: the zero canvas stays zero, so the zero padding adds no edges of its own
    stem = nn.Conv2d(3, 8, 4, stride=4, bias=False)
    model.add_module("stem", nn.Sequential(stem, Permute(0, 2, 3, 1), nn.LayerNorm(8)))
    model.add_module("to_first", Permute(0, 3, 1, 2))
    model.add_module("stage1", ConvNeXtBlock(8))
    model.add_module(
        "downsample",
        nn.Sequential(
            Permute(0, 2, 3, 1), nn.LayerNorm(8), Permute(0, 3, 1, 2), nn.Conv2d(8, 16, 2, stride=2)
        ),
    )
    model.add_module("stage2", ConvNeXtBlock(16))
    return _ready(model, seed)


# -- a ViT ------------------------------------------------------------------------------------------


class EncoderBlock(nn.Module):
    """Pre-norm self-attention and MLP, as in ViT."""

    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        result: torch.Tensor = x + self.mlp(self.norm2(x))
        return result


class ViT(nn.Module):
    """Patches of 16x16 as tokens, a class token, a learned position embedding added in ``forward``
    (none with ``positions=False``)."""

    def __init__(
        self,
        image: int = 64,
        patch: int = 16,
        dim: int = 16,
        depth: int = 2,
        classes: int = 10,
        positions: bool = True,
    ) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        tokens = (image // patch) ** 2
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim)) if positions else None
        self.blocks = nn.Sequential(*(EncoderBlock(dim) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1)
        if self.pos_embed is not None:
            tokens = tokens + self.pos_embed
        logits: torch.Tensor = self.head(self.norm(self.blocks(tokens))[:, 0])
        return logits


def vit(seed: int = 0, positions: bool = True) -> nn.Module:
    """A ViT for 64x64 images: 4x4 patches of 16 and a class token, two encoder blocks; with
    ``positions=False``, no position embedding."""
    torch.manual_seed(seed)
    return _ready(ViT(positions=positions), seed)


def vit_without_positions(seed: int = 0) -> nn.Module:
    """The ViT without a position embedding: self-attention treats the tokens as a set."""
    return vit(seed, positions=False)


# -- a squeeze-excite block -------------------------------------------------------------------------


class SqueezeExcite(nn.Module):
    """Global average pooling to a 1x1 map, two 1x1 convolutions, and a gate on the input's channels."""

    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.relu = nn.ReLU()
        self.fc2 = nn.Conv2d(squeezed, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))
        return result


def squeeze_excite_net(seed: int = 0) -> nn.Module:
    """Convolutions without any stride around a squeeze-excite block."""
    torch.manual_seed(seed)
    model = nn.Sequential()
    model.add_module("conv1", nn.Conv2d(3, 8, 3, padding=1))
    model.add_module("relu", nn.ReLU())
    model.add_module("se", SqueezeExcite(8, 4))
    model.add_module("conv2", nn.Conv2d(8, 8, 3, padding=1))
    return _ready(model, seed)


# -- MobileNet-like depthwise blocks ----------------------------------------------------------------


class InvertedResidual(nn.Module):
    """Expand (1x1), depthwise 3x3 (maybe strided), project (1x1), as in MobileNetV2."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6())
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
        )
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.project(self.depthwise(self.expand(x)))
        return x + out if self.residual else out


def depthwise_net(seed: int = 0) -> nn.Module:
    """A stem, a residual depthwise block and a depthwise block of stride 2."""
    torch.manual_seed(seed)
    model = nn.Sequential()
    model.add_module(
        "stem", nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
    )
    model.add_module("block1", InvertedResidual(8, 8, stride=1))
    model.add_module("block2", InvertedResidual(8, 16, stride=2))
    return _ready(model, seed)


# -- an FCN-like head -------------------------------------------------------------------------------


def _subsampled_by_4(seed: int) -> nn.Sequential:
    """Two stride-2 3x3 convolutions (3 -> 8 -> 16 channels), each followed by a ReLU."""
    torch.manual_seed(seed)
    model = nn.Sequential()
    model.add_module("conv1", nn.Conv2d(3, 8, 3, stride=2, padding=1))
    model.add_module("relu1", nn.ReLU())
    model.add_module("conv2", nn.Conv2d(8, 16, 3, stride=2, padding=1))
    model.add_module("relu2", nn.ReLU())
    return model


def fcn_head(seed: int = 0) -> nn.Module:
    """Two stride-2 convolutions, a 1x1 classifier and a bilinear upsampling back to full resolution."""
    model = _subsampled_by_4(seed)
    model.add_module("classifier", nn.Conv2d(16, 4, 1))
    model.add_module("upsample", nn.Upsample(scale_factor=4, mode="bilinear", align_corners=False))
    return _ready(model, seed)


# -- a U-Net ----------------------------------------------------------------------------------------


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU()
    )


class UNet(nn.Module):
    """Two levels: max pooling down, a transposed convolution up, and a skip concatenated in ``forward``."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = _double_conv(3, 8)
        self.pool = nn.MaxPool2d(2)
        self.enc2 = _double_conv(8, 16)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.dec1 = _double_conv(16, 8)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.enc1(x)
        deep = self.enc2(self.pool(skip))
        result: torch.Tensor = self.out(self.dec1(torch.cat([self.up(deep), skip], dim=1)))
        return result


def unet(seed: int = 0) -> nn.Module:
    """A two-level U-Net."""
    torch.manual_seed(seed)
    return _ready(UNet(), seed)


# -- blur pooling -----------------------------------------------------------------------------------


class BlurPool(nn.Module):
    """A [1, 2, 1] x [1, 2, 1] blur, then subsampling by 2 (Zhang, ICML 2019), per channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        tap = torch.tensor([1.0, 2.0, 1.0])
        kernel = (tap[:, None] * tap[None, :]) / 16
        self.kernel: torch.Tensor
        self.register_buffer("kernel", kernel.expand(channels, 1, 3, 3).clone())
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1)), self.kernel, stride=2, groups=self.channels)


def blurpool_net(seed: int = 0) -> nn.Module:
    """A convolution, ReLU, max pooling of stride 1 and a BlurPool (max-blur-pool), a convolution."""
    torch.manual_seed(seed)
    model = nn.Sequential()
    model.add_module("conv1", nn.Conv2d(3, 8, 3, padding=1))
    model.add_module("relu", nn.ReLU())
    model.add_module("maxpool", nn.MaxPool2d(2, stride=1))
    model.add_module("blurpool", BlurPool(8))
    model.add_module("conv2", nn.Conv2d(8, 8, 3, padding=1))
    return _ready(model, seed)


# -- the cases whose diagnosis is subtle (issue 21) ------------------------------------------------


def patchify_depthwise(padding_mode: Literal["zeros", "circular"] = "zeros", seed: int = 0) -> nn.Module:
    """A 4x4 stride-4 patchify stem and a 7x7 depthwise convolution with padding 3, as in ConvNeXt.

    On a 24x24 input the depthwise convolution sees a 6x6 map, and its
    padding reaches 3 samples in from each edge: every sample of the map.
    With ``padding_mode="circular"`` it is equivariant under circular shifts.
    """
    torch.manual_seed(seed)
    model = nn.Sequential()
    model.add_module("stem", nn.Conv2d(3, 8, 4, stride=4))
    model.add_module("dwconv", nn.Conv2d(8, 8, 7, padding=3, groups=8, padding_mode=padding_mode))
    return _ready(model, seed)


class ScaledBranch(nn.Module):
    """LRASPP's head: a 1x1 convolution, gated by a branch that pools the whole map (global average
    pooling, a 1x1 convolution, a sigmoid)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.cbr = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())
        self.scale = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.cbr(x) * self.scale(x)
        return result


def lraspp_head(seed: int = 0) -> nn.Module:
    """Two stride-2 convolutions, LRASPP's gated head, a classifier and upsampling back by 4."""
    model = _subsampled_by_4(seed)
    model.add_module("head", ScaledBranch(16, 8))
    model.add_module("classifier", nn.Conv2d(8, 4, 1))
    model.add_module("upsample", nn.Upsample(scale_factor=4, mode="bilinear", align_corners=False))
    return _ready(model, seed)


def circular_resnet_stem(seed: int = 0) -> nn.Module:
    """ResNet's stem and a block with every convolution padded circularly; the stem's
    ``MaxPool2d(3, 2, padding=1)`` still pads (with -inf), as in torchvision's ResNet."""
    torch.manual_seed(seed)
    model = nn.Sequential()
    model.add_module("stem", nn.Conv2d(3, 8, 3, 1, 1, bias=False, padding_mode="circular"))
    model.add_module("bn", nn.BatchNorm2d(8))
    model.add_module("relu", nn.ReLU())
    model.add_module("maxpool", nn.MaxPool2d(3, 2, padding=1))
    block = BasicBlock(8, 8)
    for conv in (block.conv1, block.conv2):
        conv.padding_mode = "circular"
    model.add_module("layer1", block)
    return _ready(model, seed)


def resnet_classifier(seed: int = 0) -> nn.Module:
    """The ResNet stage with global average pooling and a linear classifier, as ResNet-18 ends."""
    model = resnet_stage(seed=seed)
    model.add_module("avgpool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flatten", nn.Flatten(1))
    model.add_module("fc", nn.Linear(16, 10))
    return _ready(model, seed)


GALLERY: dict[str, Callable[..., nn.Module]] = {
    "ResNet stage": resnet_stage,
    "ConvNeXt stage": convnext_stage,
    "ViT": vit,
    "squeeze-excite": squeeze_excite_net,
    "MobileNet blocks": depthwise_net,
    "FCN head": fcn_head,
    "U-Net": unet,
    "blur pooling": blurpool_net,
    "patchify and a 7x7 depthwise convolution": patchify_depthwise,
    "a global-pool branch (LRASPP)": lraspp_head,
    "circular ResNet stem": circular_resnet_stem,
    "ResNet classifier": resnet_classifier,
    "ViT without a position embedding": vit_without_positions,
}
"""The gallery's models by name, each a builder taking a ``seed``."""


@dataclass(frozen=True)
class Case:
    """How the docs page profiles and checks a gallery model, and what the result shows.

    The inputs and the check are Python expressions, shown on the page as
    they are and evaluated (by ``run``) with ``model``, ``canvas``, ``image``,
    ``check_equivariance``, ``check_invariance``, ``multiples_of`` and
    ``Tokens`` in scope.

    Attributes:
        inputs: the batch the model is profiled on, e.g. ``"canvas()"``.
        shift: the input shift of the profile.
        check: the check, e.g. ``'check_equivariance(model, canvas(), stride="auto")'``.
        about: what the profile shows, and why (the page's prose).
        boundary: the boundary of the profile.
    """

    inputs: str
    shift: tuple[int, ...]
    check: str
    about: str
    boundary: str = "zeros"

    def run(self, model: nn.Module) -> tuple[EquivarianceProfile, EquivarianceReport]:
        """The profile and the check of ``model``."""
        scope = {
            "model": model,
            "canvas": canvas,
            "image": image,
            "check_equivariance": check_equivariance,
            "check_invariance": check_invariance,
            "multiples_of": multiples_of,
            "Tokens": Tokens,
        }
        x = eval(self.inputs, scope)  # the gallery's own expressions
        report = eval(self.check, scope)
        return profile_equivariance(model, x, self.shift, boundary=self.boundary), report  # type: ignore[arg-type]


def image(seed: int = 0, size: int = 32) -> torch.Tensor:
    """Two random ``size`` x ``size`` images (no canvas: their content reaches the edges)."""
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


CASES: dict[str, Case] = {
    "ResNet stage": Case(
        "canvas()",
        (1, 0),
        'check_equivariance(model, canvas(), stride="auto", margin="auto")',
        "The stem and the first block keep the resolution and follow a one-sample shift exactly; the "
        "block that subsamples by 2 is where the shift stops being followed, in its strided shortcut "
        "(which runs first) and its strided convolution alike. Shifts by multiples of 2 pass.",
    ),
    "ConvNeXt stage": Case(
        "canvas(size=128, content=64)",
        (4, 0),
        'check_equivariance(model, canvas(size=128, content=64), stride="auto", margin="auto")',
        "Inside each block the map is channels last (a Permute, a LayerNorm and an MLP on the last "
        "dim, a Permute back): the profile follows the layout through the permutations and compares "
        "every layer on its grid, at stride 4 after the patchify stem. A shift of 4 passes the stem "
        "and the first stage; the downsampling layer (stride 8 in all) is the first it cannot follow.",
    ),
    "ViT": Case(
        "canvas()",
        (16, 0),
        'check_equivariance(model, canvas(), multiples_of(16, 16), layer="patch_embed", stride="auto")',
        "The patch embedding (a 16x16 convolution of stride 16) follows shifts by whole patches. The "
        "break comes right after it, in forward code: the class token is prepended and a learned "
        "position embedding is added as a parameter, not in a submodule. The profile gives that tensor "
        "a row of its own, reads it as tokens on the 4x4 grid after one prefix token, and names the "
        "parameter with a value for every position.",
    ),
    "squeeze-excite": Case(
        "image()",
        (1, 0),
        "check_equivariance(model, canvas(), margin=2)",
        "On a whole image, a zero-boundary shift fills in a row of zeros: the edges break first "
        "(borders), and the squeeze-excite block's global average changes with them. Its rows are "
        "global pooling, not aliasing: a global statistic is unchanged by a shift only while the "
        "content stays inside the canvas, which is why the check on a zero canvas passes.",
    ),
    "MobileNet blocks": Case(
        "canvas()",
        (1, 0),
        'check_equivariance(model, canvas(), stride="auto", margin="auto")',
        "Depthwise and pointwise convolutions keep the symmetry; the depthwise convolution of stride 2 "
        "is the first layer that cannot follow a one-sample shift.",
    ),
    "FCN head": Case(
        "canvas()",
        (1, 0),
        'check_equivariance(model, canvas(), stride="auto")',
        "The output is at full resolution, but the model subsamples by 4 inside and upsamples back: "
        "no input shift moves the output cleanly by one sample, so stride='auto' takes the size ratio "
        "(1) and says the check will fail. The upsampling layer's row is aliasing carried from the "
        "first strided layer, not a layer without symmetry.",
    ),
    "U-Net": Case(
        "canvas()",
        (1, 0),
        'check_equivariance(model, canvas(), stride="auto", margin="auto")',
        "The encoder's convolutions have biases, so the zero canvas becomes a constant map whose edges "
        "meet the zero padding: a boundary effect comes first. The pooling aliases odd shifts, and the "
        "decoder's transposed convolution cannot undo it: its row is aliasing from the pooling. The "
        "check follows even shifts only.",
    ),
    "blur pooling": Case(
        "canvas()",
        (1, 0),
        'check_equivariance(model, canvas(), stride="auto", margin="auto")',
        "Max pooling of stride 1, then a 3x3 blur before subsampling by 2 (Zhang, ICML 2019): the blur "
        "lowers the error of an odd shift but cannot remove it, and the fix says so instead of "
        "suggesting the anti-aliasing that is already there. It also says by how much: the profile "
        "compares the BlurPool's input subsampled without the blur too, whose error is about twice "
        "as large.",
    ),
    "patchify and a 7x7 depthwise convolution": Case(
        "image(size=24)",
        (4, 0),
        "check_equivariance(model, image(size=24), stride=4)",
        "On a 24x24 image the patchify stem leaves a 6x6 map, and the depthwise convolution's zero "
        "padding reaches 3 samples in from each edge: every compared sample is within the borders' "
        "reach. The error is everywhere, yet it is the borders', not a layer without symmetry, and both "
        "the profile and the check say so: the same model with padding_mode='circular' passes under "
        "boundary='circular'. On maps more than twice the reach the error keeps to the borders.",
    ),
    "a global-pool branch (LRASPP)": Case(
        "image()",
        (4, 0),
        "check_equivariance(model, image())",
        "LRASPP's head multiplies its map by a branch that pools the whole map. A shift of whole images "
        "changes that pooled value (content leaves and enters): the branch's rows are global pooling, "
        "not aliasing. The default check's one- and two-sample shifts also meet the stride-4 backbone "
        "that was upsampled back, which the hint names first, then the pooled value the shift changed "
        "(not a dense layer). Here the gate moves the map it multiplies by less than the tolerance away "
        "from the borders, and the profile measures the borders as the cause of the rows after it; "
        "where a gate moves more (the squeeze-excite block under a shift of 4), those rows are global "
        "pooling too.",
    ),
    "circular ResNet stem": Case(
        "image()",
        (2, 0),
        'check_equivariance(model, image(), stride=2, boundary="circular")',
        "Every convolution pads circularly, but the stem's MaxPool2d(3, 2, padding=1) pads with -inf, as "
        "in torchvision's ResNet: under boundary='circular' it is where the shift stops being followed, "
        "and the profile and the check both name it, with the fix (pad circularly before it, padding=0) "
        "rather than circular padding the convolutions already have.",
        boundary="circular",
    ),
    "ResNet classifier": Case(
        "canvas()",
        (1, 0),
        "check_invariance(model, canvas())",
        "The ResNet stage with global average pooling and a linear classifier. Checked for invariance, "
        "it fails at the odd shifts only: the stride-2 block subsamples before the pooling, so the "
        "hint names the stride, not a missing global pooling (the model has one). The profile shows the "
        "same stride at the block that subsamples.",
    ),
    "ViT without a position embedding": Case(
        "image(size=64)",
        (16, 0),
        'check_equivariance(model, image(size=64), multiples_of(16, 16), layer="blocks", stride=16,\n'
        "                   layout=Tokens((4, 4), prefix=1))",
        "Without a position embedding self-attention treats the tokens as a set, so circular shifts by "
        "whole patches permute them. Under boundary='zeros', on images whose content reaches the edges, "
        "a shift replaces the tokens at one edge, and attention carries the change to every token: the "
        "profile and the check name attention under the zeros boundary, not a position embedding (it "
        "has none). With boundary='circular' the check passes.",
    ),
}
"""The docs page's profiles and checks of the gallery models."""


if __name__ == "__main__":
    for name, build in GALLERY.items():
        profile, report = CASES[name].run(build())
        print(f"# {name}\n{profile}\n\n{report}\n")
