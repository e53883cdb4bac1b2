"""Dataset-scale audits: numbers, checkpoints, negative controls and torch.distributed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import canvas
from torch.utils.data import DataLoader, TensorDataset

from equivariance import InvalidArgument
from equivariance.audit import AuditResult, audit
from equivariance.models import MLP, LeNet
from equivariance.shifts import shifts_in_box

ROOT = Path(__file__).resolve().parents[1]
SHIFTS = shifts_in_box(1)


def dataset(samples: int = 10) -> TensorDataset:
    return TensorDataset(canvas(samples), torch.randint(0, 10, (samples,)))


def test_audit_of_an_equivariant_layer_passes() -> None:
    result = audit(LeNet(), dataset(), SHIFTS, layer="conv4", loader_batch_size=4, progress=False)
    assert isinstance(result, AuditResult)
    assert result.samples == 10
    assert result.shifts == 9
    assert result.passed_fraction == 1.0
    assert result.quantile(1.0) == float(result.errors.max()) < 1e-4
    assert list(result.quantiles) == [0.5, 0.9, 0.99, 1.0]
    assert result.consistency is None
    assert "10 samples x 9 shifts, 100.00% within rtol=0.0001" in str(result)


def test_audit_matches_check_equivariance_per_sample() -> None:
    from equivariance.metric import equivariance_error

    model, x = LeNet(), canvas(6)
    result = audit(model, [x[:4], x[4:]], SHIFTS, layer="conv4", progress=False)
    expected = torch.stack(
        [equivariance_error(model, x, s, layer="conv4", reduction="none") for s in SHIFTS]
    ).amax(dim=0)
    torch.testing.assert_close(result.errors, expected, rtol=1e-6, atol=1e-9)


def test_negative_control_mlp_fails_with_large_errors() -> None:
    x = canvas(8)
    result = audit(MLP(input_size=38), DataLoader(TensorDataset(x), batch_size=4), SHIFTS, progress=False)
    assert result.passed_fraction == 0.0
    assert result.quantile(0.5) > 0.5
    assert "0.00% within" in str(result)


def test_top1_consistency_of_a_classifier() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.Flatten(), torch.nn.LazyLinear(4))
    net(torch.zeros(1, 1, 38, 38))
    invariant = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3), torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten()
    )
    data = [canvas(5)]
    dense = audit(net, data, SHIFTS, layer="0", classifier=net, progress=False)
    pooled = audit(invariant, data, SHIFTS, layer="0", classifier=invariant, progress=False)
    assert dense.consistency is not None
    assert dense.consistency < 1.0
    assert pooled.consistency == 1.0
    assert "top-1 consistency under the shifts: 100.00%" in str(pooled)


def test_checkpoint_resume_gives_the_same_result(tmp_path: Path) -> None:
    data = [canvas(3) for _ in range(4)]
    path = tmp_path / "audit.json"
    torch.manual_seed(0)
    full = audit(MLP(input_size=38), data, SHIFTS, checkpoint=path, checkpoint_every=1, progress=False)
    state = json.loads(path.read_text())
    assert state["batches"] == 4
    assert len(state["errors"]) == 12
    # a run interrupted after two batches: its checkpoint is the state after batch 2
    state.update(batches=2, errors=state["errors"][:6], passed=state["passed"][:6])
    path.write_text(json.dumps(state))
    calls = []

    class Counting(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.inner = MLP(input_size=38)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(len(x))
            out: torch.Tensor = self.inner(x)
            return out

    torch.manual_seed(0)
    reference = audit(MLP(input_size=38), data, SHIFTS, progress=False)
    torch.manual_seed(0)
    resumed = audit(Counting(), data, SHIFTS, checkpoint=path, progress=False)
    assert len(calls) == 2 * 2  # two batches left, each a base pass and one chunk of shifts
    torch.testing.assert_close(resumed.errors, reference.errors, rtol=0, atol=0)
    assert full.samples == resumed.samples == 12


def test_checkpoint_with_other_settings_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.json"
    audit(LeNet(), [canvas(2)], SHIFTS, layer="conv4", checkpoint=path, progress=False)
    with pytest.raises(InvalidArgument, match=r"written with other settings \(differing: layer, shifts\)"):
        audit(LeNet(), [canvas(2)], shifts_in_box(2), checkpoint=path, progress=False)
    path.write_text("{not json")
    with pytest.raises(InvalidArgument, match=r"cannot be read .*; delete it to start the audit afresh"):
        audit(LeNet(), [canvas(2)], SHIFTS, layer="conv4", checkpoint=path, progress=False)


@pytest.mark.parametrize(
    ("data", "options", "message"),
    [
        ([canvas(2)], {"shifts": []}, "shifts is empty; pass at least one shift"),
        (
            [{"x": 1}],
            {},
            r"batch 0 of the data is \{'x': 1\} \(dict\); each batch must be a tensor \(N, C, \*spatial\)",
        ),
        (5, {}, "data must be a DataLoader, a Dataset or an iterable of batches, found 5 \\(int\\)"),
        ([canvas(2)], {"checkpoint_every": 0}, "checkpoint_every must be positive, found 0"),
    ],
    ids=["no-shifts", "bad-batch", "not-iterable", "checkpoint-every"],
)
def test_invalid_arguments(data: object, options: dict[str, object], message: str) -> None:
    kwargs: dict[str, object] = {"shifts": SHIFTS, "progress": False, **options}
    shifts = kwargs.pop("shifts")
    with pytest.raises(InvalidArgument, match=message):
        audit(LeNet(), data, shifts, layer="conv4", **kwargs)  # type: ignore[arg-type]


def test_torchrun_with_two_processes_gives_the_single_process_numbers() -> None:
    script = str(ROOT / "examples" / "audit_dataset.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, script, "--samples", "13", "--json"], capture_output=True, text=True, env=env,
        timeout=120, check=True,
    )  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    sharded = subprocess.run(
        [*command, script, "--samples", "13", "--json"], capture_output=True, text=True, env=env,
        timeout=120,
    )  # fmt: skip
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    one, two = json.loads(single.stdout), json.loads(sharded.stdout.strip().splitlines()[-1])
    assert len(one["errors"]) == 13
    assert two == one
