"""The checkpoint of an audit: what was measured so far, and everything the numbers depend on.

A manifest (``audit.json``, replaced atomically) describes a committed prefix of append-only JSON
Lines of per-batch results (``audit.json.results``, locked while an audit runs); a save costs the
new batches only, and a file that was torn, truncated or edited is refused. The format and the
reasons are in docs/audit.md ("Checkpoints").
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import secrets
import sys
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from equivariance.errors import InvalidArgument

if sys.platform != "win32":
    import fcntl

VERSION = 3
FORMAT = "equivariance audit checkpoint"
RESULTS = ".results"
MANIFEST_KEYS = frozenset(
    {"format", "version", "settings", "batches", "tolerance", "results_bytes", "results_crc32"}
)
RECORD_KEYS = ("batch", "fingerprint", "errors", "passed", "consistent")
_RECORD_START = b'{"batch": 0, '  # how the first line of a results file begins


@dataclass(frozen=True)
class Record:
    """One batch's results: its input's ``fingerprint``, and per sample the largest error over the shifts,
    whether every shift passed, and whether its top-1 class was unchanged (None without a classifier)."""

    fingerprint: int
    errors: list[float]
    passed: list[bool]
    consistent: list[bool] | None

    def line(self, number: int) -> bytes:
        """The record as one line of the results file."""
        fields = [number, self.fingerprint, self.errors, self.passed, self.consistent]
        return json.dumps(dict(zip(RECORD_KEYS, fields))).encode() + b"\n"


class Damaged(Exception):
    """A checkpoint file that is not what this module writes; the message says where and why."""


# -- identities: what the results depend on ---------------------------------------------------------


def fingerprint(x: torch.Tensor | Sequence[torch.Tensor]) -> int:
    """A CRC-32 of a tensor's dtype, shape and bytes (of several tensors', in order), to tell one batch of
    data from another.

    Examples:
        >>> import torch
        >>> fingerprint(torch.zeros(2, 3)) == fingerprint(torch.zeros(2, 3))
        True
        >>> fingerprint(torch.zeros(2, 3)) == fingerprint(torch.zeros(3, 2))
        False
    """
    if isinstance(x, torch.Tensor):
        return _tensor_crc(x, 0)
    crc = 0
    for tensor in x:
        crc = _tensor_crc(tensor, crc)
    return crc


def identity(target: object) -> dict[str, Any]:
    """How a checkpoint names a model or a classifier: its type and a CRC-32 of its weights.

    For an ``nn.Module`` (unwrapped from ``torch.compile``), the CRC covers
    every parameter and buffer (name, dtype, shape and bytes); for a plain
    function, its compiled code. A fingerprint tells other weights apart
    without storing them.

    Examples:
        >>> import torch
        >>> a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
        >>> identity(a)["name"], identity(a) == identity(a), identity(a) == identity(b)
        ('torch.nn.modules.linear.Linear', True, False)
    """
    inner = getattr(target, "_orig_mod", None)
    module = inner if isinstance(inner, nn.Module) else target
    if isinstance(module, nn.Module):
        tensors = [*module.named_parameters(), *module.named_buffers()]
        lazy = [name for name, tensor in tensors if is_lazy(tensor)]
        if lazy:
            raise InvalidArgument(
                f"{type(module).__name__} has uninitialized (lazy) parameters ({', '.join(lazy[:3])}), "
                "whose weights a checkpoint cannot record before they exist; run one forward pass "
                "first, e.g. model(x[:1]), then audit"
            )
        crc = 0
        for name, tensor in tensors:
            crc = _tensor_crc(tensor, zlib.crc32(name.encode(), crc))
        return {"name": _qualified(type(module)), "weights": f"{crc:08x}", "code": None}
    return {"name": _qualified(module), "weights": None, "code": _code_crc(module)}


def selector(output: object) -> object:
    """How a checkpoint records ``output=``: an index or key as it is, a callable by name and code."""
    if output is None or isinstance(output, (int, str)):
        return output
    return {"name": _qualified(output), "code": _code_crc(output)}


def _qualified(thing: object) -> str:
    if not hasattr(thing, "__qualname__"):
        thing = type(thing)
    return f"{getattr(thing, '__module__', '?')}.{getattr(thing, '__qualname__', '?')}"


def _code_crc(function: object) -> str | None:
    """A CRC-32 of a function's compiled code (bytecode and constants), None for other callables."""
    function = getattr(function, "__func__", function)
    code = getattr(function, "__code__", None)
    if code is None and callable(function):
        code = getattr(type(function).__call__, "__code__", None)
    return None if code is None else f"{_code_bytes_crc(code, 0):08x}"


def _code_bytes_crc(code: Any, crc: int) -> int:
    crc = zlib.crc32(code.co_code, crc)
    for constant in code.co_consts:
        if hasattr(constant, "co_code"):  # a nested function: its repr holds an address
            crc = _code_bytes_crc(constant, crc)
        elif isinstance(constant, frozenset):  # iteration order depends on the hash seed
            crc = zlib.crc32(repr(sorted(map(repr, constant))).encode(), crc)
        else:
            crc = zlib.crc32(repr(constant).encode(), crc)
    return zlib.crc32(repr(code.co_names).encode(), crc)


def _tensor_crc(tensor: torch.Tensor, crc: int) -> int:
    data = tensor.detach()
    crc = zlib.crc32(f"{data.dtype} {tuple(data.shape)}".encode(), crc)
    try:
        raw = data.cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    except (RuntimeError, TypeError, ValueError):  # no bytes to read: meta, sparse, quantized, lazy
        return zlib.crc32(type(tensor).__name__.encode(), crc)
    return zlib.crc32(raw.data, crc)


# -- the checkpoint files ------------------------------------------------------------------------------


class Checkpoint:
    """An audit's checkpoint files (the manifest at ``path``, ``.rank<r>`` appended under torch.distributed),
    locked for this process while open: ``open`` locks them and loads what an earlier run committed
    (``records``, ``tolerance``), ``save`` appends, ``close`` unlocks, leaving no file where nothing was
    committed."""

    def __init__(self, base: str, path: str, settings: dict[str, Any], rank: int, world: int) -> None:
        self.base, self.path, self.settings = base, path, settings
        self.rank, self.world = rank, world
        self.results = path + RESULTS
        self.records: list[Record] = []
        self.tolerance: list[float] = []
        self._fd: int | None = None
        self._created = False
        self._bytes = 0
        self._crc = 0
        self._temporary = f"{path}.tmp-{os.getpid()}-{secrets.token_hex(4)}"

    @property
    def distributed(self) -> bool:
        return self.path != self.base

    def open(self) -> str | None:
        """Lock and load the checkpoint; why it is refused, or None (call ``close`` afterwards either way)."""
        problem = self._lock()
        if problem is not None:
            return problem
        self._remove_stale_temporaries()
        if not os.path.exists(self.path):
            problem = stray(self.base, self.distributed, self.rank, self.world)
            return problem if problem is not None else self._start_afresh()
        try:
            manifest = _read_manifest(self.path)
            problem = self._refusal(manifest["settings"])
            if problem is not None:
                return problem
            self._load(manifest)
        except Damaged as damage:
            return f"the audit checkpoint {self.path} is damaged ({damage}); {self.afresh()}"
        return None

    def compare(
        self, number: int, x: torch.Tensor | Sequence[torch.Tensor], samples: int | None = None
    ) -> str | None:
        """Why batch ``number`` of the data (a tensor, or the tensors of a batch of ``samples`` samples) is
        not the one the checkpoint records, or None."""
        record = self.records[number]
        if fingerprint(x) != record.fingerprint:
            return (
                f"batch {number} of the data is not the batch {number} the audit checkpoint {self.path} "
                "recorded (other values, shape or order); pass the same data in the same order and with "
                f"the same loader_batch_size, or {self.afresh()}"
            )
        n = len(x) if samples is None else samples
        if n != len(record.errors):
            return (
                f"the audit checkpoint {self.path} is damaged (it holds {len(record.errors)} results for "
                f"batch {number}, which has {n} samples); {self.afresh()}"
            )
        return None

    def save(self, records: list[Record], tolerance: list[float]) -> None:
        """Append ``records`` past those committed, then commit them with the manifest."""
        new = records[len(self.records) :]
        if not new:
            return
        assert self._fd is not None
        data = b"".join(record.line(len(self.records) + i) for i, record in enumerate(new))
        os.lseek(self._fd, self._bytes, os.SEEK_SET)
        write_all(self._fd, data)
        os.fsync(self._fd)
        crc, size = zlib.crc32(data, self._crc), self._bytes + len(data)
        manifest = {
            "format": FORMAT, "version": VERSION, "settings": self.settings, "batches": len(records),
            "tolerance": tolerance, "results_bytes": size, "results_crc32": crc,
        }  # fmt: skip
        with open(self._temporary, "w") as file:
            json.dump(manifest, file)
            file.flush()
            os.fsync(file.fileno())
        replace(self._temporary, self.path)  # atomic: a reader sees the old manifest or the new one
        _sync_directory(self.path)
        self._crc, self._bytes = crc, size
        self.records, self.tolerance = list(records), list(tolerance)

    def close(self) -> None:
        """Release the lock; remove the results file if this run made it and committed nothing."""
        with contextlib.suppress(OSError):
            os.remove(self._temporary)
        if self._fd is None:
            return
        if self._created and not self.records:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.results)
        os.close(self._fd)  # releases the lock
        self._fd = None

    def afresh(self) -> str:
        """How to start the audit afresh instead of resuming it."""
        return afresh(self.base, self.distributed)

    # -- opening ------------------------------------------------------------------------------------

    def _lock(self) -> str | None:
        """Open and lock the results file, and check the manifest's directory takes new files."""
        if os.path.isdir(self.path):
            return f"the audit checkpoint {self.path} is a directory; pass the path of a file in it"
        try:
            while self._fd is None:
                existed = os.path.exists(self.results)
                fd = os.open(self.results, os.O_RDWR | os.O_CREAT, 0o666)
                if not _try_lock(fd):
                    os.close(fd)
                    return (
                        f"another process is writing the audit checkpoint {self.path} (it holds the lock "
                        f"on {self.results}); wait for it to finish, or pass another checkpoint path"
                    )
                if _same_file(fd, self.results):
                    self._fd, self._created = fd, not existed
                else:  # removed or replaced between open and lock: lock the file now there
                    os.close(fd)
            with open(self._temporary, "w"):
                pass
            os.remove(self._temporary)
        except OSError as error:
            return _unwritable(self.path, error)
        return None

    def _remove_stale_temporaries(self) -> None:
        """Remove the temporary manifests of processes killed while writing one (we hold the lock)."""
        folder, name = os.path.split(os.path.abspath(self.path))
        for entry in os.listdir(folder):
            if entry.startswith(f"{name}.tmp-"):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(folder, entry))

    def _start_afresh(self) -> str | None:
        """Empty the results file of a run that committed nothing (or whose manifest was deleted)."""
        assert self._fd is not None
        head = read_at_most(self._fd, len(_RECORD_START))
        if not _RECORD_START.startswith(head):
            return (
                f"{self.results} exists and is not the results file of an audit; move it away or pass "
                "another checkpoint path"
            )
        os.ftruncate(self._fd, 0)
        return None

    def _refusal(self, saved: object) -> str | None:
        """Why the settings a manifest records rule out resuming with this run's, or None."""
        if not isinstance(saved, dict) or set(saved) != set(self.settings):
            found = sorted(saved) if isinstance(saved, dict) else json.dumps(saved)
            raise Damaged(
                f"its settings must be an object with the keys {sorted(self.settings)}, found {found}"
            )
        writers = saved["world_size"]
        if isinstance(writers, bool) or not isinstance(writers, int) or writers < 1:
            raise Damaged(f"its settings give world_size {json.dumps(writers)}, not a number of processes")
        if writers != self.world:
            return (
                f"the audit checkpoint {self.path} was written by {processes(writers)} and this run has "
                f"{self.world}; resume with as many processes as started the audit, or {self.afresh()}"
            )
        changed = [_difference(key, saved[key], self.settings[key]) for key in sorted(saved)]
        changed = [text for text in changed if text]
        if changed:
            return (
                f"the audit checkpoint {self.path} was written with other settings (differing: "
                f"{'; '.join(changed)}); rerun with the same settings, or {self.afresh()}"
            )
        return None

    def _load(self, manifest: dict[str, Any]) -> None:
        """Read and check the committed results; drop what a killed run wrote past them."""
        assert self._fd is not None
        size = manifest["results_bytes"]
        data = read_at_most(self._fd, size + 1)
        if len(data) < size:
            raise Damaged(
                f"{self.results} holds {len(data)} bytes where the manifest committed {size}: it was "
                "truncated or replaced"
            )
        data = data[:size]
        if zlib.crc32(data) != manifest["results_crc32"]:
            raise Damaged(
                f"the CRC-32 of {self.results} is not the one the manifest committed: it was edited"
            )
        lines = data.split(b"\n")[:-1] if data else []
        if len(lines) != manifest["batches"] or (data and not data.endswith(b"\n")):
            raise Damaged(
                f"the manifest says {manifest['batches']} batches, {self.results} holds {len(lines)}"
            )
        classifier = self.settings["classifier"] is not None
        self.records = [_parse(line, number, classifier) for number, line in enumerate(lines)]
        tolerance = manifest["tolerance"]
        if not (_is_tolerance(tolerance) or (tolerance == [] and not self.records)):
            raise Damaged(f"its tolerance must be [rtol, atol], found {json.dumps(tolerance)}")
        self.tolerance = list(tolerance)
        self._bytes, self._crc = size, manifest["results_crc32"]
        os.ftruncate(self._fd, size)


# -- reading and validating ---------------------------------------------------------------------------


def _read_manifest(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            manifest = json.loads(file.read())
    except (OSError, ValueError) as error:
        raise Damaged(f"it cannot be read as JSON: {error}") from None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT
        or manifest.get("version") != VERSION
    ):
        version = manifest.get("version") if isinstance(manifest, dict) else None
        found = f"found version {json.dumps(version)}" if version is not None else "found no version"
        raise Damaged(f"it is not an audit checkpoint of version {VERSION} ({found})")
    if set(manifest) != MANIFEST_KEYS:
        raise Damaged(f"its fields must be {sorted(MANIFEST_KEYS)}, found {sorted(manifest)}")
    for key in ("batches", "results_bytes", "results_crc32"):
        value = manifest[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
            raise Damaged(f"its {key} must be a non-negative integer, found {json.dumps(value)}")
    return manifest


def _parse(line: bytes, number: int, classifier: bool) -> Record:
    """One line of the results file as a Record, or Damaged saying what is wrong with it."""
    where = f"line {number + 1} of the results"
    try:
        fields = json.loads(line)
    except ValueError:
        raise Damaged(f"{where} is not JSON") from None
    if not isinstance(fields, dict) or set(fields) != set(RECORD_KEYS):
        raise Damaged(f"{where} must be an object with the keys {list(RECORD_KEYS)}")
    batch, crc, errors, passed, consistent = (fields[key] for key in RECORD_KEYS)
    if batch != number or isinstance(batch, bool):
        raise Damaged(f"{where} is numbered {json.dumps(batch)}, not {number}")
    if isinstance(crc, bool) or not isinstance(crc, int) or not 0 <= crc < 2**32:
        raise Damaged(f"{where} has fingerprint {json.dumps(crc)}, not a CRC-32")
    if not _are(errors, _is_error) or not errors:
        raise Damaged(f"{where} must hold a non-empty list of non-negative numbers as errors")
    if not _are(passed, _is_flag) or len(passed) != len(errors):
        raise Damaged(f"{where} must hold {len(errors)} true/false values as passed, one per error")
    if classifier and (not _are(consistent, _is_flag) or len(consistent) != len(errors)):
        raise Damaged(f"{where} must hold {len(errors)} true/false values as consistent, one per error")
    if not classifier and consistent is not None:
        raise Damaged(f"{where} holds consistent values, but the audit has no classifier")
    return Record(crc, [float(e) for e in errors], passed, consistent)


def _are(values: object, check: Callable[[object], bool]) -> bool:
    return isinstance(values, list) and all(check(value) for value in values)


def _is_error(value: object) -> bool:
    # NaN is kept as measured; a negative error cannot be
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not value < 0


def _is_flag(value: object) -> bool:
    return isinstance(value, bool)


def _is_tolerance(value: object) -> bool:
    return _are(value, lambda v: _is_error(v) and not math.isnan(v)) and len(value) == 2  # type: ignore[arg-type]


def _difference(key: str, saved: object, now: object) -> str:
    """``key``, what the checkpoint holds and what this run has, or "" where they agree."""
    if saved == now:
        return ""
    if isinstance(saved, dict) and isinstance(now, dict) and saved.get("name") == now.get("name"):
        what = "weights" if saved.get("weights") != now.get("weights") else "code"
        return (
            f"{key}: other {what} (CRC-32 {saved.get(what)} in the checkpoint, {now.get(what)} in this run)"
        )
    return f"{key}: {_shown(saved)} in the checkpoint, {_shown(now)} in this run"


def _shown(value: object) -> str:
    if isinstance(value, dict) and "name" in value:
        return str(value["name"])
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- messages -----------------------------------------------------------------------------------------


def afresh(base: str, distributed: bool) -> str:
    """How to start an audit afresh instead of resuming it."""
    files = f"the {base}.rank* files" if distributed else str(base)
    return f"delete {files} or pass another checkpoint path to start afresh"


def processes(count: object) -> str:
    """A number of processes in words: 1 process, 2 processes, or several where it is unknown."""
    known = isinstance(count, int) and not isinstance(count, bool) and count >= 1
    return "1 process" if count == 1 else f"{count if known else 'several'} processes"


def writers(path: str) -> str:
    """The processes that wrote a checkpoint, as its settings say."""
    try:
        return processes(_read_manifest(path)["settings"]["world_size"])
    except (Damaged, KeyError, TypeError):
        return processes(None)


def stray(base: str, distributed: bool, rank: int, world: int) -> str | None:
    """Why a checkpoint written by another number of processes is there, where this run has none."""
    if not distributed:
        if os.path.exists(f"{base}.rank0"):
            return (
                f"there is no audit checkpoint {base} but there is {base}.rank0: the audit was started "
                f"under torch.distributed by {writers(f'{base}.rank0')}; resume it under torchrun with as "
                f"many, or {afresh(base, True)}"
            )
        return None
    if rank != 0:
        return None  # a process may have stopped before its first checkpoint while the others wrote theirs
    if os.path.exists(base):
        return (
            f"there is no audit checkpoint {base}.rank0 but there is {base}: the audit was started by a "
            f"single process; resume it without torchrun, or {afresh(base, False)}"
        )
    if os.path.exists(f"{base}.rank{world}"):
        return (
            f"there is no audit checkpoint {base}.rank0 but there is {base}.rank{world}: the audit was "
            f"started by {writers(f'{base}.rank{world}')} and this run has {world}; resume "
            f"with as many processes as started the audit, or {afresh(base, True)}"
        )
    return None


def _unwritable(path: str, error: OSError) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    if error.errno == errno.ENOENT:
        reason = f"the directory {folder} does not exist; create it first"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason = f"there is no permission to write in {folder}; pass a path in a writable directory"
    else:
        reason = f"{error.strerror or error}; pass a path in a writable directory"
    return f"cannot write the audit checkpoint {path}: {reason} (checked before any work)"


# -- file operations (module functions, so a fault-injection test can interrupt them) ---------------


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` (``os.write`` may write fewer)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def replace(source: str, target: str) -> None:
    """Rename ``source`` over ``target`` atomically."""
    os.replace(source, target)


def read_at_most(fd: int, size: int) -> bytes:
    """The first ``size`` bytes of the file, fewer if it is shorter."""
    os.lseek(fd, 0, os.SEEK_SET)
    pieces, left = [], size
    while left > 0:
        piece = os.read(fd, min(left, 1 << 24))
        if not piece:
            break
        pieces.append(piece)
        left -= len(piece)
    return b"".join(pieces)


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":
        return True  # no advisory lock there: one writer per checkpoint is the caller's to ensure
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _same_file(fd: int, path: str) -> bool:
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


def _sync_directory(path: str) -> None:
    """Make a rename durable (POSIX); where a directory cannot be opened, the rename stands as it is."""
    with contextlib.suppress(OSError):
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
