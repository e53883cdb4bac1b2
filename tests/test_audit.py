"""Dataset-scale audits: numbers, checkpoints, negative controls and torch.distributed."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import _audit_worker
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
WORKER = str(ROOT / "tests" / "_audit_worker.py")


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


class Crash(Exception):
    """A stand-in for whatever stops an audit part-way: a crash, a pre-emption, Ctrl-C."""


def crashing(batches: list[torch.Tensor], after: int) -> Iterator[torch.Tensor]:
    """The batches, failing when batch ``after`` is asked for."""
    for number, batch in enumerate(batches):
        if number == after:
            raise Crash
        yield batch


def results(path: Path) -> list[dict[str, Any]]:
    """The records a checkpoint's results file holds, one per batch."""
    return [json.loads(line) for line in Path(f"{path}.results").read_text().splitlines()]


def test_checkpoint_resume_gives_the_same_result(tmp_path: Path) -> None:
    data = [canvas(3) for _ in range(4)]
    path = tmp_path / "audit.json"
    torch.manual_seed(0)
    with pytest.raises(Crash):
        audit(
            MLP(input_size=38), crashing(data, 3), SHIFTS, checkpoint=path, checkpoint_every=2, progress=False
        )
    state = json.loads(path.read_text())
    assert state["batches"] == 3  # batch 2 came after the last regular save; the crash saved it
    assert [len(record["errors"]) for record in results(path)] == [3, 3, 3]
    calls: list[int] = []
    torch.manual_seed(0)
    reference = audit(MLP(input_size=38), data, SHIFTS, progress=False)
    torch.manual_seed(0)
    model = MLP(input_size=38)
    model.register_forward_pre_hook(lambda _, inputs: calls.append(len(inputs[0])))
    resumed = audit(model, data, SHIFTS, checkpoint=path, progress=False)
    # batch 0 again (to see that the model computes what it did) and the one batch left: a base pass
    # and one chunk of shifts each
    assert len(calls) == 4
    torch.testing.assert_close(resumed.errors, reference.errors, rtol=0, atol=0)
    assert resumed.samples == 12
    assert json.loads(path.read_text())["batches"] == 4


def test_checkpoint_with_other_settings_is_refused(tmp_path: Path) -> None:
    path, model = tmp_path / "audit.json", LeNet()
    audit(model, [canvas(2)], SHIFTS, layer="conv4", checkpoint=path, progress=False)
    with pytest.raises(
        InvalidArgument,
        match=r"written with other settings \(differing: layer: \"conv4\" in the checkpoint, null in this "
        r"run; shifts: \[\[-1, -1\], .* in the checkpoint, \[\[-2, -2\], .* in this run\); rerun with the "
        r"same settings, or delete "
        r".*audit.json or pass another checkpoint path to start afresh",
    ):
        audit(model, [canvas(2)], shifts_in_box(2), checkpoint=path, progress=False)
    path.write_text("{not json")
    with pytest.raises(
        InvalidArgument,
        match=r"audit.json is damaged \(it cannot be read as JSON: .*\); delete .*audit.json or pass another "
        "checkpoint path to start afresh",
    ):
        audit(model, [canvas(2)], SHIFTS, layer="conv4", checkpoint=path, progress=False)
    path.write_text(json.dumps({"version": 2}))
    with pytest.raises(
        InvalidArgument,
        match=r"audit.json is damaged \(it is not an audit checkpoint of version 3 \(found version 2\)\); delete",
    ):
        audit(model, [canvas(2)], SHIFTS, layer="conv4", checkpoint=path, progress=False)


@pytest.mark.parametrize(
    ("resumed", "message"),
    [
        (
            lambda x: [x[:3] + 1e-3, x[3:6]],
            r"batch 0 of the data is not the batch 0 the audit checkpoint .*audit.json recorded \(other "
            r"values, shape or order\); pass the same data in the same order and with the same "
            r"loader_batch_size, or delete .*audit.json or pass another checkpoint path to start afresh",
        ),
        (lambda x: [x[:3], x[6:9], x[3:6]], r"batch 1 of the data is not the batch 1 the audit checkpoint"),
        (lambda x: [x[:2], x[2:4], x[4:6]], r"batch 0 of the data is not the batch 0"),
        (
            lambda x: [x[:3]],
            r"the audit checkpoint .*audit.json records 2 batches done but the data has only 1; pass the "
            r"data it was written for, or delete",
        ),
    ],
    ids=["other-values", "other-order", "other-loader-batches", "shorter"],
)
def test_checkpoint_of_other_data_is_refused(
    tmp_path: Path, resumed: Callable[[torch.Tensor], list[torch.Tensor]], message: str
) -> None:
    x, path, model = canvas(9), tmp_path / "audit.json", LeNet()
    with pytest.raises(Crash):
        audit(model, crashing([x[:3], x[3:6], x[6:9]], 2), SHIFTS, layer="conv4", checkpoint=path,
              checkpoint_every=1, progress=False)  # fmt: skip
    with pytest.raises(InvalidArgument, match=message):
        audit(model, resumed(x), SHIFTS, layer="conv4", checkpoint=path, progress=False)
    assert json.loads(path.read_text())["batches"] == 2  # the refused run left the checkpoint alone


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


def torchrun(processes: int, *args: str) -> int:
    """Run tests/_audit_worker.py under torchrun on the CPU; its processes write their reports."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(
        [*command, str(processes), WORKER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env,
    ) as run:  # fmt: skip
        try:
            _, stderr = run.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            run.terminate()  # torchrun stops its workers on SIGTERM; a killed torchrun would leave them
            run.communicate(timeout=60)
            raise
    if run.returncode not in (0, 1):
        raise AssertionError(stderr[-3000:])
    return run.returncode


def reports(out: Path, processes: int) -> list[dict[str, Any]]:
    return [json.loads(Path(f"{out}.rank{rank}.json").read_text()) for rank in range(processes)]


def shard(rank: int) -> list[int]:
    """The dataset indices a DistributedSampler gives process ``rank`` of two, in order (0 is padding)."""
    return [*range(_audit_worker.SAMPLES), 0][rank::2]


def test_torchrun_resume_after_an_interruption_gives_the_uninterrupted_numbers(tmp_path: Path) -> None:
    checkpoint = tmp_path / "audit.json"
    # process 0 stops in its 4th batch (regular saves come every 2), process 1 in its 5th and last
    first = torchrun(2, str(tmp_path / "first"), "--checkpoint", str(checkpoint), "--stop-after", "3,4")
    assert first != 0
    stopped = reports(tmp_path / "first", 2)
    assert [report["result"] for report in stopped] == [None, None]
    assert [report["audited"] for report in stopped] == [shard(0)[:12], shard(1)[:16]]
    saved = [json.loads(Path(f"{checkpoint}.rank{rank}").read_text()) for rank in range(2)]
    assert [state["batches"] for state in saved] == [3, 4]  # each saved what it did before it stopped
    assert [
        sum(len(r["errors"]) for r in results(Path(f"{checkpoint}.rank{rank}"))) for rank in range(2)
    ] == [
        12,
        16,
    ]

    assert torchrun(2, str(tmp_path / "resumed"), "--checkpoint", str(checkpoint)) == 0
    resumed = reports(tmp_path / "resumed", 2)
    # the checkpoint's batches are skipped, except each process's batch 0, measured again to see that
    # the model computes what it did when the checkpoint was written
    assert [report["audited"] for report in resumed] == [
        shard(0)[:4] + shard(0)[12:],
        shard(1)[:4] + shard(1)[16:],
    ]

    assert torchrun(2, str(tmp_path / "uninterrupted")) == 0
    uninterrupted = reports(tmp_path / "uninterrupted", 2)
    assert [report["audited"] for report in uninterrupted] == [shard(0), shard(1)]
    reference = uninterrupted[0]["result"]
    assert len(reference["errors"]) == _audit_worker.SAMPLES
    assert 0 < sum(reference["consistent"]) < _audit_worker.SAMPLES  # a classifier that shifts change
    assert resumed[0]["result"] == resumed[1]["result"] == reference  # bitwise: JSON keeps every float


@contextlib.contextmanager
def world_of_one(tmp_path: Path) -> Iterator[None]:
    """torch.distributed initialised in this process, as in a torchrun of one process."""
    store = tmp_path / f"store{len(list(tmp_path.glob('store*')))}"
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


class CrashingDataset(TensorDataset):
    """A dataset whose sample ``after`` cannot be read."""

    def __init__(self, data: TensorDataset, after: int) -> None:
        super().__init__(*data.tensors)
        self.after = after

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        if index == self.after:
            raise Crash
        return super().__getitem__(index)


def test_torchrun_refuses_a_checkpoint_of_another_world_size_on_every_process(tmp_path: Path) -> None:
    checkpoint = tmp_path / "audit.json"
    dataset, images = _audit_worker.data()
    model = _audit_worker.Recording(images, 2)
    with world_of_one(tmp_path), pytest.raises(_audit_worker.Interrupted):
        audit(
            model, dataset, _audit_worker.SHIFTS, layer="trunk", classifier=model.classifier,
            loader_batch_size=_audit_worker.LOADER_BATCH_SIZE, batch_size=1, checkpoint=checkpoint,
            checkpoint_every=2, progress=False,
        )  # fmt: skip
    assert json.loads(Path(f"{checkpoint}.rank0").read_text())["settings"]["world_size"] == 1
    with pytest.raises(
        InvalidArgument,
        match=r"there is no audit checkpoint .*audit.json but there is .*audit.json.rank0: the audit was "
        r"started under torch.distributed by 1 process; resume it under torchrun with as many, or "
        r"delete the .*audit.json.rank\* files or pass another checkpoint path to start afresh",
    ):
        audit(model, dataset, _audit_worker.SHIFTS, layer="trunk", checkpoint=checkpoint, progress=False)

    # process 1 has no checkpoint of its own, yet it refuses with process 0 instead of going on alone
    assert torchrun(2, str(tmp_path / "two"), "--checkpoint", str(checkpoint)) != 0
    refused = reports(tmp_path / "two", 2)
    assert refused[0]["refused"] == refused[1]["refused"]
    assert refused[0]["refused"] == (
        f"process 0 of 2 refuses its checkpoint: the audit checkpoint {checkpoint}.rank0 was written by "
        "1 process and this run has 2; resume with as many processes as started the audit, or delete "
        f"the {checkpoint}.rank* files or pass another checkpoint path to start afresh"
    )
    assert refused[0]["audited"] == refused[1]["audited"] == []


def test_distributed_resume_refuses_a_single_process_checkpoint(tmp_path: Path) -> None:
    path, data = tmp_path / "audit.json", dataset(6)
    audit(LeNet(), data, SHIFTS, layer="conv4", loader_batch_size=2, checkpoint=path, progress=False)
    with (
        world_of_one(tmp_path),
        pytest.raises(
            InvalidArgument,
            match=r"process 0 of 1 refuses its checkpoint: there is no audit checkpoint .*audit.json.rank0 but "
            r"there is .*audit.json: the audit was started by a single process; resume it without torchrun, "
            r"or delete .*audit.json or pass another checkpoint path to start afresh",
        ),
    ):
        audit(LeNet(), data, SHIFTS, layer="conv4", loader_batch_size=2, checkpoint=path, progress=False)


def test_distributed_resume_refuses_checkpoints_of_more_processes(tmp_path: Path) -> None:
    path, data = tmp_path / "audit.json", dataset(6)
    with world_of_one(tmp_path):
        audit(LeNet(), data, SHIFTS, layer="conv4", loader_batch_size=2, checkpoint=path, progress=False)
    # what process 1 of a two-process run would have left, and process 0's checkpoint lost
    state = json.loads(Path(f"{path}.rank0").read_text())
    state["settings"].update(rank=1, world_size=2)
    Path(f"{path}.rank1").write_text(json.dumps(state))
    Path(f"{path}.rank0").unlink()
    with (
        world_of_one(tmp_path),
        pytest.raises(
            InvalidArgument,
            match=r"process 0 of 1 refuses its checkpoint: there is no audit checkpoint .*audit.json.rank0 but "
            r"there is .*audit.json.rank1: the audit was started by 2 processes and this run has 1; resume "
            r"with as many processes as started the audit, or delete the .*audit.json.rank\* files",
        ),
    ):
        audit(LeNet(), data, SHIFTS, layer="conv4", loader_batch_size=2, checkpoint=path, progress=False)


def test_distributed_resume_of_its_own_checkpoint(tmp_path: Path) -> None:
    path, data, model = tmp_path / "audit.json", dataset(6), MLP(input_size=38)
    reference = audit(model, data, SHIFTS, loader_batch_size=2, progress=False)
    with world_of_one(tmp_path):
        with pytest.raises(Crash):
            audit(model, CrashingDataset(data, 4), SHIFTS, loader_batch_size=2,
                  checkpoint=path, checkpoint_every=1, progress=False)  # fmt: skip
        assert json.loads(Path(f"{path}.rank0").read_text())["batches"] == 2
        resumed = audit(model, data, SHIFTS, loader_batch_size=2, checkpoint=path, progress=False)
    assert reference.quantile(0.5) > 0.5  # errors that could differ
    torch.testing.assert_close(resumed.errors, reference.errors, rtol=0, atol=0)
    assert resumed.samples == 6
