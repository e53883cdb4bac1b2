"""A torchrun worker for tests/test_audit.py: a small audit that can be interrupted and resumed.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/_audit_worker.py OUT \\
        [--checkpoint PATH] [--stop-after 3,4]

Each process writes ``OUT.rank<r>.json``: the dataset indices of the samples whose
unshifted batch went through the model in this run, in order, and the audit's result,
or the message of the ``InvalidArgument`` it raised, or null when it was interrupted.
``--stop-after`` interrupts process ``r`` when its model is about to measure batch
``stop[r]`` (after ``stop[r]`` batches), as a crash or a pre-emption would.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from torch import nn
from torch.utils.data import TensorDataset

from equivariance.audit import audit
from equivariance.errors import InvalidArgument
from equivariance.shifts import shifts_in_box

SAMPLES = 37  # 19 a process under two, the last one the sampler's padding: batches of 4, 4, 4, 4, 3
LOADER_BATCH_SIZE = 4
SHIFTS = shifts_in_box(1)


class Interrupted(BaseException):
    """The stand-in for a stop part-way through an audit (a BaseException, as KeyboardInterrupt is,
    so that the audit does not report it as the model's error)."""


class Recording(nn.Module):
    """A translation-equivariant trunk and a classifier head that record the samples audited.

    With ``batch_size=1`` every shifted copy goes through the model alone, so the
    calls with more than one sample are the unshifted batches, one per batch audited.
    ``classifier`` is the same network without the recording.
    """

    def __init__(self, images: torch.Tensor, stop: int | None) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
        self.head = nn.Sequential(nn.Flatten(), nn.LazyLinear(5))
        self.classifier = nn.Sequential(self.trunk, self.head)
        self.classifier(images[:1])
        self.index = {image.numpy().tobytes(): i for i, image in enumerate(images)}
        self.stop = stop
        self.batches = 0
        self.audited: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) > 1:
            if self.batches == self.stop:
                raise Interrupted
            self.batches += 1
            self.audited += [self.index[image.numpy().tobytes()] for image in x]
        out: torch.Tensor = self.classifier(x)
        return out


def data() -> tuple[TensorDataset, torch.Tensor]:
    """The dataset every process and every run audits (the same on each: a fixed seed)."""
    generator = torch.Generator().manual_seed(1)
    images = torch.zeros(SAMPLES, 1, 20, 20)
    images[..., 4:16, 4:16] = torch.rand(SAMPLES, 1, 12, 12, generator=generator)
    return TensorDataset(images, torch.zeros(SAMPLES, dtype=torch.long)), images


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--stop-after", default=None, help="batches each process audits before it stops")
    args = parser.parse_args()

    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank() if distributed else 0
    stop = None if args.stop_after is None else int(args.stop_after.split(",")[rank])
    dataset, images = data()
    torch.manual_seed(0)  # the same weights on every process and in every run
    model = Recording(images, stop)
    report: dict[str, object] = {"result": None, "refused": None}
    try:
        result = audit(
            model, dataset, SHIFTS, layer="trunk", classifier=model.classifier, loader_batch_size=LOADER_BATCH_SIZE,
            batch_size=1, checkpoint=args.checkpoint, checkpoint_every=2, progress=False,
        )  # fmt: skip
        assert result.consistent is not None
        report["result"] = {
            "errors": result.errors.tolist(),
            "passed": result.passed.tolist(),
            "consistent": result.consistent.tolist(),
        }
    except Interrupted:
        pass
    except InvalidArgument as error:
        report["refused"] = str(error)
    report["audited"] = model.audited
    with open(f"{args.out}.rank{rank}.json", "w") as file:
        json.dump(report, file)
    if distributed:
        torch.distributed.barrier()  # every process has written its report before any exits
        torch.distributed.destroy_process_group()
    sys.exit(0 if report["result"] is not None else 3)


if __name__ == "__main__":
    main()
