"""Audit checkpoints (equivariance._engine.checkpoint): what they record, refuse, lock and save."""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from equivariance import InvalidArgument
from equivariance._engine import checkpoint as _checkpoint
from equivariance.audit import AuditResult, audit
from equivariance.shifts import shifts_in_box

SHIFTS = shifts_in_box(1)


def batches(count: int = 3, size: int = 2) -> list[torch.Tensor]:
    """Small images with negative values (a ReLU in place would change them) on a zero border."""
    generator = torch.Generator().manual_seed(3)
    x = torch.zeros(count * size, 1, 10, 10)
    x[..., 2:8, 2:8] = torch.randn(count * size, 1, 6, 6, generator=generator)
    return list(x.split(size))


class Net(nn.Module):
    """A convolution (equivariant), a pooled head (a classifier) and a position-weighted map (not
    equivariant); ``forward`` returns the three."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(1, 3, 3)
        self.head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.calls = 0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.calls += 1
        features = self.conv(x)
        return features, self.head(features), features * torch.linspace(1, 2, features.shape[-1])


def run(
    path: Path | None, model: Net | None = None, data: Iterable[torch.Tensor] | None = None, **options: Any
) -> AuditResult:
    model = Net() if model is None else model
    settings: dict[str, Any] = {"output": 0, "progress": False, "checkpoint": path, **options}
    shifts = settings.pop("shifts", SHIFTS)
    return audit(model, batches() if data is None else data, shifts, **settings)


def same(a: AuditResult, b: AuditResult) -> bool:
    consistent = (a.consistent is None and b.consistent is None) or (
        a.consistent is not None and b.consistent is not None and torch.equal(a.consistent, b.consistent)
    )
    return torch.equal(a.errors, b.errors) and torch.equal(a.passed, b.passed) and consistent


def manifest(path: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(path.read_text())
    return state


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(f"{path}.results").read_text().splitlines()]


def rewrite(path: Path, records: list[dict[str, Any]], **fields: Any) -> None:
    """Replace the results with ``records`` and commit them in the manifest, as an editor who knew the format would."""
    data = b"".join(json.dumps(record).encode() + b"\n" for record in records)
    Path(f"{path}.results").write_bytes(data)
    state = manifest(path)
    state.update(results_bytes=len(data), results_crc32=zlib.crc32(data), batches=len(records), **fields)
    path.write_text(json.dumps(state))


# -- item 1: the classifier never touches the caller's tensors -----------------------------------------


def test_a_classifier_that_writes_to_its_input_leaves_the_callers_batch_alone(tmp_path: Path) -> None:
    classifier = nn.Sequential(nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    data = batches()
    probe = data[0].clone()
    classifier(probe)
    assert not torch.equal(probe, data[0])  # the negative control: given a tensor, it zeroes its negatives
    copies = [x.clone() for x in data]
    path = tmp_path / "audit.json"
    model = Net()
    first = run(path, model, data, classifier=classifier, checkpoint_every=1)
    assert all(torch.equal(x, copy) for x, copy in zip(data, copies))
    assert first.consistency is not None
    # the same data resumes (a changed batch would be refused as other data)
    assert same(run(path, model, data, classifier=classifier), first)


def test_a_classifier_without_logits_is_refused() -> None:
    image_to_image = nn.Conv2d(1, 2, 3)
    with pytest.raises(
        InvalidArgument,
        match=r"the classifier returned an output of shape \(2, 2, 8, 8\); top-1 consistency needs logits "
        r"\(N, classes\): pass a classifier that ends in pooling and a linear head, or drop classifier=",
    ):
        run(None, classifier=image_to_image)


# -- item 2: a checkpoint records what its numbers depend on ---------------------------------------------


class Renamed(Net):
    pass


CHANGES: dict[str, tuple[dict[str, Any], Callable[[], Net], str]] = {
    "output": (
        {"output": lambda out: out[0] * 2},
        Net,
        r"output: 0 in the checkpoint, test_checkpoint.<lambda> in this run",
    ),
    "model weights": (
        {},
        lambda: Net(seed=1),
        r"model: other weights \(CRC-32 [0-9a-f]{8} in the checkpoint",
    ),
    "model type": ({}, Renamed, r"model: test_checkpoint.Net in the checkpoint, test_checkpoint.Renamed in"),
    "classifier": (
        {"classifier": nn.Flatten()},
        Net,
        r"classifier: null in the checkpoint, torch.nn.modules",
    ),
    "stride": (
        {"stride": 1, "shifts": [(2, 0)]},
        Net,
        r"stride: \[2, 2\] in the checkpoint, \[1, 1\] in this run\)",
    ),
    "margin": ({"margin": 1}, Net, r"margin: \[0, 0\] in the checkpoint, \[1, 1\] in this run"),
    "boundary": ({"boundary": "circular"}, Net, r"boundary: \"zeros\" in the checkpoint, \"circular\""),
    "rtol": ({"rtol": 1e-3}, Net, r"rtol: null in the checkpoint, 0.001 in this run"),
    "layer": ({"layer": "conv", "output": None}, Net, r"layer: null in the checkpoint, \"conv\" in this run"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_resume_with_anything_that_changes_the_numbers_is_refused(tmp_path: Path, change: str) -> None:
    path = tmp_path / "audit.json"
    stride_two = {"stride": 2, "shifts": [(2, 0)]} if change == "stride" else {}
    data = batches()
    with pytest.raises(KeyboardInterrupt):
        run(path, data=interrupted(data, 2), **stride_two)
    before = path.read_bytes(), Path(f"{path}.results").read_bytes()
    options, model, message = CHANGES[change]
    with pytest.raises(InvalidArgument, match=r"written with other settings \(differing: " + message):
        run(path, model(), data, **options)
    assert (path.read_bytes(), Path(f"{path}.results").read_bytes()) == before  # left as found


class Switched(Net):
    """A plain Python attribute (not a parameter or buffer) that changes the output: ``positional`` adds
    a ramp over the width, which does not move with the content."""

    def __init__(self) -> None:
        super().__init__()
        self.positional = False

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features, pooled, weighted = super().forward(x)
        if self.positional:
            features = features + torch.linspace(0, 1, features.shape[-1])
        return features, pooled, weighted


@pytest.mark.parametrize("positional", [False, True], ids=["added", "removed"])
def test_a_resume_whose_model_computes_something_else_is_refused(tmp_path: Path, positional: bool) -> None:
    """Issue 21, item 6: a plain attribute the weights' CRC cannot see changes the numbers; batch 0,
    measured again on resume, shows it, and the resume is refused instead of mixing 0.0 with 0.5."""
    path, data = tmp_path / "audit.json", batches()
    model = Switched()
    model.positional = positional
    with pytest.raises(KeyboardInterrupt):
        run(path, model, interrupted(data, 2), checkpoint_every=1)
    before = path.read_bytes(), Path(f"{path}.results").read_bytes()
    model.positional = not positional
    fresh = run(None, model, data)
    with pytest.raises(
        InvalidArgument,
        match=r"^batch 0, measured again to resume, gives other results than the checkpoint recorded \(sample "
        r"\d has error .* now and .* in the checkpoint\), although the weights, buffers and settings are the "
        r"same: the model computes something else .* which a checkpoint cannot see; rerun with the model as "
        r"it was, or delete .*audit.json or pass another checkpoint path to start afresh$",
    ):
        run(path, model, data)
    assert (path.read_bytes(), Path(f"{path}.results").read_bytes()) == before  # left as found
    model.positional = positional  # as it was: the resume goes on, to the uninterrupted numbers
    assert same(run(path, model, data), run(None, model, data))
    assert not same(fresh, run(None, model, data))  # the attribute does change the numbers


def interrupted(data: list[torch.Tensor], after: int) -> Iterator[torch.Tensor]:
    """The first ``after`` batches, then Ctrl-C (a KeyboardInterrupt) when the next is asked for."""
    yield from data[:after]
    raise KeyboardInterrupt


def test_a_resume_with_another_output_is_refused_instead_of_mixing_two_outputs(tmp_path: Path) -> None:
    path, data = tmp_path / "audit.json", batches()
    assert run(None, data=data, output=2).passed_fraction == 0.0  # output 2 is not equivariant
    assert run(path, data=data[:2], output=0).passed_fraction == 1.0  # output 0 is
    with pytest.raises(InvalidArgument, match=r"differing: output: 0 in the checkpoint, 2 in this run"):
        run(path, data=data, output=2)


def test_an_output_selector_of_other_code_is_refused(tmp_path: Path) -> None:
    path, data = tmp_path / "audit.json", batches()
    run(path, data=data[:1], output=lambda out: out[0])
    assert run(path, data=data[:2], output=lambda out: out[0]).samples == 4  # the same code resumes
    with pytest.raises(
        InvalidArgument,
        match=r"differing: output: other code \(CRC-32 [0-9a-f]{8} in the checkpoint, [0-9a-f]{8} in",
    ):
        run(path, data=data, output=lambda out: out[0] * 2)


def test_equal_settings_spelled_differently_resume(tmp_path: Path) -> None:
    path, data = tmp_path / "audit.json", batches()
    first = run(path, data=data[:2], stride=(1, 1), margin=(0, 0), rtol=np.float32(1e-3), output=0)
    resumed = run(
        path, data=data, stride=np.int64(1), margin=torch.tensor(0), rtol=float(np.float32(1e-3)), output=0
    )
    assert resumed.samples == 6
    assert resumed.errors[:4].tolist() == first.errors.tolist()
    assert manifest(path)["settings"]["stride"] == [1, 1]


def test_numpy_and_torch_scalars_are_stored_as_plain_json_numbers(tmp_path: Path) -> None:
    path = tmp_path / "audit.json"
    result = run(
        path, stride=np.int64(1), margin=(np.int64(0), torch.tensor(0)), rtol=np.float32(1e-3),
        atol=torch.tensor(1e-6, dtype=torch.float64), checkpoint_every=torch.tensor(1), batch_size=np.int64(5),
    )  # fmt: skip
    assert result.rtol == float(np.float32(1e-3))
    settings = manifest(path)["settings"]
    assert settings["margin"] == [0, 0]
    assert all(type(m) is int for m in settings["margin"])
    assert type(settings["rtol"]) is float
    assert type(settings["atol"]) is float
    assert sorted(os.listdir(tmp_path)) == ["audit.json", "audit.json.results"]  # no temporary left


def test_a_model_with_lazy_parameters_is_refused_before_any_work(tmp_path: Path) -> None:
    lazy = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.LazyLinear(3))
    with pytest.raises(
        InvalidArgument,
        match=r"Sequential has uninitialized \(lazy\) parameters \(2.weight, 2.bias\), whose weights a checkpoint "
        r"cannot record before they exist; run one forward pass first, e.g. model\(x\[:1\]\), then audit",
    ):
        audit(lazy, batches(), SHIFTS, layer="0", checkpoint=tmp_path / "audit.json", progress=False)
    assert os.listdir(tmp_path) == []
    assert (
        audit(lazy, batches(), SHIFTS, layer="0", progress=False).samples == 6
    )  # without a checkpoint: fine


# -- item 3: every field is validated ------------------------------------------------------------------------


def drop_last_result(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    first = dict(records[0])
    for key in ("errors", "passed", "consistent"):
        first[key] = first[key][:1]
    return [first, *records[1:]]


def field(key: str, value: object) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]:
    return lambda records: [{**records[0], key: value}, *records[1:]]


EDITS: dict[str, tuple[Callable[[list[dict[str, Any]]], list[dict[str, Any]]], str]] = {
    "one result short": (drop_last_result, r"it holds 1 results for batch 0, which has 2 samples"),
    "a result more": (
        lambda records: [
            {**records[0], **{k: records[0][k] * 2 for k in ("errors", "passed", "consistent")}},
            *records[1:],
        ],
        r"it holds 4 results for batch 0, which has 2 samples",
    ),
    "string errors": (
        field("errors", ["0.1", "0.2"]),
        r"line 1 of the results must hold a non-empty list of non-negative numbers as errors",
    ),
    "null errors": (
        field("errors", [None, None]),
        r"line 1 of the results must hold a non-empty list of non-negative numbers",
    ),
    "negative error": (field("errors", [-1.0, 0.0]), r"non-negative numbers as errors"),
    "passed as numbers": (
        field("passed", [1, 0]),
        r"line 1 of the results must hold 2 true/false values as passed",
    ),
    "consistent null": (field("consistent", None), r"must hold 2 true/false values as consistent"),
    "renumbered": (field("batch", 7), r"line 1 of the results is numbered 7, not 0"),
    "fingerprint": (
        field("fingerprint", "abc"),
        r"line 1 of the results has fingerprint \"abc\", not a CRC-32",
    ),
    "an extra batch": (
        lambda records: [*records, {**records[-1], "batch": 3}],
        r"records 4 batches done but the data has only 3",
    ),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_edited_results_are_refused(tmp_path: Path, edit: str) -> None:
    path, classifier = tmp_path / "audit.json", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    run(path, classifier=classifier)
    change, message = EDITS[edit]
    rewrite(path, change(lines(path)))
    with pytest.raises(InvalidArgument, match=message):
        run(path, classifier=classifier)


def cut(fraction: float) -> Callable[[bytes], bytes]:
    return lambda data: data[: int(len(data) * fraction)]


def garbage(data: bytes) -> bytes:
    return bytes(np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8))


def edit_manifest(**fields: object) -> Callable[[bytes], bytes]:
    return lambda data: json.dumps({**json.loads(data), **fields}).encode()


def edit_settings(**fields: object) -> Callable[[bytes], bytes]:
    def edit(data: bytes) -> bytes:
        state = json.loads(data)
        state["settings"].update(fields)
        return json.dumps(state).encode()

    return edit


DAMAGE: dict[str, tuple[str, Callable[[bytes], bytes], str]] = {
    "truncated manifest": ("", cut(0.5), r"it cannot be read as JSON"),
    "garbage manifest": ("", garbage, r"it cannot be read as JSON"),
    "older format": (
        "",
        lambda _: b'{"version": 2, "settings": {}}',
        r"not an audit checkpoint of version 3 \(found version 2\)",
    ),
    "settings null": (
        "",
        edit_manifest(settings=None),
        r"its settings must be an object with the keys \['atol', .*\], found null",
    ),
    "world_size null": (
        "",
        edit_settings(world_size=None),
        r"its settings give world_size null, not a number of processes",
    ),
    "batches a string": (
        "",
        edit_manifest(batches="3"),
        r"its batches must be a non-negative integer, found \"3\"",
    ),
    "batches more": (
        "",
        edit_manifest(batches=5),
        r"the manifest says 5 batches, .*audit.json.results holds 3",
    ),
    "a field missing": (
        "",
        lambda data: json.dumps({k: v for k, v in json.loads(data).items() if k != "tolerance"}).encode(),
        r"its fields must be",
    ),
    "tolerance empty": ("", edit_manifest(tolerance=[]), r"its tolerance must be \[rtol, atol\], found \[\]"),
    "tolerance null": (
        "",
        edit_manifest(tolerance=None),
        r"its tolerance must be \[rtol, atol\], found null",
    ),
    "truncated results": (
        ".results",
        cut(0.9),
        r"audit.json.results holds \d+ bytes where the manifest committed \d+: it was truncated",
    ),
    "garbage results": (
        ".results",
        garbage,
        r"the CRC-32 of .*audit.json.results is not the one the manifest committed: it was edited",
    ),
    "emptied results": (".results", lambda _: b"", r"holds 0 bytes where the manifest committed"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_files_are_refused_and_left_alone(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "audit.json"
    run(path)
    suffix, change, message = DAMAGE[damage]
    target = Path(f"{path}{suffix}")
    target.write_bytes(change(target.read_bytes()))
    before = path.read_bytes(), Path(f"{path}.results").read_bytes()
    with pytest.raises(
        InvalidArgument,
        match=r"the audit checkpoint .*audit.json is damaged \(.*"
        + message
        + r".*\); delete .*audit.json or "
        r"pass another checkpoint path to start afresh",
    ):
        run(path)
    assert (path.read_bytes(), Path(f"{path}.results").read_bytes()) == before


def test_a_results_file_of_someone_else_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "audit.json"
    Path(f"{path}.results").write_text("my notes\n")
    with pytest.raises(
        InvalidArgument, match=r"audit.json.results exists and is not the results file of an audit; move it"
    ):
        run(path)
    assert Path(f"{path}.results").read_text() == "my notes\n"


def test_what_a_killed_save_wrote_past_the_commit_is_dropped(tmp_path: Path) -> None:
    path, data = tmp_path / "audit.json", batches()
    reference = run(None, data=data)
    run(path, data=data[:2])
    committed = Path(f"{path}.results").read_bytes()
    with open(f"{path}.results", "ab") as file:
        file.write(b'{"batch": 2, "fingerprint": 12, "err')  # a line torn by a kill
    assert same(run(path, data=data), reference)
    assert Path(f"{path}.results").read_bytes().startswith(committed + b'{"batch": 2, "fingerprint": ')
    assert len(lines(path)) == 3


# -- item 4: the path is checked before any work -------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "message"),
    [
        (
            "missing/audit.json",
            r"cannot write the audit checkpoint .*missing/audit.json: the directory .*missing does not exist; create it first \(checked before any work\)",
        ),
        (
            "file/audit.json",
            r"cannot write the audit checkpoint .*file/audit.json: Not a directory; pass a path in a writable directory",
        ),
        ("folder", r"the audit checkpoint .*folder is a directory; pass the path of a file in it"),
    ],
    ids=["missing-directory", "under-a-file", "a-directory"],
)
def test_an_unwritable_path_is_refused_before_any_forward_pass(
    tmp_path: Path, where: str, message: str
) -> None:
    (tmp_path / "file").write_text("")
    (tmp_path / "folder").mkdir()
    model = Net()
    with pytest.raises(InvalidArgument, match=message):
        run(tmp_path / where, model)
    assert model.calls == 0
    assert sorted(os.listdir(tmp_path)) == ["file", "folder"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_directory_is_refused_before_any_forward_pass(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    model = Net()
    try:
        with pytest.raises(InvalidArgument, match=r"there is no permission to write in .*ro; pass a path"):
            run(folder / "audit.json", model)
    finally:
        folder.chmod(0o700)
    assert model.calls == 0


@pytest.mark.parametrize(
    ("checkpoint", "message"),
    [
        (
            3,
            r"checkpoint must be a file path \(a str or a pathlib.Path\) or None, found 3 \(int\); pass e.g. checkpoint='audit.json'",
        ),
        ("", r"checkpoint is an empty path; pass a file name"),
    ],
    ids=["an-int", "empty"],
)
def test_a_checkpoint_that_is_not_a_path_is_refused(checkpoint: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        run(checkpoint)  # type: ignore[arg-type]


# -- item 5: one writer ----------------------------------------------------------------------------------------


def test_a_second_writer_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.json"
    run(path, data=batches()[:1])
    holder = _checkpoint.Checkpoint(str(path), str(path), manifest(path)["settings"], 0, 1)
    assert holder.open() is None  # another audit on this checkpoint, running
    try:
        model = Net()
        with pytest.raises(
            InvalidArgument,
            match=r"another process is writing the audit checkpoint .*audit.json \(it holds the lock on "
            r".*audit.json.results\); wait for it to finish, or pass another checkpoint path",
        ):
            run(path, model)
        assert model.calls == 0
    finally:
        holder.close()
    assert run(path).samples == 6  # the lock goes with its holder


def test_temporary_files_are_per_process_and_stale_ones_are_removed(tmp_path: Path) -> None:
    path = tmp_path / "audit.json"
    stale = tmp_path / "audit.json.tmp-99999-0123abcd"  # a process killed while writing the manifest
    stale.write_text("{")
    replaced: list[str] = []
    original = _checkpoint.replace

    def recording(source: str, target: str) -> None:
        replaced.append(os.path.basename(source))
        original(source, target)

    _checkpoint.replace = recording  # type: ignore[assignment]
    try:
        run(path, checkpoint_every=1)
    finally:
        _checkpoint.replace = original  # type: ignore[assignment]
    assert not stale.exists()
    assert len(replaced) == 3
    assert all(name.startswith(f"audit.json.tmp-{os.getpid()}-") for name in replaced)
    assert sorted(os.listdir(tmp_path)) == ["audit.json", "audit.json.results"]


# -- item 6: saves cost the new results; an interruption saves what was done ------------------------------------


def test_each_save_writes_only_the_new_batches(tmp_path: Path) -> None:
    path = tmp_path / "audit.json"
    written: list[int] = []
    manifests: list[int] = []
    write_all, replace = _checkpoint.write_all, _checkpoint.replace

    def counting_write(fd: int, data: bytes) -> None:
        written.append(len(data))
        write_all(fd, data)

    def counting_replace(source: str, target: str) -> None:
        manifests.append(os.path.getsize(source))
        replace(source, target)

    _checkpoint.write_all, _checkpoint.replace = counting_write, counting_replace  # type: ignore[assignment]
    try:
        run(path, data=batches(count=12), checkpoint_every=1)
    finally:
        _checkpoint.write_all, _checkpoint.replace = write_all, replace  # type: ignore[assignment]
    assert len(written) == len(manifests) == 12
    # one batch's line each time, and a manifest of constant size: no save rewrites the history
    assert max(written) < 1.2 * min(written)
    assert max(manifests) - min(manifests) < 16
    assert sum(written) == os.path.getsize(f"{path}.results")


def test_ctrl_c_saves_the_batches_done(tmp_path: Path) -> None:
    path, data = tmp_path / "audit.json", batches(count=5)
    reference = run(None, data=data)
    with pytest.raises(KeyboardInterrupt):
        run(path, data=interrupted(data, 3), checkpoint_every=10)
    assert manifest(path)["batches"] == 3
    model = Net()
    resumed = run(path, model, data)
    # two batches left, and batch 0 again (to see that the model computes what it did), each a base
    # pass and one chunk of shifts
    assert model.calls == 3 * 2
    assert same(resumed, reference)


def test_a_failed_first_run_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.json"
    with pytest.raises(InvalidArgument, match="x must have a floating-point dtype"):
        run(path, data=[torch.zeros(2, 1, 10, 10, dtype=torch.long)])
    assert os.listdir(tmp_path) == []


# -- item 7: killed at random points, resumed, bitwise the same ------------------------------------------------

FAULTS_WORKER = Path(__file__).resolve().parent / "_checkpoint_faults_worker.py"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the worker forks a child per attempt")
def test_audits_killed_at_random_points_resume_to_the_uninterrupted_numbers(tmp_path: Path) -> None:
    import subprocess
    import sys

    seeds = ["2", "4", "6", "10"]  # between them they stop an audit at every kind of point, in every way
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, str(FAULTS_WORKER), str(tmp_path), *seeds], capture_output=True, text=True, env=env,
        timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    trials = json.loads(run.stdout)
    stops = set()
    for seed in seeds:
        trial = trials[seed]
        assert trial["resumed"] == trial["reference"]  # bitwise: JSON keeps every float exactly
        assert len(trial["reference"][0]) == 12
        assert trial["batches"] == 6
        stops |= {(stop["ended"], stop["where"]) for stop in trial["stops"] if stop["where"]}
    assert stops == {
        ("killed", "forward"), ("killed", "torn append"), ("killed", "manifest"),
        ("interrupted", "forward"), ("interrupted", "append"), ("interrupted", "manifest"),
    }  # fmt: skip
