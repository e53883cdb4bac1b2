"""Regressions between runs (``_equivariance_regressions``): save, compare, flag and fail, with ``pytester``."""

from __future__ import annotations

import json

import pytest

pytest_plugins = ["pytester"]

CREEP = """
from pathlib import Path

import torch

class Creep(torch.nn.Module):
    '''A circular convolution whose output is scaled by 1 + EPS * a ramp over the columns: the ramp stays
    where it is when the input moves, so the error grows with EPS (read from eps.txt at each run).'''

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular")
        self.eps = float(Path("eps.txt").read_text())

    def forward(self, x):
        y = self.conv(x)
        return y * (1 + self.eps * torch.arange(y.shape[-1], dtype=y.dtype) / y.shape[-1])

x = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(0))

def test_creep(assert_equivariant):
    assert_equivariant(Creep(), x, max_shift=1, boundary="circular")

def test_steady(assert_equivariant):
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular")
    assert_equivariant(conv, x, max_shift=1, boundary="circular")
"""


@pytest.fixture
def creep(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makepyfile(test_creep=CREEP)
    monkeypatch.setenv("COLUMNS", "120")
    return pytester


def _eps(project: pytest.Pytester, value: float) -> None:
    (project.path / "eps.txt").write_text(str(value))


def test_a_check_whose_error_grew_is_flagged_and_fails_the_session_only_when_asked(
    creep: pytest.Pytester,
) -> None:
    # on "main": exact
    _eps(creep, 0.0)
    result = creep.runpytest("--equivariance-save", "main")
    result.assert_outcomes(passed=2)
    saved = creep.path / ".equivariance" / "main.json"
    result.stdout.fnmatch_lines([f"equivariance: saved the errors of the checks as 'main' in {saved}"])
    data = json.loads(saved.read_text())
    assert [(c["test"], c["model"], c["error"]) for c in data["checks"]] == [
        ("test_creep.py::test_creep", "Creep", 0.0),
        ("test_creep.py::test_steady", "Conv2d", 0.0),
    ]
    # later: the error crept up to 8.8e-6, which still passes at rtol 1e-4
    _eps(creep, 3e-5)
    result = creep.runpytest("--equivariance-compare")
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "*= equivariance errors against 'main' (* UTC*) =*",
            "test * model * saved * now  change",
            "test_creep.py::test_creep * Creep * 0.00e+00  8.7?e-06  from 0  GREW",
            "test_creep.py::test_steady * Conv2d * 0.00e+00  0.00e+00 * =",
            "2 checks compared: 1 grew beyond ratio:10; 0 new, 0 not run",
        ]
    )
    # with a threshold to fail on, the session fails although every test passed
    result = creep.runpytest("--equivariance-compare=main", "--equivariance-compare-fail=ratio:10")
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        ["2 checks compared: 1 grew beyond ratio:10 (the session fails: --equivariance-compare-fail); *"]
    )
    assert creep.runpytest("--equivariance-compare", "--equivariance-compare-fail=abs:1e-6").ret == 1
    # thresholds it did not cross: the session passes
    for threshold in ("ratio:1e6", "abs:1e-4"):
        result = creep.runpytest("--equivariance-compare", f"--equivariance-compare-fail={threshold}")
        assert result.ret == pytest.ExitCode.OK, threshold
        result.stdout.fnmatch_lines([f"2 checks compared: 0 grew beyond {threshold}; 0 new, 0 not run"])


def test_rounding_is_not_growth(creep: pytest.Pytester) -> None:
    _eps(creep, 0.0)
    creep.runpytest("--equivariance-save", "main").assert_outcomes(passed=2)
    _eps(creep, 1e-6)  # an error of about 3e-7 in float32: below ten times the floor, rtol / 1000
    result = creep.runpytest("--equivariance-compare", "--equivariance-compare-fail=ratio:10")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "test_creep.py::test_creep * Creep * 0.00e+00  *e-07  from 0",
            "2 checks compared: 0 grew beyond ratio:10; *",
        ]
    )
    assert "GREW" not in result.stdout.str()


def test_compare_takes_the_latest_run_a_name_or_a_file_and_saving_again_replaces(
    creep: pytest.Pytester,
) -> None:
    _eps(creep, 1e-4)
    creep.runpytest("--equivariance-save", "old").assert_outcomes(passed=2)
    _eps(creep, 0.0)
    creep.runpytest("--equivariance-save", "new").assert_outcomes(passed=2)
    header = "*= equivariance errors against '{}' *"
    creep.runpytest("--equivariance-compare").stdout.fnmatch_lines([header.format("new")])
    result = creep.runpytest("--equivariance-compare=old")
    result.stdout.fnmatch_lines(
        [header.format("old"), "test_creep.py::test_creep * Creep * 2.92e-05  0.00e+00 * x0"]
    )
    path = creep.path / ".equivariance" / "old.json"
    creep.runpytest(f"--equivariance-compare={path}").stdout.fnmatch_lines([header.format("old")])
    # compare with "new", then replace it: the next run compares with this one
    _eps(creep, 3e-5)
    result = creep.runpytest("--equivariance-compare=new", "--equivariance-save=new")
    result.stdout.fnmatch_lines(["*from 0  GREW", "2 checks compared: 1 grew beyond ratio:10; *"])
    result = creep.runpytest("--equivariance-compare=new", "-k", "not steady")
    result.stdout.fnmatch_lines(
        [
            "test_creep.py::test_creep * Creep * 8.7?e-06  8.7?e-06 * =",
            "1 check compared: 0 grew *; 0 new, 1 not run",
        ]
    )


def test_quiet_shows_only_the_checks_that_grew_and_storage_moves_the_files(
    creep: pytest.Pytester,
) -> None:
    _eps(creep, 0.0)
    creep.runpytest("--equivariance-save", "main", "--equivariance-storage", "runs").assert_outcomes(passed=2)
    assert (creep.path / "runs" / "main.json").is_file()
    assert not (creep.path / ".equivariance").exists()
    result = creep.runpytest("-q", "--equivariance-compare", "--equivariance-storage", "runs")
    assert "equivariance errors against" not in result.stdout.str()  # nothing grew: nothing to say
    _eps(creep, 3e-5)
    creep.makeini("[pytest]\nequivariance_storage = runs\n")
    result = creep.runpytest("-q", "--equivariance-compare")
    result.stdout.fnmatch_lines(
        ["*= equivariance errors against 'main' *", "test_creep.py::test_creep *GREW"]
    )
    assert "test_steady" not in result.stdout.str().split("equivariance errors against")[1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--equivariance-compare"], "--equivariance-compare: nothing is saved in * yet; run once with "
         "--equivariance-save NAME*"),
        (["--equivariance-compare=gone"], "--equivariance-compare: no saved run 'gone' in *; saved runs: broken, main"),
        (["--equivariance-compare", "tests/"], "*it took 'tests/', meant as a test path? Write "
         "--equivariance-compare=NAME, or put the option after the paths"),
        (["--equivariance-save", "a/b"], "--equivariance-save expects a name of letters, digits, '.', '_' or "
         "'-', found 'a/b'; e.g. --equivariance-save main"),
        (["--equivariance-compare-fail=ratio:10"], "--equivariance-compare-fail needs a run to compare with; "
         "add --equivariance-compare[[]=NAME]"),
        (["--equivariance-compare=main", "--equivariance-compare-fail=ratio:0.5"], "--equivariance-compare-fail "
         "expects ratio:R (R > 1, the error grew more than R times) or abs:A (A > 0, it grew by more than A), "
         "found 'ratio:0.5'; e.g. ratio:10"),
        (["--equivariance-compare=broken"], "--equivariance-compare: *broken.json is not a run saved by "
         "--equivariance-save (format 1); save the run again"),
    ],
    ids=["nothing-saved", "unknown-name", "a-path", "bad-name", "fail-alone", "bad-threshold", "broken-file"],
)  # fmt: skip
def test_usage_errors_at_start_up(argv: list[str], message: str, creep: pytest.Pytester) -> None:
    if argv != ["--equivariance-compare"]:
        _eps(creep, 0.0)
        creep.runpytest("--equivariance-save", "main").assert_outcomes(passed=2)
        (creep.path / ".equivariance" / "broken.json").write_text("{}")
    result = creep.runpytest(*argv)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])


def test_the_controller_saves_and_compares_the_checks_of_xdist_workers(creep: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    _eps(creep, 0.0)
    creep.runpytest("--equivariance-save", "main").assert_outcomes(passed=2)
    _eps(creep, 3e-5)
    result = creep.runpytest_subprocess(
        "-n", "2", "-p", "no:cacheprovider", "--equivariance-compare=main", "--equivariance-compare-fail=ratio:10",
        "--equivariance-save=next",
    )  # fmt: skip
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["test_creep.py::test_creep *GREW", "2 checks compared: 1 grew *"])
    saved = json.loads((creep.path / ".equivariance" / "next.json").read_text())  # once, by the controller
    assert sorted((c["model"], c["error"] > 0) for c in saved["checks"]) == [
        ("Conv2d", False),
        ("Creep", True),
    ]
