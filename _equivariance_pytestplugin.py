"""The pytest plugin of ``equivariance``: fixtures, options, a marker and a summary of every check.

It is a top-level module, outside the package, because importing anything
from ``equivariance`` imports torch: pytest loads this module at start-up in
every project where the library is installed, and it imports neither torch
nor the library until a test asks for one of its fixtures. Measured with
``pytest --version`` in an empty project, it adds about a millisecond.

- fixtures ``assert_equivariant`` and ``assert_invariant``: the library's
  functions with the session's device, dtype and tolerances applied;
- options ``--equivariance-device``, ``--equivariance-dtype``,
  ``--equivariance-atol`` and ``--equivariance-rtol`` (ini: ``equivariance_device`` ...),
  checked at start-up (a bad value, or a device this machine lacks, is a usage error);
- the marker ``equivariance``, given to every test using the fixtures;
  ``@pytest.mark.equivariance(allow_vacuous=True)`` (or ``--equivariance-allow-vacuous``, or
  ``allow_vacuous=True`` in the call) lets a check that cannot fail pass instead of failing the test;
- a failing ``assert report.passed`` shows the report's table;
- a terminal section listing every check the fixtures ran, fitted to the terminal's width
  (``--equivariance-summary``),
  and every check as JSON (``--equivariance-report PATH``).
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from equivariance.report import EquivarianceReport

FIXTURES = ("assert_equivariant", "assert_invariant")
DTYPES = ("float64", "float32", "float16", "bfloat16")
PROPERTY = "equivariance_check"  # the user_properties key that carries a check (as JSON) to the summary
SUMMARY_MODES = ("all", "failed", "off")


class _Settings:
    """The session's options, read once (a plain class: a dataclass costs a millisecond at start-up)."""

    def __init__(self, device: str | None, dtype: str | None, atol: float | None, rtol: float | None) -> None:
        self.device, self.dtype, self.atol, self.rtol = device, dtype, atol, rtol
        self.summary = "all"
        self.report: Path | None = None
        self.allow_vacuous = False


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("equivariance", "shift equivariance checks (assert_equivariant fixtures)")
    options = {
        "device": "run the checks of the fixtures on this device, e.g. cuda (copies of the model and input)",
        "dtype": f"run the checks of the fixtures in this dtype, one of {', '.join(DTYPES)}",
        "atol": "absolute tolerance of the fixtures' checks (default: the dtype's)",
        "rtol": "relative tolerance of the fixtures' checks (default: the dtype's)",
    }
    for name, text in options.items():
        group.addoption(f"--equivariance-{name}", dest=f"equivariance_{name}", default=None, help=text)
        parser.addini(f"equivariance_{name}", f"{text}; --equivariance-{name} overrides it", default="")
    group.addoption(
        "--equivariance-summary",
        dest="equivariance_summary",
        default=None,
        choices=SUMMARY_MODES,
        help="the table of checks at the end: all checks, only the failed ones, or off "
        "(default: all; failed under -q)",
    )
    parser.addini("equivariance_summary", "the table of checks at the end: all, failed or off", default="")
    group.addoption(
        "--equivariance-allow-vacuous",
        dest="equivariance_allow_vacuous",
        action="store_true",
        default=None,
        help="let the fixtures pass a check that cannot fail (report.vacuous) instead of failing the test",
    )
    parser.addini(
        "equivariance_allow_vacuous",
        "let the fixtures pass a check that cannot fail",
        type="bool",
        default=False,
    )
    group.addoption(
        "--equivariance-report",
        dest="equivariance_report",
        default=None,
        metavar="PATH",
        help="write every check of the fixtures to PATH as JSON",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "equivariance(allow_vacuous=False): a shift equivariance check (given to tests using the "
        "assert_equivariant or assert_invariant fixtures); allow_vacuous=True lets a check that cannot "
        "fail pass",
    )
    config.stash[_SETTINGS] = _read_settings(config)
    config.stash[_SUMMARY] = _Summary(config.stash[_SETTINGS])
    config.pluginmanager.register(config.stash[_SUMMARY], "equivariance-summary")


_SETTINGS = pytest.StashKey[_Settings]()
_SUMMARY = pytest.StashKey["_Summary"]()


def _read_settings(config: pytest.Config) -> _Settings:
    def value(name: str) -> str | None:
        given = config.getoption(f"equivariance_{name}") or config.getini(f"equivariance_{name}")
        return str(given).strip() or None

    dtype = value("dtype")
    if dtype is not None:
        dtype = dtype.removeprefix("torch.")
        if dtype not in DTYPES:
            raise pytest.UsageError(
                f"--equivariance-dtype must be one of {', '.join(DTYPES)}, found {dtype!r}"
            )
    device = value("device")
    if device is not None:
        _check_device(device)
    settings = _Settings(device, dtype, _tolerance(value("atol"), "atol"), _tolerance(value("rtol"), "rtol"))
    summary = value("summary") or ("failed" if int(config.getoption("verbose")) < 0 else "all")
    if summary not in SUMMARY_MODES:
        raise pytest.UsageError(
            f"equivariance_summary must be one of {', '.join(SUMMARY_MODES)}, found {summary!r}"
        )
    settings.summary = summary
    settings.allow_vacuous = bool(
        config.getoption("equivariance_allow_vacuous") or config.getini("equivariance_allow_vacuous")
    )
    report = config.getoption("equivariance_report")
    if report:
        path = Path(config.invocation_params.dir, report)
        if not path.parent.is_dir():
            raise pytest.UsageError(
                f"--equivariance-report {report}: the folder {str(path.parent)!r} does not exist; create it "
                "or write the report elsewhere"
            )
        settings.report = path
    return settings


def _check_device(name: str) -> None:
    """Refuse at start-up a device torch does not know or this machine does not have."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise pytest.UsageError(
            f"--equivariance-device {name!r} is not a device torch knows; e.g. cpu, cuda, cuda:1"
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            why = (
                "torch was built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            )
            raise pytest.UsageError(
                f"--equivariance-device {name}: this machine has no CUDA device ({why}); run on a machine "
                "with a GPU, or drop the option to check on the inputs' own device"
            )
        if device.index is not None and device.index >= count:
            raise pytest.UsageError(
                f"--equivariance-device {name}: this machine has {count} CUDA device(s), cuda:0 to "
                f"cuda:{count - 1}; pick one of those"
            )
        return
    backend = getattr(torch.backends, device.type, None) or getattr(torch, device.type, None)
    available = getattr(backend, "is_available", None)
    if device.type != "cpu" and callable(available) and not available():
        raise pytest.UsageError(
            f"--equivariance-device {name}: this machine has no {device.type} device; drop the option "
            "or pick one it has, e.g. cpu"
        )


def _tolerance(text: str | None, name: str) -> float | None:
    if text is None:
        return None
    try:
        number = float(text)
    except ValueError:
        number = -1.0
    if not 0 <= number < float("inf"):
        raise pytest.UsageError(
            f"--equivariance-{name} must be a finite non-negative number, found {text!r}; e.g. 1e-5"
        )
    return number


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if set(FIXTURES) & set(getattr(item, "fixturenames", ())):
            item.add_marker("equivariance")


# Session-scoped, so that Hypothesis' @given tests may use them (it refuses function-scoped
# fixtures, which would not be reset between examples); each check is recorded under the
# test running at the time.
@pytest.fixture(scope="session")
def assert_equivariant(request: pytest.FixtureRequest) -> Callable[..., EquivarianceReport]:
    """``equivariance.assert_equivariant`` with the session's device, dtype and tolerances.

    Options given in the call win over the session's. The model and the input
    are copied before they are converted; the check is recorded for the
    terminal summary.
    """
    return _checker(request, "equivariance")


@pytest.fixture(scope="session")
def assert_invariant(request: pytest.FixtureRequest) -> Callable[..., EquivarianceReport]:
    """``equivariance.assert_invariant`` with the session's device, dtype and tolerances."""
    return _checker(request, "invariance")


def _checker(request: pytest.FixtureRequest, kind: str) -> Callable[..., EquivarianceReport]:
    return _Check(kind, request.config.stash[_SETTINGS], request.config.stash[_SUMMARY])


class _Check:
    """The fixtures' value: a check with the session's settings, recorded for the summary."""

    def __init__(self, kind: str, settings: _Settings, summary: _Summary) -> None:
        self.kind, self.settings, self.summary = kind, settings, summary

    def __call__(self, model: Any, x: Any, shifts: Any = None, **options: Any) -> EquivarianceReport:
        __tracebackhide__ = True
        import equivariance

        settings = self.settings
        model, x = _converted(model, x, settings)
        for name in ("atol", "rtol"):
            if getattr(settings, name) is not None:
                options.setdefault(name, getattr(settings, name))
        allow_vacuous = bool(options.pop("allow_vacuous", self.summary.allows_vacuous()))
        kind = self.kind
        run = equivariance.check_equivariance if kind == "equivariance" else equivariance.check_invariance
        report = run(model, x, shifts, **options)
        self.summary.record(report, allow_vacuous)
        return report.raise_if_failed(allow_vacuous=allow_vacuous)

    def __repr__(self) -> str:
        device, dtype = self.settings.device or "as given", self.settings.dtype or "as given"
        name = "assert_equivariant" if self.kind == "equivariance" else "assert_invariant"
        return f"<{name} fixture (device={device}, dtype={dtype})>"


def _converted(model: Any, x: Any, settings: _Settings) -> tuple[Any, Any]:
    """Copies of ``model`` (an ``nn.Module``) and ``x`` on the session's device and dtype."""
    if settings.device is None and settings.dtype is None:
        return model, x
    import torch

    from equivariance import InvalidArgument

    target: dict[str, Any] = {}
    if settings.device is not None:
        try:
            target["device"] = torch.device(settings.device)
        except RuntimeError:
            raise InvalidArgument(
                f"--equivariance-device {settings.device!r} is not a device torch knows; e.g. cpu, cuda"
            ) from None
    if settings.dtype is not None:
        target["dtype"] = getattr(torch, settings.dtype)
    if isinstance(model, torch.nn.Module):
        try:
            model = copy.deepcopy(model)
        except Exception as exc:
            raise InvalidArgument(
                f"--equivariance-dtype/--equivariance-device convert a copy of the model, but "
                f"copy.deepcopy({type(model).__name__}) raised {type(exc).__name__}: {exc}"
            ) from None
        model = model.to(**target)
    return model, _moved(x, target, torch)


def _moved(x: Any, target: dict[str, Any], torch: Any) -> Any:
    """``x`` on the session's device and dtype: a floating tensor, and each of a tuple, list or dict of
    a model's arguments (other values, and graphs, as they are)."""
    if isinstance(x, torch.Tensor):
        # a new tensor whenever anything changes; the caller's is untouched
        return x.to(**target) if x.dtype.is_floating_point else x.to(device=target.get("device"))
    if isinstance(x, (tuple, list)):
        return type(x)(_moved(v, target, torch) for v in x)
    if isinstance(x, dict):
        return {k: _moved(v, target, torch) for k, v in x.items()}
    return x


def _record(test: str, when: str, report: EquivarianceReport, allow_vacuous: bool) -> dict[str, Any]:
    details = {key: value for key, value in report.to_dict().items() if key != "results"}
    return {
        **details,
        "test": test,
        "when": when,
        "allowed_vacuous": allow_vacuous and report.within_tolerance and report.vacuous is not None,
        "model": report.subject,
        "shifts": len(report.results),
        "worst": str(report.worst_element),
        "error": report.max_error,
    }


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    excinfo = call.excinfo
    report_module = sys.modules.get("equivariance.report")
    if excinfo is None or report_module is None or call.when != "call":
        return
    if not isinstance(excinfo.value, AssertionError) or hasattr(excinfo.value, "report"):
        return  # an EquivarianceError's message is the table already
    failed = _failed_reports(excinfo.tb, report_module.EquivarianceReport)
    longrepr = outcome.get_result().longrepr
    if failed and hasattr(longrepr, "addsection"):
        for name, report in failed:
            longrepr.addsection(f"{name}: failed {report.kind} check", str(report))


def _failed_reports(tb: Any, report_type: type[Any]) -> list[tuple[str, Any]]:
    """The failed reports held in the local variables of the frame where the assertion failed."""
    while tb.tb_next is not None:
        tb = tb.tb_next
    found = tb.tb_frame.f_locals.items()
    return [(name, value) for name, value in found if isinstance(value, report_type) and not value.passed]


class _Summary:
    """Collects the checks of every test and prints them as a table at the end of the session.

    Checks travel, as JSON, in the test reports' ``user_properties``, so under
    xdist the controller collects every worker's checks and prints one table
    for the whole session (they also appear as properties in a JUnit XML
    report). A check that failed in a test that did not (inside
    ``pytest.raises(EquivarianceError)``, or an xfail) counts as an expected
    failure. A check run while a module-, class-, package- or session-scoped
    fixture is set up or torn down is attributed to that fixture, not to the
    test that happened to be running.
    """

    def __init__(self, settings: _Settings) -> None:
        self.settings = settings
        self.checks: list[dict[str, Any]] = []
        self.item: pytest.Item | None = None
        self.when = "setup"
        self.fixtures: list[tuple[Any, str]] = []  # (fixturedef, "setup" | "teardown"), innermost last
        self.call_failed: dict[str, bool] = {}

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        self.item, self.when = item, "setup"

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item) -> None:
        self.when = "call"

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> None:
        self.when = "teardown"

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: Any, request: pytest.FixtureRequest
    ) -> Generator[None, Any, Any]:
        if fixturedef.scope == "function":
            return (yield)
        self.fixtures.append((fixturedef, "setup"))
        try:
            return (yield)
        finally:
            self.fixtures.pop()
            # Finalizers run last added first: this one runs just before the fixture's own teardown,
            # and pytest_fixture_post_finalizer just after it.
            fixturedef.addfinalizer(lambda: self.fixtures.append((fixturedef, "teardown")))

    def pytest_fixture_post_finalizer(self, fixturedef: Any) -> None:
        if self.fixtures and self.fixtures[-1][0] is fixturedef:
            self.fixtures.pop()

    def allows_vacuous(self) -> bool:
        """Whether the session (``--equivariance-allow-vacuous``) or the running test's marker
        (``@pytest.mark.equivariance(allow_vacuous=True)``) lets a check that cannot fail pass."""
        if self.item is not None:
            for marker in self.item.iter_markers("equivariance"):
                if "allow_vacuous" in marker.kwargs:
                    return bool(marker.kwargs["allow_vacuous"])
        return self.settings.allow_vacuous

    def record(self, report: EquivarianceReport, allow_vacuous: bool = False) -> None:
        """Attach a check to the running test's report, whence the summary (and xdist) take it."""
        if self.item is None:
            return
        if self.fixtures:
            fixturedef, when = self.fixtures[-1]
            where = f"{fixturedef.baseid}::" if fixturedef.baseid else ""
            test = f"{where}{fixturedef.argname} ({fixturedef.scope} fixture {when})"
        else:
            test, when = self.item.nodeid, self.when
        self.item.user_properties.append((PROPERTY, json.dumps(_record(test, when, report, allow_vacuous))))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call":
            self.call_failed[report.nodeid] = report.failed
        if report.when != "teardown":
            return
        for key, value in report.user_properties:
            if key != PROPERTY:
                continue
            check = json.loads(str(value))
            caught = check["when"] == "call" and not self.call_failed.get(report.nodeid, True)
            allowed = check.get("allowed_vacuous", False)
            check["expected_failure"] = not check["passed"] and caught and not allowed
            self.checks.append(check)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        path = self.settings.report
        if path is None or hasattr(session.config, "workerinput"):  # xdist: the controller writes it
            return
        counts = _counts(self.checks)
        path.write_text(json.dumps({"checks": self.checks, **counts}, indent=2) + "\n")

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        mode = self.settings.summary
        rows = _merged(self.checks)
        if mode == "failed":
            rows = [row for row in rows if row["verdict"] in ("FAILED", "VACUOUS")]
        if mode == "off" or not self.checks or (mode == "failed" and not rows):
            return
        terminalreporter.ensure_newline()  # after the progress line, not inside the section
        terminalreporter.section("equivariance checks")
        for line in summary_lines(rows, _counts(self.checks), terminalreporter._tw.fullwidth):
            terminalreporter.write_line(line)


HEADER = ("test", "model", "checks", "shifts", "worst shift", "max error", "rtol", "dtype", "verdict")


def summary_lines(rows: list[dict[str, Any]], counts: dict[str, int], width: int) -> list[str]:
    """The summary: one line per row (see `fit_table`), then the counts, within ``width`` columns."""
    cells = [
        (
            c["test"] + ("" if c["kind"] == "equivariance" else " (invariance)"),
            c["model"],
            str(c["checks"]),
            str(c["shifts"]),
            c["worst"],
            f"{c['error']:.2e}",
            f"{c['rtol']:.0e}",
            c["dtype"],
            c["verdict"],
        )
        for c in rows
    ]
    lines, dropped = fit_table(HEADER, cells, width, right={"checks", "shifts", "max error", "rtol"})
    said = f"{counts['total']} check{'s' if counts['total'] != 1 else ''}, {counts['failed']} failed"
    if counts["expected_failures"]:
        said += f", {counts['expected_failures']} failed as expected"
    if counts.get("vacuous"):
        said += f", {counts['vacuous']} vacuous (allowed)"
    words = {"dtype": "{}", "rtol": "rtol {}", "checks": "{} checks a row"}
    same = ", ".join(words[name].format(value) for name, value in dropped.items()).replace(
        "1 checks a row", "1 check a row"
    )
    if not same:
        return [*lines, said]
    note = f"(every row: {same})"
    return [*lines, f"{said} {note}"] if len(said) + 1 + len(note) <= width else [*lines, said, note]


def _counts(checks: list[dict[str, Any]]) -> dict[str, int]:
    expected = sum(c["expected_failure"] for c in checks)
    allowed = sum(c.get("allowed_vacuous", False) for c in checks)
    return {
        "total": len(checks),
        "passed": sum(c["passed"] for c in checks),
        "failed": sum(not c["passed"] for c in checks) - expected - allowed,
        "expected_failures": expected,
        "vacuous": allowed,
    }


def _merged(checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per test, kind, model and dtype: a Hypothesis test checks once per example."""
    rows: dict[tuple[str, ...], dict[str, Any]] = {}
    for check in checks:
        key = (check["test"], check["kind"], check["model"], check["dtype"])
        row = rows.setdefault(key, {**check, "checks": 0, "shifts": 0, "error": -1.0, "verdict": "passed"})
        row["checks"] += 1
        row["shifts"] += check["shifts"]
        # a check that could not have failed (report.vacuous): "vacuous" where the test allowed it,
        # "VACUOUS" where it failed the test
        if check.get("allowed_vacuous"):
            verdict = "vacuous"
        elif not check["passed"]:
            vacuous = check.get("vacuous") and check.get("within_tolerance")
            verdict = "expected" if check["expected_failure"] else "VACUOUS" if vacuous else "FAILED"
        else:
            verdict = "passed"
        rank = ("passed", "vacuous", "expected", "VACUOUS", "FAILED")
        row["verdict"] = max(row["verdict"], verdict, key=rank.index)
        if check["error"] > row["error"]:
            row.update(worst=check["worst"], error=check["error"], rtol=check["rtol"])
    return list(rows.values())


# When the table is wider than the terminal: first the columns that hold one value in every row go (the
# counts line names it), then the test ids are shortened from the left, then the model names, then the
# columns a reader can best do without go, and last the test ids are shortened further.
CONSTANT_COLUMNS = ("dtype", "rtol", "checks")
SPARE_COLUMNS = ("worst shift", "shifts")
SHORTEST = {"test": 24, "model": 10}
SHORTEST_TEST_AT_LAST = 12


def fit_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], width: int, *, right: set[str]
) -> tuple[list[str], dict[str, str]]:
    """The table's lines within ``width`` columns, and the columns dropped with their one value.

    Examples:
        >>> header = ("test", "model", "dtype", "verdict")
        >>> rows = [("test_a.py::test_a_long_name[with-parameters]", "Conv2d", "float32", "passed")]
        >>> lines, dropped = fit_table(header, rows, 40, right=set())
        >>> for line in lines:
        ...     print(line)
        test                      model   verdict
        ...name[with-parameters]  Conv2d  passed
        >>> dropped
        {'dtype': 'float32'}
    """
    table = _Table(header, rows)
    dropped: dict[str, str] = {}
    for name in CONSTANT_COLUMNS:
        values = table.values(name)
        if table.width() > width and len(values) == 1:
            dropped[name] = values.pop()
            table.drop(name)
    for name, shortest in SHORTEST.items():
        table.shorten(name, table.width() - width, shortest)
    for name in SPARE_COLUMNS:
        if table.width() > width:
            table.drop(name)
    table.shorten("test", table.width() - width, SHORTEST_TEST_AT_LAST)
    return table.lines(right), dropped


class _Table:
    """Rows of cells under named columns, as the summary fits them to the terminal."""

    def __init__(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        self.columns = list(header)
        self.rows = [list(row) for row in rows]

    def values(self, name: str) -> set[str]:
        return {row[self.columns.index(name)] for row in self.rows} if name in self.columns else set()

    def widths(self) -> list[int]:
        return [max(len(row[i]) for row in (self.columns, *self.rows)) for i in range(len(self.columns))]

    def width(self) -> int:
        return sum(self.widths()) + 2 * (len(self.columns) - 1)

    def drop(self, name: str) -> None:
        if name in self.columns:
            index = self.columns.index(name)
            for row in (self.columns, *self.rows):
                del row[index]

    def shorten(self, name: str, excess: int, shortest: int) -> None:
        if excess <= 0 or name not in self.columns:
            return
        index = self.columns.index(name)
        room = max(shortest, self.widths()[index] - excess, len(name))
        for row in self.rows:
            row[index] = _shortened(row[index], room)

    def lines(self, right: set[str]) -> list[str]:
        widths = self.widths()
        return [
            "  ".join(
                cell.rjust(w) if name in right else cell.ljust(w)
                for name, cell, w in zip(self.columns, row, widths)
            ).rstrip()
            for row in (self.columns, *self.rows)
        ]


def _shortened(text: str, room: int) -> str:
    """``text`` in at most ``room`` characters: ``...`` and its end (the test's name and parameters)."""
    return text if len(text) <= room else "..." + text[len(text) - room + 3 :]
