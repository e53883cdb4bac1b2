"""Dataset-scale audits: the equivariance error of a model over a whole dataset.

[`audit`][equivariance.audit.audit] streams a dataset batch by batch through the checks' engine, keeps every
sample's worst-over-shifts error (so quantiles are exact, and a run sharded under ``torchrun`` gives a single
process's numbers), and can resume from a checkpoint that refuses other settings, weights or data. The
guarantees and their limits are in docs/audit.md.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from equivariance._engine import arguments as _arguments
from equivariance._engine import plan as _plan
from equivariance._engine.arguments import BatchSize
from equivariance._engine.checkpoint import Checkpoint, Record, fingerprint, identity, selector
from equivariance._engine.forward import Forward, OutputSelector
from equivariance._engine.judge import sample_errors, within
from equivariance._engine.part_report import part_errors
from equivariance._engine.parts import Call, is_graph
from equivariance._engine.progress import Progress
from equivariance._engine.runner import ModelConsumer, Runner
from equivariance._engine.sinks import Top1
from equivariance._engine.validation import as_float, as_int, describe, per_dim
from equivariance.actions import Action, Boundary, check_boundary
from equivariance.errors import InvalidArgument
from equivariance.fields import FieldSpec
from equivariance.shifts import Shift, ShiftLike, as_shift_list
from equivariance.tolerances import resolve_tolerance
from equivariance.transforms import as_transform_list

IntOrTuple = int | Sequence[int]

__all__ = ["AuditResult", "audit"]

QUANTILES = (0.5, 0.9, 0.99, 1.0)


@dataclass(frozen=True)
class AuditResult:
    """Per-sample results of an audit and their summaries.

    Attributes:
        errors: each sample's largest error over the shifts (float64, dataset order).
        passed: whether each sample is within the tolerance for every shift.
        consistent: whether each sample's top-1 class is the same for every shift, or None without a
            ``classifier``.
        shifts: the number of shifts (or elements, with ``transforms=``) audited.
        rtol: the relative tolerance applied.
        atol: the absolute tolerance applied where the reference output is zero.
        noun: what the elements are called in ``str()``: ``"shifts"``, or ``"transforms"`` for an audit of
            several inputs.
    """

    errors: torch.Tensor
    passed: torch.Tensor
    consistent: torch.Tensor | None
    shifts: int
    rtol: float
    atol: float
    noun: str = "shifts"

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
            f"audit: {self.samples} samples x {self.shifts} {self.noun}, "
            f"{self.passed_fraction:.2%} within rtol={self.rtol:g} (atol={self.atol:g})",
            f"  error: p50={q[0.5]:.3g} p90={q[0.9]:.3g} p99={q[0.99]:.3g} max={q[1.0]:.3g} "
            f"mean={self.mean:.3g}",
        ]
        if self.consistency is not None:
            lines.append(f"  top-1 consistency under the {self.noun}: {self.consistency:.2%}")
        return "\n".join(lines)


def audit(
    model: Callable[..., Any],
    data: Iterable[Any] | Dataset[Any],
    shifts: Sequence[ShiftLike] | None = None,
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
    transforms: Sequence[Action] | None = None,
    inputs: FieldSpec = None,
    outputs: FieldSpec = None,
) -> AuditResult:
    """Audit the equivariance of ``model`` over a dataset, batch by batch.

    Each batch is measured as by [`check_equivariance`][equivariance.check.check_equivariance]; every sample's
    largest error over ``shifts`` is kept. A checkpoint resumes a stopped run and refuses other settings,
    weights or data (see "Dataset audits").

    Args:
        model: any ``nn.Module`` or callable from tensor to tensor.
        data: a ``DataLoader``, a map-style ``Dataset``, or any iterable of batches: tensors ``(N, C,
            *spatial)`` or tuples whose first item is one (``(x, y)``).
        shifts: the shifts to audit, [`Shift`][equivariance.shifts.Shift] objects or tuples of ints.
        layer: audit this named submodule's output.
        output: picks the tensor from a tuple or dict output.
        boundary: ``"zeros"`` or ``"circular"``.
        stride: the output's subsampling factor; every shift must be a multiple of it.
        margin: samples dropped at each edge of the compared region.
        rtol: tolerance on the relative error (default from the dtype).
        atol: tolerance on the RMS absolute error where the reference is zero.
        classifier: a callable from inputs to logits ``(N, classes)``; top-1 consistency under the shifts is
            measured too.
        loader_batch_size: samples per batch when ``data`` is a ``Dataset``.
        batch_size: samples per forward pass inside a batch, or ``"auto"``.
        checkpoint: a file to write progress to and resume from (one per process under torch.distributed).
        checkpoint_every: batches between checkpoint writes.
        progress: show a progress bar on stderr.
        transforms: with ``inputs=``, the elements to audit in place of shifts (e.g. ``SO3(16, seed=0)``).
        inputs: for points, sets or graphs, the field type of each of the model's arguments, as in
            [`check_equivariance`][equivariance.check_equivariance]; a batch is then the model's arguments (a
            tuple, a dict or a torch_geometric ``Batch``).
        outputs: with ``inputs=``, the field type of each output.

    Returns:
        An [`AuditResult`][equivariance.audit.AuditResult].

    Examples:
        >>> import torch
        >>> from equivariance.models import LeNet
        >>> data = [torch.rand(4, 1, 38, 38) for _ in range(3)]
        >>> result = audit(LeNet(), data, [(1, 0), (0, -2)], layer="conv4", progress=False)
        >>> result.samples, result.passed_fraction
        (12, 1.0)

        Point clouds, batches of ``(positions, features)``:

        >>> from equivariance.euclidean import SO3
        >>> from equivariance.fields import Positions, Scalars, Vectors
        >>> def offsets(pos, h):  # each point's offset from the centroid, weighted by its first feature
        ...     return (pos - pos.mean(-2, keepdim=True)) * h[..., :1]
        >>> clouds = [(torch.randn(4, 6, 3), torch.randn(4, 6, 2)) for _ in range(3)]
        >>> result = audit(offsets, clouds, transforms=SO3(8, seed=0), inputs=(Positions(), Scalars()),
        ...                outputs=Vectors(), progress=False)
        >>> result.samples, result.passed_fraction
        (12, 1.0)
    """
    points = transforms is not None or inputs is not None or outputs is not None
    if points:
        options = _point_options(
            shifts, transforms, inputs, outputs, boundary, stride, margin, rtol, atol, batch_size, checkpoint,
            checkpoint_every,
        )  # fmt: skip
    elif shifts is None:
        raise InvalidArgument(
            "audit needs the shifts to audit, e.g. audit(model, data, shifts_in_box(2)), or for a model of "
            "point clouds, sets or graphs transforms=, inputs= and outputs="
        )
    else:
        options = _options(
            shifts, boundary, stride, margin, rtol, atol, batch_size, checkpoint, checkpoint_every
        )
    forward = Forward(model, layer, output)
    judge = _Classifier(classifier) if classifier is not None else None
    world = _World.now()
    loader, indices = _loader(data, world.distributed, as_int(loader_batch_size, "loader_batch_size"))
    store = _checkpoint(options, model, layer, output, classifier, world)
    try:
        if store is not None:
            _agree(store.open(), world)
        records, tolerance = _run(forward, judge, loader, options, store, world, progress and world.rank == 0)
    finally:
        if store is not None:
            store.close()
    return _result(records, tolerance, options, judge is not None, indices, world)


@dataclass(frozen=True)
class _World:
    """The processes auditing: one, or those of torch.distributed."""

    distributed: bool
    rank: int
    size: int

    @classmethod
    def now(cls) -> _World:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return cls(True, dist.get_rank(), dist.get_world_size())
        return cls(False, 0, 1)


@dataclass(frozen=True)
class _Options:
    """The audit's arguments, checked and normalised once: plain ints and floats, one value per dim."""

    shifts: list[Shift]
    boundary: Boundary
    stride: tuple[int, ...]
    margin: tuple[int, ...]
    rtol: float | None
    atol: float | None
    batch_size: BatchSize
    checkpoint: str | None
    every: int
    elements: list[Action] | None = None  # with inputs=: the elements audited, in place of shifts
    inputs: FieldSpec = None
    outputs: FieldSpec = None

    @property
    def count(self) -> int:
        """The number of elements audited."""
        return len(self.shifts) if self.elements is None else len(self.elements)


def _point_options(
    shifts: object, transforms: object, inputs: object, outputs: object, boundary: object, stride: object,
    margin: object, rtol: object, atol: object, batch_size: object, checkpoint: object, every: object,
) -> _Options:  # fmt: skip
    """The options of an audit of several inputs (``inputs=``): the grid's refused, the elements listed."""
    _arguments.no_grid_options(
        shifts=shifts is not None, stride=stride != 1, margin=margin != 0, boundary=boundary != "zeros"
    )
    if inputs is None or outputs is None:
        raise InvalidArgument(
            "an audit of several inputs needs transforms=, inputs= and outputs=: the elements, the field "
            "type of each of the model's arguments and of each output, e.g. audit(model, loader, "
            "transforms=SO3(16, seed=0), inputs=(Positions(), Scalars()), outputs=(Scalars(nodes=None), "
            "Vectors()))"
        )
    if transforms is None:
        raise InvalidArgument(
            "inputs= needs the elements to audit: pass transforms=, e.g. transforms=SO3(16, seed=0)"
        )
    elements = as_transform_list(transforms)
    grid = _options([Shift(0)], "zeros", 1, 0, rtol, atol, batch_size, checkpoint, every)
    return _Options([], "zeros", (), (), grid.rtol, grid.atol, grid.batch_size, grid.checkpoint, grid.every,
                    elements, inputs, outputs)  # fmt: skip


def _options(
    shifts: object,
    boundary: object,
    stride: object,
    margin: object,
    rtol: object,
    atol: object,
    batch_size: object,
    checkpoint: object,
    every: object,
) -> _Options:
    shift_list = as_shift_list(shifts)
    d = shift_list[0].ndim
    resolve_tolerance(torch.float32, rtol=rtol, atol=atol)  # refuses bad tolerances with their names
    size: BatchSize = None
    if batch_size == "auto":
        size = "auto"
    elif batch_size is not None:
        size = as_int(batch_size, "batch_size")
        if size < 1:
            raise InvalidArgument(f"batch_size must be positive, found {size}; pass 1 or more, or 'auto'")
    checkpoint_every = as_int(every, "checkpoint_every")
    if checkpoint_every < 1:
        raise InvalidArgument(
            f"checkpoint_every must be positive, found {checkpoint_every}; pass 1 to save after every batch"
        )
    return _Options(
        shifts=shift_list,
        boundary=check_boundary(boundary),
        stride=per_dim(stride, d, "stride", minimum=1),
        margin=per_dim(margin, d, "margin", minimum=0),
        rtol=as_float(rtol, "rtol", allow_none=True),
        atol=as_float(atol, "atol", allow_none=True),
        batch_size=size,
        checkpoint=_checkpoint_path(checkpoint),
        every=checkpoint_every,
    )


def _checkpoint_path(checkpoint: object) -> str | None:
    if checkpoint is None:
        return None
    if not isinstance(checkpoint, (str, bytes, os.PathLike)):
        raise InvalidArgument(
            f"checkpoint must be a file path (a str or a pathlib.Path) or None, found "
            f"{describe(checkpoint)}; pass e.g. checkpoint='audit.json'"
        )
    path = os.fsdecode(os.fspath(checkpoint))
    if not path:
        raise InvalidArgument("checkpoint is an empty path; pass a file name, e.g. checkpoint='audit.json'")
    return path


def _checkpoint(
    options: _Options, model: object, layer: str | None, output: object, classifier: object, world: _World
) -> Checkpoint | None:
    """This process's checkpoint (not yet opened), or None without one."""
    if options.checkpoint is None:
        return None
    settings = _recorded(options, model, layer, output, classifier, world)
    path = options.checkpoint + (f".rank{world.rank}" if world.distributed else "")
    return Checkpoint(options.checkpoint, path, settings, world.rank, world.size)


def _recorded(
    options: _Options, model: object, layer: str | None, output: object, classifier: object, world: _World
) -> dict[str, Any]:
    """Everything a checkpoint's numbers depend on, as plain JSON values."""
    model_identity = identity(model)
    if classifier is None or classifier is model:
        classifier_identity = None if classifier is None else model_identity
    else:
        classifier_identity = identity(classifier)
    settings = {
        "shifts": [list(s.offsets) for s in options.shifts],
        **_point_settings(options),
        "layer": layer,
        "output": selector(output),
        "boundary": options.boundary,
        "stride": list(options.stride),
        "margin": list(options.margin),
        "rtol": options.rtol,
        "atol": options.atol,
        "model": model_identity,
        "classifier": classifier_identity,
        "rank": world.rank,
        "world_size": world.size,
    }
    recorded: dict[str, Any] = json.loads(json.dumps(settings))
    return recorded


def _run(
    forward: Forward,
    judge: Forward | None,
    loader: Iterable[Any],
    options: _Options,
    store: Checkpoint | None,
    world: _World,
    progress: bool,
) -> tuple[list[Record], list[float]]:
    """Every batch's record, those a checkpoint holds compared with the data rather than measured."""
    records = list(store.records) if store is not None else []
    tolerance = list(store.tolerance) if store is not None else []
    done = len(records)
    total = len(loader) if hasattr(loader, "__len__") else 0  # type: ignore[arg-type]
    device = _device(forward.model)
    worst = max((max(r.errors) for r in records), default=0.0)
    # the batches the checkpoint covers are read again and compared with it; under
    # torch.distributed the processes then agree before measuring, as they did on the settings
    problem, unchecked, seen = None, store is not None, 0
    runner = Runner(forward.model, *([] if judge is None else [judge.model]), progress=False)
    with runner, Progress(total, "audit", enabled=progress, unit="batch") as bar:
        bar.update(done)
        try:
            for number, batch in enumerate(loader):
                seen = number + 1
                x = _inputs(batch, number, options)
                if number < done:
                    assert store is not None
                    problem = store.compare(number, _tensors(x), _samples(x))
                    if problem is None and number == 0:
                        moved = _to(x, device)
                        again = Record(
                            records[0].fingerprint,
                            *_measure_batch(runner, forward, judge, moved, options)[:3],
                        )
                        problem = _changed(records[0], again, tolerance, store.afresh())
                    if problem is not None:
                        break
                    continue
                if unchecked:
                    _agree(None, world)
                    unchecked = False
                crc = fingerprint(_tensors(x)) if store is not None else 0
                moved = _to(x, device)
                errors, passed, consistent, tolerance = _measure_batch(runner, forward, judge, moved, options)
                records.append(Record(crc, errors, passed, consistent))
                worst = max(worst, *records[-1].errors)
                bar.update(worst=worst)
                if store is not None and len(records) % options.every == 0:
                    store.save(records, tolerance)
        except BaseException:
            if store is not None:
                store.save(records, tolerance)  # Ctrl-C or a failure: keep the batches done
            raise
    if unchecked:
        assert store is not None
        if problem is None and seen < done:
            problem = (
                f"the audit checkpoint {store.path} records {done} batches done but the data has only "
                f"{seen}; pass the data it was written for, or {store.afresh()}"
            )
        _agree(problem, world)
    if store is not None:
        store.save(records, tolerance)
    return records, tolerance


def _point_settings(options: _Options) -> dict[str, Any]:
    """What an audit of several inputs adds to its checkpoint's settings: the elements and the field
    types (by their printed form); nothing for an audit of shifts, whose checkpoints stay as they were."""
    if options.elements is None:
        return {}
    return {
        "transforms": [e.to_json() for e in options.elements],
        "inputs": repr(options.inputs),
        "outputs": repr(options.outputs),
    }


RESUME_SLACK = 1e-3
"""How far (relative, beyond the tolerance) a resumed audit's first batch, measured again, may be from
what the checkpoint recorded: the last bits of an error may change with the machine, not its meaning."""


def _changed(recorded: Record, again: Record, tolerance: list[float], afresh: str) -> str | None:
    """Why batch 0, measured again on resume, says the model computes something else than when the
    checkpoint was written (weights and settings alike: a plain attribute, a global, a hook); None if
    its results agree."""
    slack = max(tolerance) if tolerance else 0.0
    for i, (old, new) in enumerate(zip(recorded.errors, again.errors)):
        if math.isnan(old) and math.isnan(new):
            continue
        if not abs(new - old) <= slack + RESUME_SLACK * max(abs(old), abs(new)):
            what = f"sample {i} has error {new:.3g} now and {old:.3g} in the checkpoint"
            break
    else:
        if recorded.consistent == again.consistent:
            return None
        what = "the top-1 consistency of its samples differs"
    return (
        f"batch 0, measured again to resume, gives other results than the checkpoint recorded ({what}), "
        "although the weights, buffers and settings are the same: the model computes something else "
        "than when the checkpoint was written (a plain attribute, a global setting, a hook, or "
        f"randomness in forward), which a checkpoint cannot see; rerun with the model as it was, or {afresh}"
    )


def _measure_batch(
    runner: Runner, forward: Forward, judge: Forward | None, x: Any, options: _Options
) -> tuple[list[float], list[bool], list[bool] | None, list[float]]:
    """One batch on the checks' engine, as ``check_equivariance`` measures it: each sample's worst error
    (over the elements, and over the output parts each judged by its own size) and verdict, the tolerance
    applied, and (with a classifier, run on the same copies) whether every element keeps each sample's
    top-1 class."""
    common: dict[str, Any] = {"batch_size": options.batch_size, "layer": forward.layer}
    common["output"] = forward.output
    if options.elements is None:
        request = _arguments.validate(
            forward.model, x, "equivariance", options.shifts, stride=options.stride, margin=options.margin,
            boundary=options.boundary, noise_floor=False, **common,
        )  # fmt: skip
    else:
        request = _arguments.validate_parts(
            forward.model, x, "equivariance", options.elements, inputs=options.inputs,
            outputs=options.outputs, **common,
        )  # fmt: skip
    plan = _plan.make_plan(runner, request)
    given = x if request.arguments is None else request.arguments
    also, predictions, unmoved = [], None, None
    if judge is not None:
        unmoved = runner.base(judge, given).output.argmax(dim=1).cpu()  # on a copy: it may write to it
        predictions = Top1(len(plan.rows), len(given))
        also.append(ModelConsumer(judge, [predictions], None))
    dtype = min((request.x.dtype, plan.base.dtype), key=lambda t: -torch.finfo(t).eps)
    tolerance = resolve_tolerance(dtype, rtol=options.rtol, atol=options.atol)
    if plan.outputs is None:
        sums, _ = _plan.measure(runner, plan, also)
        err, absolute = sample_errors(sums.diff_sq, sums.ref_sq, sums.count.unsqueeze(-1), sums.scale)
        worst, ok = err.max(dim=0).values, within(err, absolute, tolerance).all(dim=0)
    else:
        errors, _, passes, _ = part_errors(plan, _plan.measure_parts(runner, plan, also)[0], tolerance)
        worst = torch.stack(errors).amax(dim=(0, 1))  # over the parts and the elements
        ok = torch.stack(passes).all(dim=0).all(dim=0)
    consistent = None
    if predictions is not None and unmoved is not None:  # the elements' rows, not the noise floor's
        consistent = (predictions.table()[plan.noise_rows :] == unmoved).all(dim=0).tolist()
    return worst.tolist(), ok.tolist(), consistent, [tolerance.rtol, tolerance.atol]


class _Classifier(Forward):
    """The ``classifier``: a ``Forward`` whose output must be logits ``(N, classes)``."""

    def __call__(self, x: torch.Tensor | Call, batch_note: str = "", *, detach: bool = True) -> torch.Tensor:
        logits = super().__call__(x, batch_note, detach=detach)
        if logits.dim() != 2:
            raise InvalidArgument(
                f"the classifier returned an output of shape {tuple(logits.shape)}; top-1 consistency needs "
                "logits (N, classes): pass a classifier that ends in pooling and a linear head, or "
                "drop classifier="
            )
        return logits


def _result(
    records: list[Record],
    tolerance: list[float],
    options: _Options,
    classified: bool,
    indices: list[int] | None,
    world: _World,
) -> AuditResult:
    """The records as an AuditResult, gathered from every process under torch.distributed."""
    errors = torch.tensor([e for r in records for e in r.errors], dtype=torch.float64)
    passed = torch.tensor([p for r in records for p in r.passed], dtype=torch.bool)
    consistent = None
    if classified:
        consistent = torch.tensor([c for r in records for c in r.consistent or []], dtype=torch.bool)
    if world.distributed:
        errors, passed, consistent, tolerance = _gather(
            errors, passed, consistent, indices, tolerance, world.size
        )
    if not tolerance:
        default = resolve_tolerance(torch.float32, rtol=options.rtol, atol=options.atol)
        tolerance = [default.rtol, default.atol]
    noun = "shifts" if options.elements is None else "transforms"
    return AuditResult(errors, passed, consistent, options.count, tolerance[0], tolerance[1], noun)


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
            raise InvalidArgument(
                f"loader_batch_size must be positive, found {loader_batch_size}; pass e.g. "
                "loader_batch_size=64"
            )
        if not distributed:
            return DataLoader(data, batch_size=loader_batch_size, shuffle=False), None
        sampler: DistributedSampler[Any] = DistributedSampler(data, shuffle=False)
        loader = DataLoader(data, batch_size=loader_batch_size, sampler=sampler)
        return loader, list(iter(sampler))
    if isinstance(data, torch.Tensor):
        raise InvalidArgument(
            f"data is a tensor of shape {tuple(data.shape)}, which audit would iterate sample by sample; "
            "pass a list of batches, e.g. [x] for one batch, or TensorDataset(x) to batch it with "
            "loader_batch_size"
        )
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


def _inputs(batch: Any, number: int, options: _Options) -> Any:
    """What batch ``number`` gives the model: a tensor (the first item of a tuple), or with ``inputs=``
    the model's arguments (see ``audit``)."""
    if options.elements is not None:
        return _arguments_of(batch, number, options.inputs)
    if isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    if not isinstance(batch, torch.Tensor):
        raise InvalidArgument(
            f"batch {number} of the data is {describe(batch)}; each batch must be a tensor "
            "(N, C, *spatial) or a tuple or list whose first item is one, e.g. (x, y); for a model of "
            "several inputs (points, graphs) pass transforms=, inputs= and outputs="
        )
    return batch


def _arguments_of(batch: Any, number: int, inputs: FieldSpec) -> Any:
    """A batch as the model's arguments: the first ``len(inputs)`` items of a tuple or list (the first
    item for one field type), a dict or a graph as it is."""
    if isinstance(batch, (tuple, list)) and batch and not is_graph(batch):
        if isinstance(inputs, (tuple, list)):
            if len(batch) < len(inputs):
                raise InvalidArgument(
                    f"batch {number} of the data has {len(batch)} items but inputs= gives {len(inputs)} "
                    "field types, one per argument of the model; pass batches that hold every argument"
                )
            return tuple(batch[: len(inputs)])
        return batch[0]
    if isinstance(batch, (torch.Tensor, dict)) or is_graph(batch):
        return batch
    raise InvalidArgument(
        f"batch {number} of the data is {describe(batch)}; with inputs= each batch must be the model's "
        "arguments: a tuple or list (e.g. (pos, h) or (pos, h, y)), a dict or a torch_geometric Batch"
    )


def _tensors(x: Any) -> list[torch.Tensor]:
    """The tensors of a batch, in order, for its fingerprint."""
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for t in x if isinstance(t, torch.Tensor)]
    if isinstance(x, dict):
        return [x[k] for k in sorted(x, key=str) if isinstance(x[k], torch.Tensor)]
    keys = sorted(x.keys(), key=str)  # a torch_geometric Data or Batch
    return [getattr(x, k) for k in keys if isinstance(getattr(x, k), torch.Tensor)]


def _samples(x: Any) -> int:
    """The number of samples of a batch: the first tensor's batch axis, a Batch's graphs."""
    if is_graph(x):
        return int(getattr(x, "num_graphs", 1))
    return len(_tensors(x)[0])


def _to(x: Any, device: torch.device | None) -> Any:
    """A batch on ``device`` (None: as it is)."""
    if device is None:
        return x
    if isinstance(x, torch.Tensor) or is_graph(x):
        return x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(t.to(device) if isinstance(t, torch.Tensor) else t for t in x)
    if isinstance(x, dict):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in x.items()}
    return x


def _device(model: object) -> torch.device | None:
    if isinstance(model, nn.Module):
        for tensor in (*model.parameters(), *model.buffers()):
            return tensor.device
    return None


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


def _agree(problem: str | None, world: _World) -> None:
    """Raise the first process's refusal on every process, so that none goes on alone into a collective."""
    if world.distributed:
        problems: list[str | None] = [None] * world.size
        torch.distributed.all_gather_object(problems, problem)
        refused = [(rank, text) for rank, text in enumerate(problems) if text is not None]
        if refused:
            rank, text = refused[0]
            raise InvalidArgument(f"process {rank} of {world.size} refuses its checkpoint: {text}")
    elif problem is not None:
        raise InvalidArgument(problem)
