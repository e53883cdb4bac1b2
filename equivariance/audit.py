"""Dataset-scale audits: the equivariance error of a model over a whole dataset.

:func:`audit` streams a dataset batch by batch through the same batched engine
as :func:`~equivariance.check_equivariance`, keeps the worst-over-shifts
error of every sample, and summarises them as quantiles, a mean and the
fraction of samples within the tolerance; given a ``classifier`` it also
measures top-1 consistency, the fraction of samples whose predicted class is
the same under every shift.

The aggregates are exact: every per-sample error is kept (about 10 bytes a
sample: a float64 error and two flags, so 10 MB for a million samples) rather
than a streaming quantile sketch. A run sharded over processes therefore
reports the same numbers as a single process on the same data.

Under ``torchrun`` (``torch.distributed`` initialised), a map-style
``Dataset`` is sharded with :class:`~torch.utils.data.DistributedSampler`
(no shuffling), each process audits its shard, and the per-sample results are
gathered with ``all_gather`` and put back in dataset order, duplicates from
the sampler's padding removed::

    torchrun --nproc_per_node 2 my_audit.py

A checkpoint records, besides the results so far and the settings, a CRC-32
of every batch it covers; a resumed run compares the batches it skips with
them, so different data, another order or another ``loader_batch_size`` is
refused rather than mixed in. Under ``torch.distributed`` every process keeps
its own checkpoint file (its shard's results, ``.rank<r>`` appended) and
resumes from it, and the processes agree before going on: if any one refuses
its checkpoint (another number of processes, other settings or data), all of
them raise the same :class:`~equivariance.errors.InvalidArgument`, so none is
left waiting for the others in a collective.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from equivariance import _plan
from equivariance._forward import Forward, OutputSelector
from equivariance._judge import sample_errors, within
from equivariance._plan import BatchSize
from equivariance._progress import Progress
from equivariance._runner import ModelConsumer, Runner
from equivariance._sinks import Top1, top1
from equivariance._validation import as_int, describe
from equivariance.actions import Action, Boundary
from equivariance.errors import InvalidArgument
from equivariance.shifts import ShiftLike, as_shift_list
from equivariance.tolerances import Tolerance, resolve_tolerance

IntOrTuple = int | Sequence[int]

__all__ = ["AuditResult", "audit"]

CHECKPOINT_VERSION = 2
QUANTILES = (0.5, 0.9, 0.99, 1.0)


@dataclass(frozen=True)
class AuditResult:
    """Per-sample results of an audit and their summaries.

    Attributes:
        errors: each sample's largest error over the shifts (float64, dataset order).
        passed: whether each sample is within the tolerance for every shift.
        consistent: whether each sample's top-1 class is the same for every
            shift, or None without a ``classifier``.
        shifts: the number of shifts audited.
        rtol: the relative tolerance applied.
        atol: the absolute tolerance applied where the reference output is zero.
    """

    errors: torch.Tensor
    passed: torch.Tensor
    consistent: torch.Tensor | None
    shifts: int
    rtol: float
    atol: float

    @property
    def samples(self) -> int:
        """The number of samples audited."""
        return len(self.errors)

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (0 to 1, linear interpolation) of the per-sample errors."""
        return float(np.quantile(self.errors.numpy(), q)) if self.samples else math.nan

    @property
    def quantiles(self) -> dict[float, float]:
        """The median, 90th and 99th percentiles and the maximum of the per-sample errors."""
        return {q: self.quantile(q) for q in QUANTILES}

    @property
    def mean(self) -> float:
        """The mean per-sample error."""
        return float(self.errors.mean()) if self.samples else math.nan

    @property
    def passed_fraction(self) -> float:
        """The fraction of samples within the tolerance for every shift."""
        return float(self.passed.double().mean()) if self.samples else math.nan

    @property
    def consistency(self) -> float | None:
        """The fraction of samples whose top-1 class no shift changes (None without a classifier)."""
        if self.consistent is None:
            return None
        return float(self.consistent.double().mean()) if self.samples else math.nan

    def __str__(self) -> str:
        q = self.quantiles
        lines = [
            f"audit: {self.samples} samples x {self.shifts} shifts, "
            f"{self.passed_fraction:.2%} within rtol={self.rtol:g} (atol={self.atol:g})",
            f"  error: p50={q[0.5]:.3g} p90={q[0.9]:.3g} p99={q[0.99]:.3g} max={q[1.0]:.3g} "
            f"mean={self.mean:.3g}",
        ]
        if self.consistency is not None:
            lines.append(f"  top-1 consistency under the shifts: {self.consistency:.2%}")
        return "\n".join(lines)


def audit(
    model: Callable[[torch.Tensor], Any],
    data: Iterable[Any] | Dataset[Any],
    shifts: Sequence[ShiftLike],
    *,
    layer: str | None = None,
    output: OutputSelector = None,
    boundary: Boundary = "zeros",
    stride: IntOrTuple = 1,
    margin: IntOrTuple = 0,
    rtol: float | None = None,
    atol: float | None = None,
    classifier: Callable[[torch.Tensor], Any] | None = None,
    loader_batch_size: int = 64,
    batch_size: BatchSize = None,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 10,
    progress: bool = True,
) -> AuditResult:
    """Audit the equivariance of ``model`` over a dataset, batch by batch.

    Each batch is measured as by :func:`~equivariance.check_equivariance`
    (all its shifts in batched forward passes); every sample's largest error
    over ``shifts`` is kept. With ``checkpoint``, the results so far are
    written to that JSON file every ``checkpoint_every`` batches, and a run
    started again with the same file and settings skips the batches already
    done. The data must come in the same order on every run: a checkpoint
    written with other settings, other data or another number of processes
    is refused.

    >>> import torch
    >>> from equivariance.models import LeNet
    >>> data = [torch.rand(4, 1, 38, 38) for _ in range(3)]
    >>> result = audit(LeNet(), data, [(1, 0), (0, -2)], layer="conv4", progress=False)
    >>> result.samples, result.passed_fraction
    (12, 1.0)

    Args:
        model: any ``nn.Module`` or callable from tensor to tensor.
        data: a ``DataLoader``, a map-style ``Dataset``, or any iterable of
            batches; a batch is a tensor ``(N, C, *spatial)`` or a tuple or
            list whose first item is one (``(x, y)``).
        shifts: the shifts to audit, ``Shift`` objects or tuples of ints.
        layer: audit this named submodule's output.
        output: picks the tensor from a tuple or dict output.
        boundary: ``"zeros"`` or ``"circular"``.
        stride: the output's subsampling factor; every shift must be a multiple of it.
        margin: samples dropped at each edge of the compared region.
        rtol: tolerance on the relative error (default from the dtype).
        atol: tolerance on the RMS absolute error where the reference is zero.
        classifier: a callable from inputs to logits ``(N, classes)``; when
            given, top-1 consistency under the shifts is measured too (often
            the model itself, with ``layer=`` naming its feature map).
        loader_batch_size: samples per batch when ``data`` is a ``Dataset``.
        batch_size: samples per forward pass inside a batch (default: from the input
            size), or ``"auto"`` to fit them to the device's memory.
        checkpoint: a JSON file to write progress to and resume from (one
            file per process under ``torch.distributed``, ``.rank<r>`` appended;
            resume with as many processes as wrote them).
        checkpoint_every: batches between checkpoint writes.
        progress: show a progress bar on stderr.

    Returns:
        An :class:`AuditResult`.
    """
    shift_list = as_shift_list(shifts)
    resolve_tolerance(torch.float32, rtol=rtol, atol=atol)  # reject bad tolerances early
    every = as_int(checkpoint_every, "checkpoint_every")
    if every < 1:
        raise InvalidArgument(f"checkpoint_every must be positive, found {every}")
    Forward(model, layer, output)  # a wrong layer name is refused before any work
    judge = Forward(classifier) if classifier is not None else None
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if distributed else 0
    world = torch.distributed.get_world_size() if distributed else 1
    loader, indices = _loader(data, distributed, as_int(loader_batch_size, "loader_batch_size"))

    settings = {
        "shifts": [list(s.offsets) for s in shift_list],
        "layer": layer,
        "boundary": boundary,
        "stride": stride if isinstance(stride, int) else list(stride),
        "margin": margin if isinstance(margin, int) else list(margin),
        "rtol": rtol,
        "atol": atol,
        "classifier": classifier is not None,
        "rank": rank,
        "world_size": world,
    }
    base = None if checkpoint is None else os.fspath(checkpoint)
    path = None if base is None else base + (f".rank{rank}" if distributed else "")
    state, problem = _resume(base, path, settings, rank, world)
    if path is not None:
        _agree(problem, distributed, world)
    errors: list[float] = state["errors"]
    passed: list[bool] = state["passed"]
    consistent: list[bool] = state["consistent"]
    fingerprints: list[int] = state["fingerprints"]
    done: int = state["batches"]
    tolerances: list[float] = state["tolerance"]

    total = len(loader) if hasattr(loader, "__len__") else 0  # type: ignore[arg-type]
    device = _device(model)
    runner = Runner(model, *([] if classifier is None else [classifier]), progress=False)
    with runner, Progress(total, "audit", enabled=progress and rank == 0, unit="batch") as bar:
        bar.update(done)
        # the batches the checkpoint covers are read again and compared with it; under
        # torch.distributed the processes then agree before measuring, as they did on the settings
        unchecked, seen = path is not None, 0
        for number, batch in enumerate(loader):
            seen = number + 1
            x = _inputs(batch, number)
            fingerprint = _fingerprint(x) if path is not None else 0
            if number < done:
                if fingerprint != fingerprints[number]:
                    problem = (
                        f"batch {number} of the data is not the batch {number} the audit checkpoint "
                        f"{path} recorded (other values, shape or order); pass the same data in the same "
                        f"order and with the same loader_batch_size, or {_afresh(base, distributed)}"
                    )
                    break
                continue
            if unchecked:
                _agree(None, distributed, world)
                unchecked = False
            if device is not None:
                x = x.to(device)
            err, ok, same, tolerance = _measure_batch(
                runner, model, classifier, x, shift_list, layer=layer, output=output, boundary=boundary,
                stride=stride, margin=margin, rtol=rtol, atol=atol, batch_size=batch_size,
            )  # fmt: skip
            tolerances = [tolerance.rtol, tolerance.atol]
            errors += err.tolist()
            passed += ok.tolist()
            if same is not None:
                consistent += same.tolist()
            fingerprints.append(fingerprint)
            done = number + 1
            bar.update(worst=max(errors))
            if path is not None and (done % every == 0):
                _save(path, settings, done, errors, passed, consistent, fingerprints, tolerances)
    if unchecked:
        if problem is None and seen < done:
            problem = (
                f"the audit checkpoint {path} records {done} batches done but the data has only {seen}; "
                f"pass the data it was written for, or {_afresh(base, distributed)}"
            )
        _agree(problem, distributed, world)
    if path is not None:
        _save(path, settings, done, errors, passed, consistent, fingerprints, tolerances)

    err_t = torch.tensor(errors, dtype=torch.float64)
    passed_t = torch.tensor(passed, dtype=torch.bool)
    consistent_t = torch.tensor(consistent, dtype=torch.bool) if judge is not None else None
    if distributed:
        err_t, passed_t, consistent_t, tolerances = _gather(
            err_t, passed_t, consistent_t, indices, tolerances, world
        )
    if not tolerances:
        default = resolve_tolerance(torch.float32, rtol=rtol, atol=atol)
        tolerances = [default.rtol, default.atol]
    return AuditResult(err_t, passed_t, consistent_t, len(shift_list), tolerances[0], tolerances[1])


def _loader(
    data: Iterable[Any] | Dataset[Any], distributed: bool, loader_batch_size: int
) -> tuple[Iterable[Any], list[int] | None]:
    """The batches to audit and, under torch.distributed, the dataset index of each sample."""
    if isinstance(data, DataLoader):
        if not distributed:
            return data, None
        if not isinstance(data.sampler, DistributedSampler):
            raise InvalidArgument(
                "under torch.distributed every process would audit the whole DataLoader; pass the "
                "Dataset instead (audit shards it with a DistributedSampler) or build the DataLoader "
                "with sampler=DistributedSampler(dataset, shuffle=False)"
            )
        return data, list(iter(data.sampler))
    if isinstance(data, Dataset) and hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        if loader_batch_size < 1:
            raise InvalidArgument(f"loader_batch_size must be positive, found {loader_batch_size}")
        if not distributed:
            return DataLoader(data, batch_size=loader_batch_size, shuffle=False), None
        sampler: DistributedSampler[Any] = DistributedSampler(data, shuffle=False)
        loader = DataLoader(data, batch_size=loader_batch_size, sampler=sampler)
        return loader, list(iter(sampler))
    if not isinstance(data, Iterable):
        raise InvalidArgument(
            f"data must be a DataLoader, a Dataset or an iterable of batches, found {describe(data)}"
        )
    if distributed:
        raise InvalidArgument(
            "under torch.distributed audit needs to know which samples each process holds; pass a "
            "map-style Dataset or a DataLoader with a DistributedSampler, not a plain iterable"
        )
    return data, None


def _inputs(batch: Any, number: int) -> torch.Tensor:
    if isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    if not isinstance(batch, torch.Tensor):
        raise InvalidArgument(
            f"batch {number} of the data is {describe(batch)}; each batch must be a tensor "
            "(N, C, *spatial) or a tuple or list whose first item is one, e.g. (x, y)"
        )
    return batch


def _device(model: object) -> torch.device | None:
    if isinstance(model, nn.Module):
        for tensor in (*model.parameters(), *model.buffers()):
            return tensor.device
    return None


def _measure_batch(
    runner: Runner,
    model: Callable[[torch.Tensor], Any],
    classifier: Callable[[torch.Tensor], Any] | None,
    x: torch.Tensor,
    shifts: Sequence[Action],
    **options: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, Tolerance]:
    """One batch on the checks' engine: each sample's worst error and verdict over the shifts, and
    (with a classifier, run on the same copies) whether every shift keeps its top-1 class."""
    rtol, atol = options.pop("rtol"), options.pop("atol")
    request = _plan.validate(model, x, "equivariance", shifts, noise_floor=False, **options)
    plan = _plan.make_plan(runner, request)
    also, predictions, base_class = [], None, None
    if classifier is not None:
        judge = Forward(classifier)
        base_class = top1(runner.base(judge, x).output, lambda: "the unshifted batch").cpu()
        predictions = Top1(len(plan.rows), len(x))
        also.append(ModelConsumer(judge, [predictions], None))
    sums, _ = _plan.measure(runner, plan, also)
    dtype = min((x.dtype, plan.base.dtype), key=lambda t: -torch.finfo(t).eps)
    tolerance = resolve_tolerance(dtype, rtol=rtol, atol=atol)
    err, absolute = sample_errors(sums.diff_sq, sums.ref_sq, sums.count.unsqueeze(-1), sums.scale)
    ok = within(err, absolute, tolerance).all(dim=0)
    same = None
    if predictions is not None and base_class is not None:
        same = (predictions.table() == base_class).all(dim=0)
    return err.max(dim=0).values, ok, same, tolerance


def _gather(
    errors: torch.Tensor,
    passed: torch.Tensor,
    consistent: torch.Tensor | None,
    indices: list[int] | None,
    tolerances: list[float],
    world: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, list[float]]:
    """All processes' per-sample results, in dataset order, the sampler's padding removed."""
    dist = torch.distributed
    assert indices is not None
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    columns = [
        errors,
        torch.tensor(indices[: len(errors)], dtype=torch.float64),
        passed.double(),
        consistent.double() if consistent is not None else torch.zeros(len(errors), dtype=torch.float64),
    ]
    local = torch.stack(columns, dim=1).to(device or "cpu")
    length = torch.tensor([len(local)], device=local.device)
    lengths = [torch.zeros_like(length) for _ in range(world)]
    dist.all_gather(lengths, length)
    longest = int(max(int(t) for t in lengths))
    padded = torch.zeros(longest, local.shape[1], dtype=local.dtype, device=local.device)
    padded[: len(local)] = local
    pieces = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(pieces, padded)
    rows = torch.cat([p[: int(n)] for p, n in zip(pieces, lengths)]).cpu()
    order = torch.argsort(rows[:, 1], stable=True)
    rows = rows[order]
    keep = torch.ones(len(rows), dtype=torch.bool)
    keep[1:] = rows[1:, 1] != rows[:-1, 1]
    rows = rows[keep]
    tol = torch.tensor(tolerances or [math.inf, math.inf], dtype=torch.float64, device=local.device)
    dist.all_reduce(tol, op=dist.ReduceOp.MAX)  # processes without a batch have no tolerance yet
    gathered_consistent = rows[:, 3].bool() if consistent is not None else None
    return rows[:, 0].contiguous(), rows[:, 2].bool(), gathered_consistent, tol.cpu().tolist()


def _fingerprint(x: torch.Tensor) -> int:
    """A CRC-32 of a batch's dtype, shape and bytes, to tell a resumed run's data from the checkpoint's."""
    data = x.detach().cpu().contiguous()
    crc = zlib.crc32(f"{data.dtype} {tuple(data.shape)}".encode())
    return zlib.crc32(data.reshape(-1).view(torch.uint8).numpy().data, crc)


def _afresh(base: str | None, distributed: bool) -> str:
    """How to start an audit afresh instead of resuming it."""
    files = f"the {base}.rank* files" if distributed else str(base)
    return f"delete {files} or pass another checkpoint path to start afresh"


def _processes(count: object) -> str:
    """A number of processes in words: 1 process, 2 processes, or several where it is unknown."""
    return "1 process" if count == 1 else f"{count if isinstance(count, int) else 'several'} processes"


def _writers(path: str) -> str:
    """The processes that wrote a checkpoint, as its settings say."""
    try:
        with open(path) as file:
            return _processes(json.load(file)["settings"]["world_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return _processes(None)


def _agree(problem: str | None, distributed: bool, world: int) -> None:
    """Raise the first process's refusal on every process, so that none goes on alone into a collective."""
    if distributed:
        problems: list[str | None] = [None] * world
        torch.distributed.all_gather_object(problems, problem)
        refused = [(rank, text) for rank, text in enumerate(problems) if text is not None]
        if refused:
            rank, text = refused[0]
            raise InvalidArgument(f"process {rank} of {world} refuses its checkpoint: {text}")
    elif problem is not None:
        raise InvalidArgument(problem)


def _resume(
    base: str | None, path: str | None, settings: dict[str, Any], rank: int, world: int
) -> tuple[dict[str, Any], str | None]:
    """The state a checkpoint holds, or an empty one, and why it is refused (None if it is not)."""
    empty: dict[str, Any] = {
        "batches": 0, "errors": [], "passed": [], "consistent": [], "fingerprints": [], "tolerance": [],
    }  # fmt: skip
    if base is None or path is None:
        return empty, None
    distributed = path != base
    if not os.path.exists(path):
        return empty, _stray(base, distributed, rank, world)
    try:
        with open(path) as file:
            state = json.load(file)
    except (OSError, ValueError) as exc:
        return empty, f"the audit checkpoint {path} cannot be read ({exc}); {_afresh(base, distributed)}"
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        return empty, (
            f"{path} is not an audit checkpoint of version {CHECKPOINT_VERSION}; {_afresh(base, distributed)}"
        )
    saved = state.get("settings") or {}
    if saved != settings:
        if saved.get("world_size") != world:
            return empty, (
                f"the audit checkpoint {path} was written by {_processes(saved.get('world_size'))} and "
                f"this run has {world}; resume with as many processes as started the audit, or "
                f"{_afresh(base, distributed)}"
            )
        changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
        return empty, (
            f"the audit checkpoint {path} was written with other settings (differing: "
            f"{', '.join(changed)}); rerun with the same settings, or {_afresh(base, distributed)}"
        )
    lengths = {len(state.get(key) or []) for key in ("errors", "passed")}
    if state.get("batches") != len(state.get("fingerprints") or []) or len(lengths) != 1:
        return empty, f"the audit checkpoint {path} is inconsistent; {_afresh(base, distributed)}"
    return {key: state[key] for key in empty}, None


def _stray(base: str, distributed: bool, rank: int, world: int) -> str | None:
    """Why a checkpoint written by another number of processes is there, where this run has none."""
    if not distributed:
        if os.path.exists(f"{base}.rank0"):
            processes = _writers(f"{base}.rank0")
            return (
                f"there is no audit checkpoint {base} but there is {base}.rank0: the audit was started "
                f"under torch.distributed by {processes}; resume it under torchrun with as "
                f"many, or {_afresh(base, True)}"
            )
        return None
    if rank != 0:
        return None  # a process may have stopped before its first checkpoint while the others wrote theirs
    if os.path.exists(base):
        return (
            f"there is no audit checkpoint {base}.rank0 but there is {base}: the audit was started by a "
            f"single process; resume it without torchrun, or {_afresh(base, False)}"
        )
    if os.path.exists(f"{base}.rank{world}"):
        return (
            f"there is no audit checkpoint {base}.rank0 but there is {base}.rank{world}: the audit was "
            f"started by {_writers(f'{base}.rank{world}')} and this run has {world}; resume "
            f"with as many processes as started the audit, or {_afresh(base, True)}"
        )
    return None


def _save(
    path: str,
    settings: dict[str, Any],
    batches: int,
    errors: list[float],
    passed: list[bool],
    consistent: list[bool],
    fingerprints: list[int],
    tolerance: list[float],
) -> None:
    state = {
        "version": CHECKPOINT_VERSION,
        "settings": settings,
        "batches": batches,
        "tolerance": tolerance,
        "fingerprints": fingerprints,
        "errors": errors,
        "passed": passed,
        "consistent": consistent,
    }
    temporary = f"{path}.tmp"
    with open(temporary, "w") as file:
        json.dump(state, file)
    os.replace(temporary, path)  # atomic: an interrupted write leaves the previous checkpoint
