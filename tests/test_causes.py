"""One vocabulary of causes: the check's hints and the profile's causes say the same, and each cause's
rule holds at its edge (a border exactly at the margin, the keep fraction at its limit, a position
embedding that differs at one position), with a negative control beside it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from equivariance import check_equivariance, profile_equivariance
from equivariance._engine import causes


def explanation(cause: object, *args: object) -> str:
    """The part of a cause's sentence that follows its lead: what both sides must share."""
    return str(cause("<lead>", *args)).split("<lead>", 1)[1]  # type: ignore[operator]


class AddPositions(nn.Module):
    """Adds a parameter with a value for every position of its input map."""

    def __init__(self, embedding: torch.Tensor) -> None:
        super().__init__()
        self.embedding = nn.Parameter(embedding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.embedding


def positioned(embedding: torch.Tensor) -> nn.Sequential:
    conv = nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular", dtype=torch.float64)
    return nn.Sequential(conv, AddPositions(embedding))


def test_a_position_embedding_gets_one_sentence_from_the_check_and_the_profile() -> None:
    model, x = positioned(torch.randn(4, 16, 16, dtype=torch.float64)), torch.randn(2, 1, 16, 16).double()
    report = check_equivariance(model, x, max_shift=1, boundary="circular")
    profile = profile_equivariance(model, x, (0, 1), boundary="circular")
    first = profile.first_failure
    assert first is not None
    assert (first.name, first.cause) == ("1", causes.ABSOLUTE_POSITIONS)
    assert report.hints[0] == first.fix == causes.positions("1.embedding", (4, 16, 16))


def test_a_position_embedding_that_differs_at_one_position_is_named_and_a_constant_one_is_a_bias() -> None:
    x = torch.randn(2, 1, 16, 16).double()
    bump = torch.zeros(4, 16, 16, dtype=torch.float64)
    bump[:, 8, 8] = 1.0  # the edge: one position of 256 differs
    first = profile_equivariance(positioned(bump), x, (0, 1), boundary="circular").first_failure
    assert first is not None
    assert first.cause == causes.ABSOLUTE_POSITIONS
    assert first.border is None  # not within any margin of the borders: the bump is at the centre
    # negative control: constant over positions, a bias per channel, which moves with nothing
    constant = torch.arange(4, dtype=torch.float64)[:, None, None].expand(4, 16, 16).clone()
    assert profile_equivariance(positioned(constant), x, (0, 1), boundary="circular").passed
    assert check_equivariance(positioned(constant), x, max_shift=1, boundary="circular").passed


def same_padded(layers: int = 2) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Conv2d(1, 1, 3, padding=1, bias=False) for _ in range(layers)]).double()


def test_a_border_exactly_at_the_margin_passes_and_one_sample_less_fails() -> None:
    model, x = same_padded(), torch.rand(2, 1, 12, 12, dtype=torch.float64)
    profile = profile_equivariance(model, x, (1, 0))
    assert [(layer.cause, layer.border) for layer in profile.layers] == [("borders", 1), ("borders", 2)]
    assert "pass margin=2 (or margin='auto')" in (profile["1"].fix or "")
    report = check_equivariance(model, x, [(1, 0)])
    assert "pass margin=2 (or margin='auto')" in report.hints[0]
    assert check_equivariance(model, x, [(1, 0)], margin=2).passed  # exactly the border
    assert not check_equivariance(model, x, [(1, 0)], margin=1).passed  # one sample short


def test_the_profile_says_how_little_a_margin_keeps_only_below_the_keep_fraction() -> None:
    model = same_padded()
    # a shift of (1, 0) leaves 8 x 8 of a 9 x 8 map: a margin of 2 keeps 4 x 4, exactly a quarter
    at_limit = profile_equivariance(model, torch.rand(2, 1, 9, 8, dtype=torch.float64), (1, 0))["1"]
    assert at_limit.border == 2
    assert "keeps only" not in (at_limit.fix or "")
    # 8 x 7 left of 9 x 7: 4 x 3 kept, 21%, below the quarter
    below = profile_equivariance(model, torch.rand(2, 1, 9, 7, dtype=torch.float64), (1, 0))["1"]
    assert below.border == 2
    assert causes.keeps_little(2, 12 / 56) in (below.fix or "")
    assert causes.kept_share((8, 8), 2) == 0.25
    assert causes.kept_share((3, 8), 2) == 0.0  # a margin that keeps nothing of a side keeps nothing


def test_a_map_brought_back_from_a_stride_is_one_cause_for_the_check_and_the_profile() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 2, stride=2), nn.ReLU(), nn.Upsample(scale_factor=2))
    x = torch.randn(2, 1, 24, 24)
    (hint,) = check_equivariance(model, x, max_shift=2).hints
    profile = profile_equivariance(model, x, (1, 0))
    assert profile["2"].cause == causes.ALIASING
    shared = explanation(causes.brought_back, 2)
    assert hint.endswith(shared)
    assert profile["2"].fix is not None
    assert shared in profile["2"].fix
    # negative control: multiples of the stride pass both ways
    assert check_equivariance(model, x, [(2, 0), (0, -2)]).passed
    assert profile_equivariance(model, x, (2, 0)).passed


def test_a_dense_layer_on_a_map_is_no_symmetry_in_both_words() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular"), nn.Flatten(), nn.Linear(128, 128),
        nn.Unflatten(1, (2, 8, 8)),
    )  # fmt: skip
    x = torch.randn(2, 1, 8, 8)
    report = check_equivariance(model, x, max_shift=1, boundary="circular")
    profile = profile_equivariance(model, x, (0, 1), boundary="circular")
    assert [layer.cause for layer in profile.layers] == [
        None,
        "spatial dims gone",
        "spatial dims gone",
        "no symmetry",
    ]
    assert causes.NOT_TRANSLATION_EQUIVARIANT in report.hints[-1]
    assert causes.NOT_TRANSLATION_EQUIVARIANT in (profile["3"].fix or "")


def test_a_global_pooling_that_gates_the_map_is_one_sentence_for_both() -> None:
    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Conv2d(4, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.conv(x)
            return h * torch.sigmoid(self.fc(self.pool(h)))

    torch.manual_seed(0)
    model, x = Gate(), torch.rand(2, 1, 12, 12)  # content up to the edges: a shift drops some of it
    report = check_equivariance(model, x, max_shift=2)
    profile = profile_equivariance(model, x, (2, 0))
    shared = explanation(causes.global_pooling)
    assert any(hint.startswith("pool pools the whole map") and hint.endswith(shared) for hint in report.hints)
    assert profile["pool"].cause == causes.GLOBAL_POOLING
    assert (profile["pool"].fix or "").endswith(shared)
    # negative control: content inside a zero canvas larger than the shifts leaves the average alone
    inside = torch.zeros(2, 1, 24, 24)
    inside[..., 8:16, 8:16] = torch.rand(2, 1, 8, 8)
    assert profile_equivariance(model, inside, (2, 0))["pool"].passed


@pytest.mark.parametrize("boundary", ["zeros", "circular"])
def test_the_borders_fix_offers_circular_padding_only_where_the_boundary_is_zeros(boundary: str) -> None:
    text = causes.borders(2, (2, 2), boundary)
    assert text.startswith("errors only within 2 samples of the borders of the compared region")
    assert ("boundary='circular'" in text) == (boundary == "zeros")


def test_errors_within_the_borders_reach_name_the_fix_once() -> None:
    """A stride-8 trunk whose zero padding reaches every compared sample, and whose error passes beyond
    a few samples of the borders: the hint explains both and gives the fix once, not twice."""
    from _resnet import ResNet18

    torch.manual_seed(0)
    m = ResNet18().eval()
    trunk = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2)
    x = torch.zeros(2, 3, 96, 96)
    x[..., 24:72, 24:72] = torch.rand(2, 3, 48, 48)
    report = check_equivariance(trunk, x, max_shift=8, stride=8)
    (hint,) = [h for h in report.hints if "every sample passes" in h]
    assert "reaches 8 samples in from each edge of this map at stride 8" in hint
    assert hint.count("use circular padding with boundary='circular'") == 1


def test_a_fractional_stride_reads_as_a_fraction_and_the_fix_tests_multiples_of_its_numerator() -> None:
    """Subsampled by 3 and upsampled by 2, a map at stride 3/2 follows the multiples of 3 only."""
    circular = {"padding": 1, "padding_mode": "circular"}
    aliased = nn.Sequential(nn.Conv2d(1, 2, 3, stride=3, **circular), nn.Upsample(scale_factor=2))
    x = torch.randn(2, 1, 12, 12)
    fix = profile_equivariance(aliased, x, (1, 0), boundary="circular")["1"].fix
    assert fix is not None
    assert "stride 3/2: a map subsampled by 3/2" in fix
    assert "1.5" not in fix
    assert "test multiples of 3 (multiples_of(3, max_shift=...))" in fix
    assert profile_equivariance(aliased, x, (3, 0), boundary="circular").passed  # the fix is right
    assert causes.multiples((2 / 3, 1.5)) == "test multiples of (2, 3) (multiples_of((2, 3), max_shift=...))"
    assert causes.multiples(2) == "test multiples of 2 (multiples_of(2, max_shift=...))"
