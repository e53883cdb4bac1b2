"""consistency, prediction_change, logit_change: the literature's invariance metrics of classifiers."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from equivariance import EquivarianceWarning, InvalidArgument
from equivariance.invariance import (
    clustered_normal_interval,
    clustered_wilson_interval,
    consistency,
    logit_change,
    prediction_change,
    wilson_interval,
)


class DenseMax(nn.Module):
    """Max pooling of size 2 at stride 1, circularly padded: the dense part of a max pool."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.pad(x, (0, 1, 0, 1), mode="circular"), 2, stride=1)


class BlurSubsample(nn.Module):
    """A [1, 2, 1] x [1, 2, 1] / 16 blur, then subsampling by 2 (Zhang 2019's BlurPool)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("kernel", (k[:, None] * k[None] / 16).expand(channels, 1, 3, 3).clone())
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, (1, 1, 1, 1), mode="circular")
        return F.conv2d(padded, self.kernel, stride=2, groups=self.channels)  # type: ignore[arg-type]


def calibrated(net: nn.Sequential, x: torch.Tensor) -> nn.Sequential:
    """Estimate the BatchNorm statistics of the pooled features on ``x``, so predictions spread over classes."""
    norm = net[-2]
    assert isinstance(norm, nn.BatchNorm1d)
    norm.momentum = None
    net.train()
    with torch.no_grad():
        net(x)
    return net.eval()


def max_pool_and_blur_pool(x: torch.Tensor) -> tuple[nn.Sequential, nn.Sequential]:
    """One circular CNN, with max pooling and with max-blur pooling: the same convolution and head weights."""
    torch.manual_seed(0)
    c1 = nn.Conv2d(1, 8, 3, padding=1, padding_mode="circular")
    c2 = nn.Conv2d(8, 16, 3, padding=1, padding_mode="circular")
    head = nn.Linear(16, 10, bias=False)

    def tail() -> list[nn.Module]:
        return [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(16, affine=False), head]

    plain = nn.Sequential(c1, nn.ReLU(), nn.MaxPool2d(2), c2, nn.ReLU(), nn.MaxPool2d(2), *tail())
    blur = nn.Sequential(
        c1, nn.ReLU(), DenseMax(), BlurSubsample(8), c2, nn.ReLU(), DenseMax(), BlurSubsample(16), *tail()
    )
    return calibrated(plain, x), calibrated(blur, x)


def circular_gap(x: torch.Tensor) -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, padding_mode="circular"), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, padding_mode="circular"), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(16, affine=False), nn.Linear(16, 10, bias=False),
    )  # fmt: skip
    return calibrated(net, x)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(200, 1, 32, 32, generator=torch.Generator().manual_seed(1))


def test_a_circular_cnn_with_global_average_pooling_is_exactly_consistent(images: torch.Tensor) -> None:
    net = circular_gap(images)
    with torch.no_grad():
        classes = int(net(images).argmax(1).unique().numel())
    assert classes >= 8  # the predictions are spread over the classes: 1.0 is not a constant classifier
    result = consistency(net, images, pairs=2)
    assert (result.value, result.n, result.samples) == (1.0, 400, 200)
    # the 200 samples are the independent units: the interval of 200 agreements, not of 400
    assert result.low == pytest.approx(0.9812, abs=1e-4)
    assert (result.low, result.high) == wilson_interval(200, 200)
    assert prediction_change(net, images).value == 0.0
    assert logit_change(net, images).value < 1e-5


def test_blur_pooling_is_more_consistent_than_max_pooling(images: torch.Tensor) -> None:
    plain, blur = max_pool_and_blur_pool(images)
    plain_result, blur_result = consistency(plain, images, pairs=2), consistency(blur, images, pairs=2)
    # The numbers quoted in docs/diagnosing.md (0.3775 and 0.7475, prediction change 0.711 and 0.298,
    # torch 2.13 on a CPU); other kernels may flip a few near-tied predictions, hence the slack.
    assert plain_result.value == pytest.approx(0.3775, abs=0.02)
    assert blur_result.value == pytest.approx(0.7475, abs=0.02)
    assert plain_result.high < blur_result.low  # the 95% intervals do not overlap
    assert prediction_change(plain, images).value == pytest.approx(0.71125, abs=0.02)
    assert prediction_change(blur, images).value == pytest.approx(0.2975, abs=0.02)
    assert logit_change(blur, images).value < logit_change(plain, images).value


def test_a_dense_classifier_is_inconsistent() -> None:
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x = torch.randn(100, 1, 8, 8)
    assert consistency(dense, x).value < 0.5
    assert prediction_change(dense, x).value > 0.5
    assert logit_change(dense, x).value > 0.5


def test_the_callers_rng_is_untouched_and_results_reproduce() -> None:
    dense = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x = torch.randn(30, 1, 8, 8)
    state = torch.get_rng_state()
    first = consistency(dense, x, pairs=3, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert consistency(dense, x, pairs=3, seed=7) == first
    assert logit_change(dense, x, repeats=2, seed=7) == logit_change(dense, x, repeats=2, seed=7)


def test_batching_does_not_change_the_result() -> None:
    dense = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x = torch.randn(30, 1, 8, 8)
    assert consistency(dense, x, pairs=2, batch_size=7) == consistency(dense, x, pairs=2)


def test_a_batch_that_runs_out_of_cuda_memory_is_halved_and_retried() -> None:
    dense = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    seen: list[int] = []

    def small_gpu(t: torch.Tensor) -> torch.Tensor:
        seen.append(len(t))
        if len(t) > 8:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (fake: batch {len(t)} > 8)")
        out: torch.Tensor = dense(t)
        return out

    x = torch.randn(30, 1, 8, 8)
    assert consistency(small_gpu, x, pairs=2, batch_size=40) == consistency(dense, x, pairs=2)
    assert seen[:3] == [40, 20, 10]
    assert max(seen[3:]) <= 8

    def no_memory(t: torch.Tensor) -> torch.Tensor:
        seen.append(len(t))
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (fake: always)")

    seen.clear()
    with pytest.raises(torch.cuda.OutOfMemoryError):  # down to one sample, then it is the user's
        logit_change(no_memory, x, batch_size=4)
    assert seen == [4, 2, 1]


def test_wilson_interval() -> None:
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    low, high = wilson_interval(10, 10)
    assert (round(low, 4), high) == (0.7225, 1.0)


def test_the_result_prints_and_serializes() -> None:
    dense = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    result = prediction_change(dense, torch.randn(10, 1, 8, 8))
    assert result.n == 40
    assert str(result).startswith(f"prediction_change {result.value:.4f} (95% CI ")
    assert (
        "wilson, clustered by sample; n=40 over 10 samples; 10 distinct predictions; every one-pixel shift, "
        "boundary circular" in str(result)
    )
    assert json.loads(json.dumps(result.to_dict()))["interval"] == "wilson, clustered by sample"
    assert json.loads(json.dumps(logit_change(dense, torch.randn(10, 1, 8, 8)).to_dict()))["samples"] == 10


def test_the_extreme_seeds_torch_takes_are_accepted() -> None:
    dense = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x = torch.randn(4, 1, 8, 8)
    assert consistency(dense, x, seed=2**64 - 1).n == 4
    assert logit_change(dense, x, seed=-(2**63)).n == 4


def test_prediction_change_takes_the_zero_boundary_without_max_shift() -> None:
    # content on a zero canvas, a zero-padded CNN with global max pooling: a one-pixel shift moves the
    # content and nothing else, so no prediction changes; a dense head on the same inputs does change
    torch.manual_seed(1)  # a head that tells the inputs apart (2 classes): not a trivial 0
    x = torch.zeros(20, 1, 12, 12)
    x[..., 3:9, 3:9] = torch.randn(20, 1, 6, 6, generator=torch.Generator().manual_seed(5))
    pooled = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(6, 4)
    )
    dense = nn.Sequential(nn.Flatten(), nn.Linear(144, 4))
    result = prediction_change(pooled, x, boundary="zeros")
    assert (result.value, result.n, result.boundary, result.distinct) == (0.0, 80, "zeros", 2)
    assert prediction_change(dense, x, boundary="zeros").value > 0.1


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m, x: consistency(m, x, boundary="zeros"), r"with boundary='zeros' a random shift must keep"),
        (lambda m, x: consistency(m, x, pairs=0), r"pairs must be positive, found 0"),
        (lambda m, x: logit_change(m, x, repeats=0), r"repeats must be positive, found 0"),
        (lambda m, x: consistency(m, x, max_shift=8), r"max_shift 8 is as large as the signal"),
        (lambda m, x: prediction_change(nn.Identity(), x), r"a top-1 prediction needs logits \(N, classes\)"),
        (
            lambda m, x: consistency(m, x, seed=2**70),
            r"seed must be an integer from -2\*\*63 to 2\*\*64 - 1 \(what a torch.Generator takes\), found "
            r"1180591620717411303424; pass a smaller one, e.g. seed % 2\*\*64",
        ),
        (lambda m, x: logit_change(m, x, seed=-(2**63) - 1), r"seed must be an integer from -2\*\*63"),
        (lambda m, x: consistency(m, x, seed=1.5), r"seed must be an integer, found 1.5 \(float\)"),
    ],
    ids=[
        "zeros-needs-max-shift",
        "pairs",
        "repeats",
        "max-shift",
        "not-logits",
        "seed-2**70",
        "seed-low",
        "seed-float",
    ],
)
def test_invalid_arguments(call: object, match: str) -> None:
    dense = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(InvalidArgument, match=match):
        call(dense, torch.randn(4, 1, 8, 8))  # type: ignore[operator]


# -- intervals clustered by sample (issue 12, item 10) ----------------------------------------------------


def clustered_draws(generator: torch.Generator, samples: int, draws: int) -> tuple[torch.Tensor, float]:
    """Per-sample success counts where samples differ a lot: half succeed 95% of the time, half 20%."""
    rates = torch.where(torch.rand(samples, generator=generator) < 0.5, 0.95, 0.2)
    counts = (torch.rand(samples, draws, generator=generator) < rates[:, None]).sum(dim=1)
    return counts, (0.95 + 0.2) / 2


def test_clustered_wilson_intervals_cover_where_comparisons_counted_as_independent_do_not() -> None:
    generator = torch.Generator().manual_seed(0)
    trials, samples, draws = 400, 60, 5
    clustered = naive = 0
    for _ in range(trials):
        counts, truth = clustered_draws(generator, samples, draws)
        low, high = clustered_wilson_interval(counts, draws)
        clustered += low <= truth <= high
        low, high = wilson_interval(int(counts.sum()), samples * draws)
        naive += low <= truth <= high
    assert clustered / trials > 0.92  # close to the nominal 95%
    assert naive / trials < 0.85  # the negative control: draws of one sample taken as independent


def test_the_clustered_interval_is_the_cluster_bootstraps_width() -> None:
    generator = torch.Generator().manual_seed(1)
    counts, _ = clustered_draws(generator, 200, 5)
    low, high = clustered_wilson_interval(counts, 5)
    resampled = counts[torch.randint(0, 200, (4000, 200), generator=generator)].sum(dim=1) / 1000
    bootstrap = 1.959964 * float(resampled.double().std())
    assert (high - low) / 2 == pytest.approx(bootstrap, rel=0.1)
    naive_low, naive_high = wilson_interval(int(counts.sum()), 1000)
    assert (naive_high - naive_low) / 2 < 0.8 * bootstrap  # what the old interval said


def test_independent_draws_keep_the_interval_of_all_comparisons() -> None:
    generator = torch.Generator().manual_seed(2)
    counts = (torch.rand(300, 4, generator=generator) < 0.6).sum(dim=1)  # one rate for every sample
    low, high = clustered_wilson_interval(counts, 4)
    naive_low, naive_high = wilson_interval(int(counts.sum()), 1200)
    assert high - low == pytest.approx(naive_high - naive_low, rel=0.1)
    # and the extremes: every sample alike is the interval of one comparison per sample
    assert clustered_wilson_interval(torch.full((50,), 4), 4) == wilson_interval(50, 50)
    one_low, one_high = clustered_wilson_interval(torch.tensor([2]), 4)  # one sample: one unit
    four_low, four_high = wilson_interval(2, 4)
    assert one_low < four_low < four_high < one_high


def test_clustered_normal_intervals_cover_the_mean_of_correlated_repeats() -> None:
    generator = torch.Generator().manual_seed(3)
    trials, samples, repeats = 300, 40, 6
    clustered = naive = 0
    for _ in range(trials):
        level = torch.rand(samples, 1, generator=generator) * 2  # each sample's own level, mean 1
        changes = level + 0.1 * torch.rand(samples, repeats, generator=generator) - 0.05
        low, high = clustered_normal_interval(changes.mean(dim=1))
        clustered += low <= 1.0 <= high
        half = 1.959964 * float(changes.std()) / (samples * repeats) ** 0.5
        naive += abs(float(changes.mean()) - 1.0) <= half
    assert clustered / trials > 0.91
    assert naive / trials < 0.8
    assert clustered_normal_interval(torch.tensor([0.5])) == (0.0, float("inf"))


def test_consistency_with_several_pairs_reports_the_samples_interval() -> None:
    # half the samples are constant images (every shift agrees), half noise through a dense head
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x = torch.randn(100, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    x[::2] = 1.0
    result = consistency(dense, x, pairs=5)
    assert (result.n, result.samples, result.interval) == (500, 100, "wilson, clustered by sample")
    naive_low, naive_high = wilson_interval(round(result.value * 500), 500)
    assert result.high - result.low > 1.5 * (naive_high - naive_low)
    assert result.low <= result.value <= result.high


def test_a_classifier_that_predicts_one_class_is_trivially_invariant_and_says_so() -> None:
    constant = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with torch.no_grad():
        constant[1].weight.zero_()
        constant[1].bias.copy_(torch.tensor([0.0, 1.0, 0.0]))
    x = torch.randn(8, 1, 8, 8)
    with pytest.warns(EquivarianceWarning, match=r"consistency 1.00 is trivial: every one of the 16 inputs"):
        result = consistency(constant, x)
    assert (result.value, result.distinct) == (1.0, 1)
    with pytest.warns(EquivarianceWarning, match=r"prediction_change 0.00 is trivial: .* \(class 1\)"):
        assert prediction_change(constant, x).distinct == 1
    assert logit_change(constant, x).distinct is None
