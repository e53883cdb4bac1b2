"""Regressions between runs: save the errors of a session's checks and compare a later session with them.

The second pytest plugin of ``equivariance`` (entry point ``equivariance-regressions``), in the manner of
pytest-benchmark's ``--benchmark-save`` and ``--benchmark-compare``, for equivariance errors instead of
times. A model whose error creeps from 1e-7 to 1e-5 still passes at rtol 1e-4; this shows it before it
fails.

- ``--equivariance-save NAME`` writes the max error of every check the fixtures ran (one per test,
  kind, model and dtype, as in the summary) to ``.equivariance/NAME.json`` in the rootdir
  (``--equivariance-storage DIR`` for another folder), with the time and the git commit;
- ``--equivariance-compare[=NAME]`` compares this session with a saved run, by default the latest, and
  lists every check with its saved error, its error now and the change, marking those that grew beyond
  the threshold (``ratio:10`` unless told otherwise);
- ``--equivariance-compare-fail=EXPR`` sets the threshold and makes a check that crossed it fail the
  session (exit code 1) although every test passed: ``ratio:R`` (the error grew more than ``R`` times)
  or ``abs:A`` (it grew by more than ``A``); repeatable, a check is flagged when any holds.

Errors below a thousandth of a check's ``rtol`` count as that thousandth (``FLOOR``): float rounding, so
a check whose error moves from 0 to 3e-8 in float32 has not grown. The checks are read from the test
reports, as the summary reads them, so under pytest-xdist the controller compares every worker's checks.
Like the main plugin, this module imports neither torch nor the library.
"""

from __future__ import annotations

import datetime
import json
import math
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from _equivariance_pytestplugin import PROPERTY

FORMAT = 1
"""The version of the saved files' layout."""

FLOOR = 1e-3
"""Errors below this fraction of a check's rtol are rounding: they count as that fraction."""

DEFAULT_THRESHOLD = "ratio:10"
STORAGE = ".equivariance"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("equivariance", "shift equivariance checks (assert_equivariant fixtures)")
    group.addoption(
        "--equivariance-save",
        dest="equivariance_save",
        default=None,
        metavar="NAME",
        help="save the errors of the fixtures' checks as NAME, in the storage folder",
    )
    group.addoption(
        "--equivariance-compare",
        dest="equivariance_compare",
        nargs="?",
        const="",
        default=None,
        metavar="NAME",
        help="compare the errors with the saved run NAME (default: the latest saved); write "
        "--equivariance-compare=NAME",
    )
    group.addoption(
        "--equivariance-compare-fail",
        dest="equivariance_compare_fail",
        action="append",
        default=[],
        metavar="EXPR",
        help=f"fail the session when a check's error grew beyond EXPR: ratio:R or abs:A, repeatable "
        f"(without it, growth beyond {DEFAULT_THRESHOLD} is shown, not failed)",
    )
    group.addoption(
        "--equivariance-storage",
        dest="equivariance_storage",
        default=None,
        metavar="DIR",
        help=f"where saved runs are kept (default: {STORAGE} in the rootdir)",
    )
    parser.addini("equivariance_storage", f"where saved runs are kept (default: {STORAGE} in the rootdir)")


@dataclass(frozen=True)
class Threshold:
    """When a check's error has grown: ``ratio:R`` (more than ``R`` times) or ``abs:A`` (by more than ``A``).

    Examples:
        >>> Threshold.parse("ratio:10").grew(1e-7, 1e-5, rtol=1e-4)
        True
        >>> Threshold.parse("ratio:10").grew(0.0, 5e-7, rtol=1e-4)  # below ten times the floor, 1e-7
        False
        >>> Threshold.parse("abs:1e-6").grew(1e-7, 5e-7, rtol=1e-4)
        False
    """

    kind: str
    value: float
    text: str  # as the user wrote it

    @classmethod
    def parse(cls, text: str) -> Threshold:
        kind, _, number = text.strip().partition(":")
        try:
            value = float(number)
        except ValueError:
            value = math.nan
        if (kind == "ratio" and value > 1 and math.isfinite(value)) or (
            kind == "abs" and value > 0 and math.isfinite(value)
        ):
            return cls(kind, value, text.strip())
        raise pytest.UsageError(
            f"--equivariance-compare-fail expects ratio:R (R > 1, the error grew more than R times) or "
            f"abs:A (A > 0, it grew by more than A), found {text!r}; e.g. ratio:10"
        )

    def grew(self, saved: float, now: float, *, rtol: float) -> bool:
        """Whether an error went from ``saved`` to ``now`` beyond this threshold."""
        if self.kind == "abs":
            return now - saved > self.value
        floor = FLOOR * rtol
        return max(now, floor) > self.value * max(saved, floor)

    def __str__(self) -> str:
        return self.text


@dataclass
class Regressions:
    """One session's saving and comparing (registered only when asked for)."""

    storage: Path
    save: str | None
    baseline: dict[str, Any] | None
    thresholds: list[Threshold]
    fail: bool
    quiet: bool
    checks: list[dict[str, Any]] = field(default_factory=list)
    flagged: int = 0
    saved_to: Path | None = None
    lines: list[str] = field(default_factory=list)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "teardown":
            self.checks.extend(json.loads(str(v)) for k, v in report.user_properties if k == PROPERTY)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if hasattr(session.config, "workerinput"):
            return  # xdist: the controller has every worker's checks
        rows = merged(self.checks)
        if self.baseline is not None:
            self.lines, self.flagged = self._compare(rows, session.config)
            if self.fail and self.flagged and session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if self.save is not None:
            self.saved_to = self.storage / f"{self.save}.json"
            self.storage.mkdir(parents=True, exist_ok=True)
            data = {
                "equivariance_errors": FORMAT,
                "name": self.save,
                **_when_and_where(session),
                "checks": rows,
            }
            self.saved_to.write_text(json.dumps(data, indent=1) + "\n")

    def _compare(self, rows: list[dict[str, Any]], config: pytest.Config) -> tuple[list[str], int]:
        from _equivariance_pytestplugin import fit_table

        assert self.baseline is not None
        before = {_key(row): row for row in self.baseline["checks"]}
        now = {_key(row): row for row in rows}
        flags = {key: self._grew(before[key], row) for key, row in now.items() if key in before}
        cells = [
            (
                row["test"] + ("" if row["kind"] == "equivariance" else " (invariance)"),
                row["model"],
                f"{before[key]['error']:.2e}",
                f"{row['error']:.2e}",
                _change(before[key]["error"], row["error"]),
                "GREW" if flags[key] else "",
            )
            for key, row in now.items()
            if key in before and (flags[key] or not self.quiet)
        ]
        flagged = sum(flags.values())
        width = config.get_terminal_writer().fullwidth
        header = ("test", "model", "saved", "now", "change", "")
        table, _ = fit_table(header, cells, width, right={"saved", "now", "change"}) if cells else ([], {})
        rule = " or ".join(map(str, self.thresholds))
        counts = (
            f"{len(flags)} check{'s' if len(flags) != 1 else ''} compared: {flagged} grew beyond {rule}"
            f"{' (the session fails: --equivariance-compare-fail)' if flagged and self.fail else ''}; "
            f"{sum(k not in before for k in now)} new, {sum(k not in now for k in before)} not run"
        )
        return [*table, counts], flagged

    def _grew(self, saved: dict[str, Any], now: dict[str, Any]) -> bool:
        return any(t.grew(saved["error"], now["error"], rtol=now["rtol"]) for t in self.thresholds)

    @pytest.hookimpl(trylast=True)  # after the table of checks
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.baseline is not None and (self.flagged or not self.quiet):
            saved = self.baseline
            facts = ", ".join(str(saved[k]) for k in ("saved", "commit") if saved.get(k))
            terminalreporter.ensure_newline()
            terminalreporter.section(f"equivariance errors against {saved['name']!r} ({facts})")
            for line in self.lines:
                terminalreporter.write_line(line)
        if self.saved_to is not None:
            terminalreporter.write_line(
                f"equivariance: saved the errors of the checks as {self.save!r} in {self.saved_to}"
            )


def merged(checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per test, kind, model and dtype (as the summary's), with the largest error of its checks."""
    rows: dict[tuple[str, ...], dict[str, Any]] = {}
    for check in checks:
        row = rows.setdefault(
            _key(check),
            {key: check[key] for key in ("test", "kind", "model", "dtype")} | {"error": -1.0, "checks": 0},
        )
        row["checks"] += 1
        if check["error"] > row["error"]:
            row.update(error=check["error"], rtol=check["rtol"], passed=check["passed"])
    return list(rows.values())


def _key(row: dict[str, Any]) -> tuple[str, ...]:
    return (row["test"], row["kind"], row["model"], row["dtype"])


def _change(saved: float, now: float) -> str:
    if now == saved:
        return "="
    if saved == 0:
        return "from 0"
    return f"x{now / saved:.3g}"


def _when_and_where(session: pytest.Session) -> dict[str, Any]:
    """When the run was saved, and the git commit of the rootdir (with ``+`` if the tree had changes)."""
    saved = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    try:
        commit = _git(session, "rev-parse", "--short", "HEAD")
        commit += "+" if _git(session, "status", "--porcelain", "-uno") else ""
    except (OSError, subprocess.SubprocessError):
        commit = ""  # not a git checkout, or no git
    return {"saved": saved, "commit": commit}


def _git(session: pytest.Session, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=session.config.rootpath, capture_output=True, text=True, timeout=10, check=True
    ).stdout.strip()


def pytest_configure(config: pytest.Config) -> None:
    save = config.getoption("equivariance_save")
    compare = config.getoption("equivariance_compare")
    fail = config.getoption("equivariance_compare_fail")
    if save is None and compare is None and not fail:
        return
    if hasattr(config, "workerinput"):
        return  # xdist: the controller saves and compares
    if fail and compare is None:
        raise pytest.UsageError(
            "--equivariance-compare-fail needs a run to compare with; add --equivariance-compare[=NAME]"
        )
    if save is not None and not NAME.match(save):
        raise pytest.UsageError(
            f"--equivariance-save expects a name of letters, digits, '.', '_' or '-', found {save!r}; "
            "e.g. --equivariance-save main"
        )
    storage = _storage(config)
    baseline = None if compare is None else _baseline(storage, compare, config)
    thresholds = [Threshold.parse(text) for text in fail] or [Threshold.parse(DEFAULT_THRESHOLD)]
    quiet = int(config.getoption("verbose")) < 0
    regressions = Regressions(storage, save, baseline, thresholds, bool(fail), quiet)
    config.pluginmanager.register(regressions, "equivariance-regressions-session")


def _storage(config: pytest.Config) -> Path:
    given = config.getoption("equivariance_storage") or str(config.getini("equivariance_storage") or "")
    if not given:
        return config.rootpath / STORAGE
    return Path(config.invocation_params.dir, given)


def _baseline(storage: Path, name: str, config: pytest.Config) -> dict[str, Any]:
    """The saved run to compare with: ``NAME`` in the storage, a ``.json`` file, or the last saved."""
    if name:
        file = Path(config.invocation_params.dir, name)
        path = file if name.endswith(".json") and file.is_file() else storage / f"{name}.json"
        if not path.is_file():
            looks_like_a_path = "/" in name or "::" in name or name.endswith(".py")
            hint = (
                f"; it took {name!r}, meant as a test path? Write --equivariance-compare=NAME, or put the "
                "option after the paths"
                if looks_like_a_path
                else f"; saved runs: {', '.join(sorted(_saved(storage))) or 'none'}"
            )
            raise pytest.UsageError(f"--equivariance-compare: no saved run {name!r} in {storage}{hint}")
        return _read(path)
    runs = _saved(storage)
    if not runs:
        raise pytest.UsageError(
            f"--equivariance-compare: nothing is saved in {storage} yet; run once with "
            "--equivariance-save NAME (e.g. on the main branch), then compare"
        )
    latest = max(runs.values(), key=lambda path: path.stat().st_mtime)  # the last saved
    return _read(latest)


def _saved(storage: Path) -> dict[str, Path]:
    return {path.stem: path for path in sorted(storage.glob("*.json"))} if storage.is_dir() else {}


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        if data["equivariance_errors"] != FORMAT or not isinstance(data["checks"], list):
            raise ValueError
    except (OSError, ValueError, KeyError, TypeError):
        raise pytest.UsageError(
            f"--equivariance-compare: {path} is not a run saved by --equivariance-save (format {FORMAT}); "
            "save the run again"
        ) from None
    return dict(data)
