"""Fault injection for tests/test_checkpoint_faults.py: audits killed at random points, then resumed.

    python tests/_checkpoint_faults_worker.py DIR SEED [SEED ...]

Imports torch once, then forks a child process per attempt (a fresh import would
cost seconds each). For every seed, a child runs the audit uninterrupted (the
reference); then children run the same audit on one checkpoint, each stopped at
an event drawn at random from that seed: a forward pass, an append to the
results file or the replacement of the manifest. A stop is one of

- ``kill``: SIGKILL, as ``kill -9`` or a lost machine, nothing runs after it;
- ``tear``: an append writes a random prefix of its bytes, then SIGKILL (a torn write);
- ``interrupt``: a KeyboardInterrupt, as Ctrl-C, which the audit handles.

After up to three stops, a child runs to the end. Prints one JSON object: per seed,
the reference, the final result and the stops that happened.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from equivariance._engine import checkpoint as _checkpoint
from equivariance.audit import audit
from equivariance.shifts import shifts_in_box

BATCHES, SAMPLES = 6, 2


class Stop:
    """Counts events in a child by kind, stops it at event ``at`` (a kind and an index), and notes in
    ``where`` what the event was."""

    def __init__(self, at: tuple[str, int] | None, how: str, rng: random.Random, where: Path) -> None:
        self.at, self.how, self.rng, self.where = at, how, rng, where
        self.events = {"forward": 0, "append": 0, "manifest": 0}
        write_all, replace = _checkpoint.write_all, _checkpoint.replace

        def counted_write(fd: int, data: bytes) -> None:
            if self.due("append") and self.how == "tear":
                self.where.write_text("torn append")
                os.write(fd, data[: self.rng.randrange(len(data))])
                os.kill(os.getpid(), signal.SIGKILL)
            self.act("append")
            write_all(fd, data)

        def counted_replace(source: str, target: str) -> None:
            self.act("manifest")
            replace(source, target)

        _checkpoint.write_all, _checkpoint.replace = counted_write, counted_replace  # type: ignore[assignment]

    def due(self, kind: str) -> bool:
        return (kind, self.events[kind]) == self.at

    def act(self, kind: str) -> None:
        """Count one event; stop here if it is the chosen one."""
        due = self.due(kind)
        self.events[kind] += 1
        if due:
            self.where.write_text(kind)
            if self.how == "interrupt":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGKILL)


class Model(nn.Module):
    def __init__(self, stop: Stop) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 2, 3)
        self.stop = stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.stop.act("forward")
        out: torch.Tensor = self.conv(x)
        return out


def attempt(path: Path | None, out: Path, at: tuple[str, int] | None, how: str, seed: int) -> None:
    """In a child: the audit, stopped at event ``at``; writes its result and event count to ``out``."""
    stop = Stop(at, how, random.Random(seed), out.with_suffix(".where"))
    model = Model(stop)
    torch.manual_seed(1)
    head = nn.Sequential(nn.Conv2d(1, 3, 3), nn.AdaptiveMaxPool2d(1), nn.Flatten())
    data = list(
        torch.randn(BATCHES * SAMPLES, 1, 8, 8, generator=torch.Generator().manual_seed(2)).split(SAMPLES)
    )
    result = audit(
        model, data, shifts_in_box(1), classifier=head, batch_size=4, checkpoint=path, checkpoint_every=2,
        progress=False,
    )  # fmt: skip
    assert result.consistent is not None
    numbers = [result.errors.tolist(), result.passed.tolist(), result.consistent.tolist()]
    out.write_text(json.dumps({"result": numbers, "forwards": stop.events["forward"]}))


def child(path: Path | None, out: Path, at: tuple[str, int] | None, how: str, seed: int) -> str:
    """Run ``attempt`` in a forked child; how it ended: "done", "killed" or "interrupted"."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            attempt(path, out, at, how, seed)
        except KeyboardInterrupt:
            code = 3
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        return "killed"
    code = os.WEXITSTATUS(status)
    if code == 3:
        return "interrupted"
    if code != 0:
        raise SystemExit(f"an attempt failed with exit code {code}")
    return "done"


def trial(folder: Path, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    reference = folder / "reference.out"
    assert child(None, reference, None, "kill", seed) == "done"
    forwards = json.loads(reference.read_text())["forwards"]
    path, out, stops = folder / "audit.json", folder / "attempt.out", []
    for number in range(3):
        kind = rng.choice(["forward", "append", "manifest"])
        how = rng.choice(["tear" if kind == "append" else "kill", "interrupt"])
        at = (kind, rng.randrange(forwards if kind == "forward" else BATCHES // 2))
        where = out.with_suffix(".where")
        where.unlink(missing_ok=True)
        ended = child(path, out, at, how, seed * 100 + number)
        stops.append({"how": how, "ended": ended, "where": where.read_text() if where.exists() else None})
        if ended == "done":
            break
    if not out.exists() or stops[-1]["ended"] != "done":
        assert child(path, out, None, "kill", seed) == "done"
    return {
        "reference": json.loads(reference.read_text())["result"],
        "resumed": json.loads(out.read_text())["result"],
        "stops": stops,
        "batches": json.loads(path.read_text())["batches"],
    }


def main() -> None:
    torch.set_num_threads(1)  # no thread pool in the parent: the forked children compute alone
    folder, seeds = Path(sys.argv[1]), [int(s) for s in sys.argv[2:]]
    print(json.dumps({seed: trial(folder / f"seed{seed}", seed) for seed in seeds}))


if __name__ == "__main__":
    main()
