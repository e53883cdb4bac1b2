"""Layouts: channels first, channels last and tokens, in checks and inferred by the profile."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from equivariance import InvalidArgument, check_equivariance, equivariance_error, profile_equivariance
from equivariance.layouts import ChannelsFirst, ChannelsLast, Tokens, as_layout, other_readings


class Permute(nn.Module):
    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


def convnext_like() -> nn.Sequential:
    """A circular conv, then a channels-last block as in ConvNeXt: Permute, LayerNorm, Linear, Permute back."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, padding_mode="circular"),
        Permute(0, 2, 3, 1),
        nn.LayerNorm(6),
        nn.Linear(6, 6),
        Permute(0, 3, 1, 2),
    )


class PatchTokens(nn.Module):
    """A ViT's front: a patch embedding of stride 4, flattened to tokens after a class token."""

    def __init__(self, position: bool = False) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.position = nn.Parameter(torch.randn(1, 17, 8)) if position else None
        self.norm = nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(tokens), -1, -1), tokens], dim=1)
        if self.position is not None:
            tokens = tokens + self.position
        out: torch.Tensor = self.norm(tokens)
        return out


def test_views_as_a_grid() -> None:
    y = torch.randn(2, 5, 4, 3)
    assert torch.equal(ChannelsLast().to_grid(y, 2), y.permute(0, 3, 1, 2))
    tokens = torch.randn(2, 1 + 12, 8)
    grid = Tokens((3, 4), prefix=1).to_grid(tokens, 2)
    assert grid.shape == (2, 8, 3, 4)
    assert torch.equal(grid[:, :, 1, 2], tokens[:, 1 + 4 + 2])  # row-major after the prefix
    assert ChannelsFirst().spatial_shape((2, 8, 3, 4), 2) == (3, 4)
    assert Tokens((3, 4)).spatial_shape((2, 13, 8), 2) is None  # a prefix token too many


def test_names_and_errors() -> None:
    assert as_layout("channels_last") == ChannelsLast()
    assert as_layout(Tokens((2, 2), prefix=1)) == Tokens((2, 2), prefix=1)
    with pytest.raises(InvalidArgument, match=r"layout must be 'channels_first', 'channels_last', 'tokens'"):
        as_layout("NHWC")
    with pytest.raises(
        InvalidArgument, match=r"grid must be a tuple of positive sizes.*Tokens\(\(14, 14\), prefix=1\)"
    ):
        Tokens(14)  # type: ignore[arg-type]
    with pytest.raises(
        InvalidArgument, match=r"no grids of the input's size \(16, 16\) .* hold the 15 tokens"
    ):
        Tokens(prefix=1).resolved((2, 16, 8), (16, 16))
    assert other_readings((2, 12, 12, 6), (12, 12)) == [ChannelsLast()]
    assert other_readings((2, 6, 12, 12), (12, 12)) == []


def test_a_channels_last_block_passes_as_a_whole_and_layer_by_layer() -> None:
    net, x = convnext_like(), torch.randn(2, 3, 12, 12)
    assert check_equivariance(net, x, boundary="circular").passed
    profile = profile_equivariance(net, x, (1, 2), boundary="circular")
    assert profile.passed
    assert [layer.layout for layer in profile.layers] == [
        "channels_first", "channels_last", "channels_last", "channels_last", "channels_first",
    ]  # fmt: skip
    assert all(layer.stride == (1, 1) for layer in profile.layers)
    assert "a permuted view of its input" in str(profile)
    # the LayerNorm's output is channels last: a check reading it as channels first fails, and says why
    wrong = check_equivariance(net, x, boundary="circular", layer="2")
    assert not wrong.passed
    assert any("reads as channels last" in h and "layout='channels_last'" in h for h in wrong.hints)
    right = check_equivariance(net, x, boundary="circular", layer="2", layout="channels_last")
    assert right.passed
    assert right.layout == "channels_last"
    assert "layout channels_last" in str(right)


class AddPosition(nn.Module):
    """A learned position embedding on a channels-last map: it does not move with the content."""

    def __init__(self, size: int, channels: int) -> None:
        super().__init__()
        self.position = nn.Parameter(torch.randn(1, size, size, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.position


def test_a_channels_last_layer_without_symmetry_is_named() -> None:
    net, x = convnext_like(), torch.randn(2, 3, 12, 12)
    positioned = nn.Sequential(net[0], net[1], net[2], AddPosition(12, 6), net[3], net[4])
    profile = profile_equivariance(positioned, x, (1, 2), boundary="circular")
    first = profile.first_failure
    assert first is not None
    assert (first.name, first.layout, first.cause) == ("3", "channels_last", "absolute positions")
    assert first.fix is not None
    assert "the parameter 3.position of shape" in first.fix
    assert [layer.passed for layer in profile.layers] == [True, True, True, False, False, False]


def test_tokens_after_a_class_token() -> None:
    model, x = PatchTokens(), torch.randn(2, 3, 16, 16)
    report = check_equivariance(model, x, stride=4, boundary="circular", layout=Tokens(prefix=1))
    assert report.passed
    assert any("4x4 grid after 1 prefix token" in note for note in report.inferred)
    assert (
        float(equivariance_error(model, x, (4, -8), stride=4, boundary="circular", layout=Tokens((4, 4), 1)))
        < 1e-5
    )
    profile = profile_equivariance(model, x, (4, 0), boundary="circular")
    assert profile.passed
    assert profile["norm"].layout == "tokens"
    assert profile["norm"].stride == (4, 4)
    # negative control: a learned position embedding added to the tokens does not move with them
    positioned = PatchTokens(position=True)
    assert not check_equivariance(
        positioned, x, stride=4, boundary="circular", layout=Tokens(prefix=1)
    ).passed


def test_an_output_that_is_not_in_the_layout_is_refused() -> None:
    net, x = convnext_like(), torch.randn(2, 3, 12, 12)
    with pytest.raises(InvalidArgument, match=r"the output of shape \(2, 6, 12, 12\) is not tokens"):
        check_equivariance(net, x, layout=Tokens((12, 12)))
    with pytest.raises(
        InvalidArgument,
        match=r"has no channel dim and 2 spatial dims .* layout=Tokens\(grid, prefix=\.\.\.\)",
    ):
        check_equivariance(PatchTokens(), torch.randn(2, 3, 16, 16), stride=4)


def test_an_ambiguous_layout_is_not_compared_and_can_be_named() -> None:
    # 6 channels on a 6x6 map: after a Permute that copies, (N, 6, 6, 6) reads either way
    class CopyingPermute(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.permute(0, 2, 3, 1).contiguous() * 1.0

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, padding_mode="circular"), CopyingPermute(), nn.LayerNorm(6)
    )
    x = torch.randn(2, 3, 6, 6)
    profile = profile_equivariance(net, x, (1, 2), boundary="circular")
    assert [layer.compared for layer in profile.layers] == [True, False, False]
    assert "layouts={'1': 'channels_first'}" in str(profile) or "layouts={'1'" in str(profile)
    named = profile_equivariance(net, x, (1, 2), boundary="circular", layouts={"1": "channels_last"})
    assert [layer.compared for layer in named.layers] == [True, True, True]
    assert named.passed
    assert named["2"].layout == "channels_last"
    with pytest.raises(InvalidArgument, match=r"Sequential has no layer named 'nope'"):
        profile_equivariance(net, x, (1, 2), layouts={"nope": "channels_last"})


def test_a_token_layout_without_a_prefix_takes_the_fewest_prefix_tokens_that_leave_a_grid() -> None:
    assert Tokens().resolved((2, 17, 16), (64, 64)) == Tokens((4, 4), prefix=1)
    assert Tokens().resolved((2, 16, 16), (64, 64)) == Tokens((4, 4))  # no prefix needed
    assert Tokens(prefix=2).resolved((2, 18, 16), (64, 64)) == Tokens((4, 4), prefix=2)
    with pytest.raises(InvalidArgument, match=r"no grids of the input's size \(64, 64\).* after 2 prefix"):
        Tokens(prefix=2).resolved((2, 17, 16), (64, 64))  # a prefix given is not second-guessed


@pytest.mark.parametrize(
    ("spatial", "stride", "most"),
    [((6, 6), (1, 1), (7, 7)), ((8, 7), (2, 2), (5, 4)), ((9, 8), (3, 1), (4, 9))],
)
def test_a_token_grid_may_have_one_more_position_than_the_stride_leaves(
    spatial: tuple[int, int], stride: tuple[int, int], most: tuple[int, int]
) -> None:
    """``n // s + 1`` positions per dim, what a kernel padded by half its width makes (a 2x2
    convolution padded by 1 takes 6 samples to 7), are accepted; one more in either dim is not."""
    Tokens(most).check_grid(spatial, stride, "layout=")
    for dim in range(2):
        over = tuple(m + (i == dim) for i, m in enumerate(most))
        with pytest.raises(
            InvalidArgument,
            match=rf"puts the {over[0] * over[1]} tokens on a {over[0]}x{over[1]} grid, but .*at most {most[0]}x{most[1]}",
        ):
            Tokens(over).check_grid(spatial, stride, "layout=")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"stride": 2, "boundary": "circular"},
            r"layout=Tokens\(\(2, 8\), prefix=1\) puts the 16 tokens after the prefix on a 2x8 grid, but the "
            r"input's 8x8 grid subsampled by the stride \(2, 2\) has 4x4 positions \(at most 5x5 with a kernel padded "
            r"by half its width\); pass the grid "
            r"the patches make, Tokens\(\(4, 4\), prefix=1\), or Tokens\(prefix=1\) to infer it",
        ),
        (
            {"stride": 2},
            r"at most 5x5 with a kernel padded by half its width\); pass the grid the patches make, "
            r"Tokens\(\(4, 4\), prefix=1\)",
        ),
        (
            {"stride": "auto"},
            r"on a 2x8 grid, but no one patch size makes it from the input's 8x8 \(it takes strides \(4, 1\)\);"
            r" pass the grid the patches make, Tokens\(\(4, 4\), prefix=1\), or Tokens\(prefix=1\) to infer "
            r"it from the input's size, or stride=\(4, 1\) if the patches have that shape",
        ),
    ],
    ids=["circular", "zeros", "auto"],
)
def test_a_token_grid_the_input_cannot_make_is_refused(options: dict[str, object], message: str) -> None:
    """Issue 21, item 9: 16 tokens of a 4x4 patch grid (8x8 input, patches of 2) read as 2x8 is an
    argument error, not a FAILED verdict with a hint about the boundary."""
    model = PatchTokens()
    model.embed = nn.Conv2d(3, 8, 2, stride=2)
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(InvalidArgument, match=message):
        check_equivariance(model, x, [(0, 2)], layout=Tokens((2, 8), prefix=1), **options)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=r"layouts\['norm'\]=Tokens\(\(2, 8\), prefix=1\) puts"):
        profile_equivariance(model, x, (0, 2), layouts={"norm": Tokens((2, 8), prefix=1)})
    right = check_equivariance(
        model, x, [(0, 2)], layout=Tokens((4, 4), prefix=1), stride=2, boundary="circular"
    )
    assert right.passed
    anisotropic = Tokens((2, 8), prefix=1)  # patches 4x1, said so with the stride: accepted
    anisotropic.check_grid((8, 8), (4, 1), "layout=")
