"""Chunk sizes from memory: batch_size="auto", the out-of-memory retry and the sweep's progress bar."""

from __future__ import annotations

import pytest
import torch
from conftest import canvas

from equivariance import Flip, Rot90, check_equivariance, check_invariance, equivariance_error
from equivariance._engine import arguments as _arguments
from equivariance._engine import plan as _plan
from equivariance._engine.forward import Forward
from equivariance._engine.memory import (
    CPU_BUDGET_BYTES,
    CPU_CHUNK_BYTES,
    CPU_MIN_CHUNK,
    auto_batch_size,
    default_cpu_batch_size,
    metered,
)
from equivariance._engine.runner import Runner
from equivariance._engine.sinks import Sums
from equivariance.actions import Action
from equivariance.models import LeNet
from equivariance.shifts import shifts_in_box


def measure(
    model: torch.nn.Module,
    x: torch.Tensor,
    elements: list[Action],
    *,
    batch_size: int,
    noise_floor: bool = True,
    progress: bool | None = None,
) -> tuple[Sums, int]:
    """The engine's sums for ``elements`` (the plan, then the runner), and the chunk size that fitted."""
    request = _arguments.validate(
        model, x, "equivariance", elements, batch_size=batch_size, noise_floor=noise_floor
    )
    with Runner(model, progress=progress) as runner:
        return _plan.measure(runner, _plan.make_plan(runner, request))


class RunsOutOfMemory(torch.nn.Module):
    """A convolution that raises CUDA's out-of-memory error for batches larger than ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.limit = limit
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(x))
        if len(x) > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (fake: batch {len(x)} > {self.limit})")
        out: torch.Tensor = self.conv(x)
        return out


def test_out_of_memory_halves_the_chunk_and_retries() -> None:
    model, x = RunsOutOfMemory(limit=7), canvas(4, size=16, content=10)
    shifts = shifts_in_box(1)
    expected, _ = measure(model, x, list(shifts), batch_size=4, noise_floor=False)
    model.batches.clear()
    measured, size = measure(model, x, list(shifts), batch_size=32, noise_floor=False)
    assert size == 4
    assert model.batches[:4] == [4, 32, 16, 8]  # the base pass, then halved until a chunk fits
    assert sum(b for b in model.batches[1:] if b <= 7) == 9 * 4
    torch.testing.assert_close(measured.diff_sq, expected.diff_sq)
    assert check_equivariance(model, x, max_shift=1, batch_size=64).passed


def test_out_of_memory_with_transforms_halves_the_chunk_and_retries() -> None:
    model, x = RunsOutOfMemory(limit=7), canvas(4, size=16, content=10)
    transforms: list[Action] = [Rot90(1), Rot90(2), Rot90(3), Flip(-1)]
    expected, _ = measure(model, x, transforms, batch_size=4)
    model.batches.clear()
    measured, size = measure(model, x, transforms, batch_size=32)
    assert size == 5
    assert model.batches[:4] == [4, 20, 10, 5]  # the base pass, then the whole sweep (5 x 4) halved twice
    assert sum(b for b in model.batches[1:] if b <= 7) == 5 * 4  # the identity and 4 transforms, once each
    torch.testing.assert_close(measured.diff_sq, expected.diff_sq)  # the noise floor's row included
    report = check_equivariance(model, x, transforms=transforms, batch_size=64)
    assert report.batch_size == 5
    assert not report.passed  # a plain convolution
    pooled = check_invariance(lambda t: model(t).mean(dim=(2, 3)), x, transforms=transforms, batch_size=64)
    assert pooled.batch_size == 5


def test_out_of_memory_at_one_sample_is_raised() -> None:
    model = RunsOutOfMemory(limit=0)
    with pytest.raises(torch.cuda.OutOfMemoryError, match="fake: batch 1 > 0"):
        equivariance_error(model, canvas(1, size=16, content=10)[:, :, :, :], (1, 0), batch_size=1)


def test_auto_batch_size_fits_the_cpu_budget() -> None:
    x = canvas(8)
    report = check_equivariance(LeNet(), x, max_shift=2, layer="conv4", batch_size="auto")
    assert report.passed
    with metered(LeNet()) as meter:
        pass
    assert meter.bytes == 0  # hooks are removed when the block ends
    model = LeNet()
    with metered(model) as meter:
        model.features(x)
    per_sample = (meter.bytes + 2 * x.numel() * 4) // len(x)
    assert report.batch_size == min(25 * 8 + 1, CPU_BUDGET_BYTES // per_sample)
    default = check_equivariance(LeNet(), x, max_shift=2, layer="conv4")
    assert [r.error for r in report.results] == pytest.approx([r.error for r in default.results], abs=1e-6)


def test_auto_batch_size_is_at_least_one_and_at_most_the_sweep() -> None:
    assert auto_batch_size(2**40, torch.device("cpu"), total=50) == 1
    assert auto_batch_size(1, torch.device("cpu"), total=50) == 50


def test_default_cpu_chunks_hold_about_32_mib_of_activations_and_at_least_8_samples() -> None:
    wide = torch.nn.Sequential(torch.nn.Conv2d(1, 128, 3, padding=1), torch.nn.ReLU())
    x = torch.randn(4, 1, 64, 64)
    with metered(wide) as meter:
        wide(x)
    per_sample = (meter.bytes + x.numel() * 4 + 128 * x.numel() * 4) // len(x)  # activations, input, output
    assert per_sample > 4 * 2**20  # 4 MiB a sample: 32 MiB would be fewer than 8
    report = check_equivariance(wide, x, max_shift=2, boundary="circular")
    assert report.batch_size == CPU_MIN_CHUNK
    small = canvas(8)  # LeNet's layers on 38x38: a third of a MiB a sample
    lenet = check_equivariance(LeNet(), small, max_shift=2, layer="conv4")
    features = check_equivariance(LeNet().features, small, max_shift=2)  # a bound method: its module's layers
    with metered(LeNet().features) as meter:
        LeNet().features(small)
    assert meter.bytes == 0  # another instance: no hooks of ours on it
    assert CPU_MIN_CHUNK < lenet.batch_size <= 26 * 8
    assert 0.5 < features.batch_size / lenet.batch_size < 2
    # a sweep smaller than a chunk is one chunk; a sample beyond the budget is a chunk of one
    assert default_cpu_batch_size(CPU_BUDGET_BYTES, total=50) == 1
    assert default_cpu_batch_size(6 * 16 * 4, total=10**9) == CPU_CHUNK_BYTES // (6 * 16 * 4)
    assert default_cpu_batch_size(6 * 16 * 4, total=50) == 50


def test_a_model_without_leaf_modules_is_metered_by_four_outputs() -> None:
    # no leaf reports its output: four outputs' worth, the input and the output stand in for a sample
    x = torch.zeros(2, 1, 4, 4)
    with Runner(lambda t: t * 2) as runner:
        base = runner.base(Forward(lambda t: t * 2), x, meter=True)
    assert base.bytes_per_sample == 6 * 16 * 4


def test_progress_bar_on_request_and_off_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    x, shifts = canvas(2, size=16, content=10), list(shifts_in_box(2))
    measure(torch.nn.Conv2d(1, 2, 3), x, shifts, batch_size=5)
    assert capsys.readouterr().err == ""
    measure(torch.nn.Conv2d(1, 2, 3), x, shifts, batch_size=5, progress=True)
    assert "equivariance sweep |########################| 11/11" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_batch_size_on_cuda_fits_free_memory() -> None:
    x = canvas(8).cuda()
    report = check_equivariance(LeNet().cuda(), x, max_shift=2, layer="conv4", batch_size="auto")
    assert report.passed
    assert 1 <= report.batch_size <= 26 * 8
