"""Audit a model's shift equivariance over a whole dataset, on one process or many.

    python examples/audit_dataset.py                        # one process
    torchrun --standalone --nproc_per_node 2 examples/audit_dataset.py   # two processes, same numbers

Under torchrun each process audits its shard of the dataset (a
DistributedSampler) and rank 0 prints the combined result. Prints the result
as JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from torch.utils.data import TensorDataset

from equivariance.audit import audit
from equivariance.models import LeNet
from equivariance.shifts import shifts_in_box


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--checkpoint", default=None, help="a JSON file to resume from")
    args = parser.parse_args()

    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        torch.distributed.init_process_group("gloo")
    torch.manual_seed(0)  # the same weights and data on every process
    model = LeNet()
    images = torch.zeros(args.samples, 1, 38, 38)
    images[..., 5:33, 5:33] = torch.rand(args.samples, 1, 28, 28)
    labels = torch.randint(0, 10, (args.samples,))
    dataset = TensorDataset(images, labels)

    result = audit(
        model, dataset, shifts_in_box(2), layer="conv4", loader_batch_size=8,
        batch_size=1 if args.json else None,  # one image a pass: bitwise the same under any sharding
        checkpoint=args.checkpoint, progress=not args.json,
    )  # fmt: skip
    if not distributed or torch.distributed.get_rank() == 0:
        if args.json:
            print(json.dumps({"errors": result.errors.tolist(), "passed": result.passed.tolist()}))
        else:
            print(result)
    if distributed:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
