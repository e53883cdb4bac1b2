"""The pytest plugin of ``equivariance``: fixtures, options, a marker and a summary of every check.

It is a top-level module, outside the package, because importing anything
from ``equivariance`` imports torch: pytest loads this module at start-up in
every project where the library is installed, and it imports neither torch
nor the library until a test asks for one of its fixtures. Measured with
``pytest --version`` in an empty project, it adds about a millisecond.

- fixtures ``assert_equivariant`` and ``assert_invariant``: the library's
  functions with the session's device, dtype and tolerances applied;
- options ``--equivariance-device``, ``--equivariance-dtype``,
  ``--equivariance-atol`` and ``--equivariance-rtol`` (ini: ``equivariance_device`` ...);
- the marker ``equivariance``, given to every test using the fixtures;
- a failing ``assert report.passed`` shows the report's table;
- a terminal section listing every check the fixtures ran.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from equivariance.report import EquivarianceReport

FIXTURES = ("assert_equivariant", "assert_invariant")
DTYPES = ("float64", "float32", "float16", "bfloat16")
PROPERTY = "equivariance_check"  # the user_properties key that carries a check to the summary


class _Settings:
    """The session's options, read once (a plain class: a dataclass costs a millisecond at start-up)."""

    def __init__(self, device: str | None, dtype: str | None, atol: float | None, rtol: float | None) -> None:
        self.device, self.dtype, self.atol, self.rtol = device, dtype, atol, rtol


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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "equivariance: a shift equivariance check (given to tests using the assert_equivariant or "
        "assert_invariant fixtures)",
    )
    config.stash[_SETTINGS] = _read_settings(config)
    config.stash[_SUMMARY] = _Summary()
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
    return _Settings(
        value("device"), dtype, _tolerance(value("atol"), "atol"), _tolerance(value("rtol"), "rtol")
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
    """:func:`equivariance.assert_equivariant` with the session's device, dtype and tolerances.

    Options given in the call win over the session's. The model and the input
    are copied before they are converted; the check is recorded for the
    terminal summary.
    """
    return _checker(request, "equivariance")


@pytest.fixture(scope="session")
def assert_invariant(request: pytest.FixtureRequest) -> Callable[..., EquivarianceReport]:
    """:func:`equivariance.assert_invariant` with the session's device, dtype and tolerances."""
    return _checker(request, "invariance")


def _checker(request: pytest.FixtureRequest, kind: str) -> Callable[..., EquivarianceReport]:
    settings = request.config.stash[_SETTINGS]
    summary = request.config.stash[_SUMMARY]

    def check(model: Any, x: Any, shifts: Any = None, **options: Any) -> EquivarianceReport:
        __tracebackhide__ = True
        import equivariance

        model, x = _converted(model, x, settings)
        for name in ("atol", "rtol"):
            if getattr(settings, name) is not None:
                options.setdefault(name, getattr(settings, name))
        run = equivariance.check_equivariance if kind == "equivariance" else equivariance.check_invariance
        report = run(model, x, shifts, **options)
        summary.record(report)
        return report.raise_if_failed()

    return check


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
    if isinstance(x, torch.Tensor) and x.dtype.is_floating_point:
        x = x.to(**target)  # a new tensor whenever anything changes; the caller's is untouched
    return model, x


def _record(nodeid: str, report: EquivarianceReport) -> dict[str, Any]:
    return {
        "test": nodeid,
        "kind": report.kind,
        "model": report.subject,
        "shifts": len(report.results),
        "worst": str(report.worst_element),
        "error": report.max_error,
        "rtol": report.rtol,
        "dtype": report.dtype,
        "passed": report.passed,
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

    Checks travel in the test reports' ``user_properties``, so under xdist the
    controller collects every worker's checks and prints one table for the
    whole session (they also appear as properties in a JUnit XML report).
    """

    def __init__(self) -> None:
        self.checks: list[dict[str, Any]] = []
        self.item: pytest.Item | None = None

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        self.item = item

    def record(self, report: EquivarianceReport) -> None:
        """Attach a check to the running test's report, whence the summary (and xdist) take it."""
        if self.item is not None:
            self.item.user_properties.append((PROPERTY, _record(self.item.nodeid, report)))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "teardown":
            self.checks.extend(value for key, value in report.user_properties if key == PROPERTY)  # type: ignore[misc]

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.checks:
            return
        terminalreporter.section("equivariance checks")
        header = ("test", "model", "checks", "shifts", "worst shift", "max error", "rtol", "dtype", "verdict")
        rows = [
            (
                c["test"] + ("" if c["kind"] == "equivariance" else " (invariance)"),
                c["model"],
                str(c["checks"]),
                str(c["shifts"]),
                c["worst"],
                f"{c['error']:.2e}",
                f"{c['rtol']:.0e}",
                c["dtype"],
                "passed" if c["passed"] else "FAILED",
            )
            for c in _merged(self.checks)
        ]
        widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
        for row in (header, *rows):
            cells = [
                cell.rjust(w) if i in (2, 3, 5, 6) else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(row, widths))
            ]
            terminalreporter.write_line("  ".join(cells).rstrip())
        failed = sum(not c["passed"] for c in self.checks)
        terminalreporter.write_line(f"{len(self.checks)} checks, {failed} failed")


def _merged(checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per test, kind, model and dtype: a Hypothesis test checks once per example."""
    rows: dict[tuple[str, ...], dict[str, Any]] = {}
    for check in checks:
        key = (check["test"], check["kind"], check["model"], check["dtype"])
        row = rows.setdefault(key, {**check, "checks": 0, "shifts": 0, "error": -1.0, "passed": True})
        row["checks"] += 1
        row["shifts"] += check["shifts"]
        row["passed"] = row["passed"] and check["passed"]
        if check["error"] > row["error"]:
            row.update(worst=check["worst"], error=check["error"], rtol=check["rtol"])
    return list(rows.values())
