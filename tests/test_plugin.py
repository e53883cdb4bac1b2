"""The pytest plugin, run on small test projects with ``pytester``.

Startup cost, measured on the 2-core CI machine: importing the plugin module
takes about 0.7 ms (5 ms where no bytecode cache is written, as it compiles),
against 220 to 330 ms for ``pytest --version``; the medians of 40 runs of
``pytest --version`` with and without ``-p no:equivariance`` differ by less
than their run-to-run noise (about 20 ms). The last test here checks the
reason: a project that never uses the fixtures never imports torch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from xml.etree import ElementTree

import pytest

pytest_plugins = ["pytester"]

MODELS = """
import torch
from equivariance.models import MLP

def conv():
    torch.manual_seed(0)
    return torch.nn.Conv2d(1, 2, 3)

def image(size=12):
    return torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0))
"""


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makepyfile(models=MODELS)
    pytester.syspathinsert()
    monkeypatch.setenv("COLUMNS", "160")  # a wide terminal: every column of the summary fits
    return pytester


def test_the_fixtures_pass_and_fail_like_the_library_and_hide_their_frames(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_checks="""
        import torch
        from models import MLP, conv, image

        def test_conv(assert_equivariant):
            report = assert_equivariant(conv(), image(), max_shift=2)
            assert report.passed and len(report.elements) == 25

        def test_pooling(assert_invariant):
            pool = torch.nn.Sequential(conv(), torch.nn.AdaptiveAvgPool2d(1))
            assert_invariant(pool, image(), max_shift=0)

        def test_mlp(assert_equivariant):
            assert_equivariant(MLP(input_size=20), image(20), max_shift=1)
        """
    )
    result = project.runpytest()
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*InvalidArgument: the shifts to check are only the identity*",
            "*EquivarianceError: equivariance check FAILED: MLP, 9 shifts, 8 failed*",
        ]
    )
    assert "_equivariance_pytestplugin.py" not in result.stdout.str()


def test_a_failed_fixture_check_points_to_the_profile_and_takes_actions_of_ones_own(
    project: pytest.Pytester,
) -> None:
    project.makepyfile(
        test_own_actions="""
        import torch
        from equivariance.actions import Action
        from models import conv, image

        class Transpose(Action):
            def act(self, x, grid):
                return x.transpose(-1, -2)

        def symmetric():
            layer = conv()
            with torch.no_grad():
                layer.weight.copy_(layer.weight + layer.weight.transpose(-1, -2))
            return layer

        def test_symmetric(assert_equivariant):
            assert assert_equivariant(symmetric(), image(), transforms=[Transpose()]).passed

        def test_plain(assert_equivariant):
            assert_equivariant(conv(), image(), transforms=[Transpose()])

        def test_a_layer(assert_equivariant):
            dense = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(200, 200), torch.nn.Unflatten(1, (2, 10, 10)))
            net = torch.nn.Sequential(conv(), dense, torch.nn.ReLU())
            assert_equivariant(net, image(), max_shift=1, layer="0")
            assert_equivariant(net, image(), max_shift=1, layer="1")
        """
    )
    result = project.runpytest()
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*EquivarianceError: equivariance check FAILED: Conv2d, 1 transform, 1 failed*",
            "*to find the layer: equivariance.profile_equivariance(model, x, shift=Transpose()) gives the error*",
            "*to find the layer: equivariance.profile_equivariance(model, x, shift=(*), up_to='1') gives the error*",
        ]
    )


def test_a_strided_convolution_checked_through_the_fixture_is_told_its_stride_first(
    project: pytest.Pytester,
) -> None:
    """Issue 21 item 15: the fixture's failure shows the hints in the library's order, the stride
    the sizes say before the layout the shape also reads as."""
    project.makepyfile(
        test_strided="""
        import torch

        def test_strided(assert_equivariant):
            torch.manual_seed(0)
            assert_equivariant(torch.nn.Conv2d(3, 8, 3, stride=2), torch.rand(2, 3, 17, 17))
        """
    )
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*hint: the output (8, 8) is 2.1 times smaller than the input (17, 17), so the model subsamples*",
            "*hint: the output of shape (2, 8, 8, 8) was read as channels first, but it reads as channels last*",
        ]
    )


def test_dtype_option_checks_copies_in_that_dtype(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_dtype="""
        import torch
        from models import conv, image

        def test_float64(assert_equivariant):
            model, x = conv(), image()
            before = {k: v.clone() for k, v in model.state_dict().items()}
            report = assert_equivariant(model, x)
            assert report.dtype == "float64" and report.rtol == 1e-10
            assert x.dtype == torch.float32 and model.weight.dtype == torch.float32
            assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        """
    )
    project.runpytest("--equivariance-dtype", "float64").assert_outcomes(passed=1)


def test_device_option_moves_copies_and_refuses_unknown_devices(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_device="""
        from models import conv, image

        def test_cpu(assert_equivariant):
            assert assert_equivariant(conv(), image()).device == "cpu"
        """
    )
    project.runpytest("--equivariance-device", "cpu").assert_outcomes(passed=1)
    result = project.runpytest("--equivariance-device", "abacus")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--equivariance-device 'abacus' is not a device torch knows; e.g. cpu, cuda*"]
    )


def test_a_device_this_machine_lacks_is_a_usage_error_at_start_up(project: pytest.Pytester) -> None:
    import torch

    project.makepyfile(test_nothing="def test_nothing(): pass")
    result = project.runpytest("--equivariance-device", "cuda:99")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--equivariance-device cuda:99: this machine has *CUDA device*"])
    if not torch.cuda.is_available():
        result = project.runpytest("--equivariance-device", "cuda")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(
            [
                "ERROR: --equivariance-device cuda: this machine has no CUDA device (*); run on a machine with a GPU*"
            ]
        )
        assert "AssertionError" not in result.stdout.str() + result.stderr.str()


def test_tolerance_options_override_the_dtype_defaults_but_not_the_call(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_tolerance="""
        from models import conv, image

        def test_session(assert_equivariant):
            report = assert_equivariant(conv(), image())
            assert (report.rtol, report.atol, report.tolerance_source) == (0.5, 0.25, "caller")

        def test_call_wins(assert_equivariant):
            assert assert_equivariant(conv(), image(), rtol=1e-3).rtol == 1e-3
        """
    )
    result = project.runpytest("--equivariance-rtol", "0.5", "--equivariance-atol", "0.25")
    result.assert_outcomes(passed=2)


def test_options_can_be_set_in_the_ini_file_and_the_command_line_wins(project: pytest.Pytester) -> None:
    project.makeini(
        """
        [pytest]
        equivariance_dtype = float64
        equivariance_rtol = 1e-3
        """
    )
    project.makepyfile(
        test_ini="""
        import sys
        from models import conv, image

        def test_ini(assert_equivariant):
            report = assert_equivariant(conv(), image())
            print("SETTINGS", report.dtype, report.rtol)
        """
    )
    project.runpytest("-s").stdout.fnmatch_lines(["*SETTINGS float64 0.001*"])
    result = project.runpytest("-s", "--equivariance-dtype", "float32")
    result.stdout.fnmatch_lines(["*SETTINGS float32 0.001*"])


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (("--equivariance-dtype", "int8"), "--equivariance-dtype must be one of float64, float32*"),
        (("--equivariance-rtol", "small"), "--equivariance-rtol must be a finite non-negative number*"),
        (("--equivariance-atol", "-1"), "--equivariance-atol must be a finite non-negative number*"),
    ],
)
def test_bad_option_values_stop_the_session(
    project: pytest.Pytester, option: tuple[str, str], message: str
) -> None:
    project.makepyfile(test_nothing="def test_nothing(): pass")
    result = project.runpytest(*option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}"])


def test_tests_using_the_fixtures_get_the_marker(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_marks="""
        import pytest
        from models import conv, image

        def test_fixture(assert_equivariant):
            assert_equivariant(conv(), image())

        @pytest.mark.equivariance
        def test_marked():
            pass

        def test_other():
            pass
        """
    )
    result = project.runpytest("--strict-markers", "-m", "equivariance", "-v")
    result.assert_outcomes(passed=2, deselected=1)
    result.stdout.fnmatch_lines(["*test_fixture PASSED*", "*test_marked PASSED*"])
    project.runpytest("-m", "not equivariance").assert_outcomes(passed=1, deselected=2)
    project.runpytest("--markers").stdout.fnmatch_lines(
        ["@pytest.mark.equivariance(allow_vacuous=False): a shift equivariance check*"]
    )


def test_a_failing_assert_on_a_report_shows_the_report(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_plain="""
        from equivariance import check_equivariance
        from models import MLP, image

        def test_plain():
            report = check_equivariance(MLP(input_size=20), image(20), max_shift=1)
            assert report.passed
        """
    )
    for verbosity in ("-q", "-vv"):  # -vv: pytest shows reprs whole
        result = project.runpytest(verbosity)
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(
            [
                ">       assert report.passed",
                "E       assert False",
                "E        +  where False = <EquivarianceReport equivariance check FAILED: MLP, 9 shifts, 8 failed; "
                "max error * (rtol 1e-04, float32)>.passed",
                "*report: failed equivariance check*",
                "equivariance check FAILED: MLP, 9 shifts, 8 failed; max error *",
                "  shift * error  verdict",
            ]
        )
        assert "ShiftResult(" not in result.stdout.str()  # no field of the report before its table


def test_the_summary_lists_every_check_of_the_session(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_summary="""
        import torch
        from models import MLP, conv, image

        def test_conv(assert_equivariant):
            assert_equivariant(conv(), image(), max_shift=1)

        def test_two(assert_equivariant, assert_invariant):
            assert_equivariant(conv(), image(), shifts=[(0, 2), (1, 1)])
            assert_invariant(torch.nn.Sequential(conv(), torch.nn.AdaptiveAvgPool2d(1)), image(),
                             boundary="circular", max_shift=1)

        def test_mlp(assert_equivariant):
            assert_equivariant(MLP(input_size=20), image(20), max_shift=1)

        def test_unrelated():
            pass
        """
    )
    result = project.runpytest()
    result.stdout.fnmatch_lines(
        [
            "*= equivariance checks =*",
            "test * model * checks  shifts  worst shift  max error   rtol  dtype    verdict",
            "test_summary.py::test_conv *Conv2d *1  *9  (-1, -1) *0.00e+00  1e-04  float32  passed",
            "test_summary.py::test_two *Conv2d *1  *2  (0, 2) *0.00e+00  1e-04  float32  passed",
            "test_summary.py::test_two (invariance)*Sequential *1  *9  (*)*e-02  1e-04  float32  FAILED",
            "test_summary.py::test_mlp *MLP *1  *9  (*)*e+00  1e-04  float32  FAILED",
            "4 checks, 2 failed",
        ]
    )


def test_the_fixture_has_a_readable_repr(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_repr="""
        from models import MLP, image

        def test_mlp(assert_equivariant, assert_invariant):
            assert_equivariant(MLP(input_size=20), image(20), max_shift=1)
        """
    )
    result = project.runpytest("--equivariance-dtype", "float64")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "assert_equivariant = <assert_equivariant fixture (device=as given, dtype=float64)>",
            "assert_invariant = <assert_invariant fixture (device=as given, dtype=float64)>",
        ]
    )
    assert "<locals>" not in result.stdout.str()


EXPECTED = """
import pytest
from equivariance import EquivarianceError
from models import MLP, conv, image

def test_raises(assert_equivariant):
    assert_equivariant(conv(), image(), max_shift=1)
    with pytest.raises(EquivarianceError):
        assert_equivariant(MLP(input_size=20), image(20), max_shift=1)

@pytest.mark.xfail(raises=EquivarianceError, strict=True)
def test_xfail(assert_equivariant):
    assert_equivariant(MLP(input_size=20), image(20), max_shift=1)

def test_fails(assert_equivariant):
    assert_equivariant(MLP(input_size=20), image(20), max_shift=1)
"""


def test_a_check_expected_to_fail_is_counted_as_expected(project: pytest.Pytester) -> None:
    project.makepyfile(test_expected=EXPECTED)
    result = project.runpytest()
    result.assert_outcomes(passed=1, xfailed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "test_expected.py::test_raises *Conv2d * passed",
            "test_expected.py::test_raises *MLP * expected",
            "test_expected.py::test_xfail *MLP * expected",
            "test_expected.py::test_fails *MLP * FAILED",
            "4 checks, 1 failed, 2 failed as expected",
        ]
    )


def test_the_summary_option_and_quiet_runs(project: pytest.Pytester) -> None:
    project.makepyfile(test_expected=EXPECTED)
    table = "*= equivariance checks =*"
    # -q: only the failed rows
    result = project.runpytest("-q")
    result.stdout.fnmatch_lines(
        [table, "test * verdict", "test_expected.py::test_fails *MLP * FAILED", "4 checks, *"]
    )
    assert "test_raises" not in result.stdout.str().split("equivariance checks")[1]
    result = project.runpytest("-q", "--equivariance-summary", "all")
    result.stdout.fnmatch_lines([table, "test_expected.py::test_raises *Conv2d * passed"])
    result = project.runpytest("--equivariance-summary", "off")
    assert "equivariance checks" not in result.stdout.str()
    # -q with nothing failed: no table at all
    result = project.runpytest("-q", "-k", "raises or xfail")
    result.assert_outcomes(passed=1, xfailed=1)
    assert "equivariance checks" not in result.stdout.str()
    project.makeini("[pytest]\nequivariance_summary = off\n")
    assert "equivariance checks" not in project.runpytest().stdout.str()
    project.makeini("[pytest]\nequivariance_summary = some\n")
    result = project.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*equivariance_summary must be one of all, failed, off, found 'some'"])


def test_the_json_report_and_the_junit_properties(project: pytest.Pytester) -> None:
    project.makepyfile(test_expected=EXPECTED)
    project.runpytest("--equivariance-report", "out/checks.json", "--junitxml", "junit.xml")
    data = (
        json.loads((project.path / "out" / "checks.json").read_text())
        if (project.path / "out").exists()
        else None
    )
    assert data is None  # the folder must exist: refused at start-up, see below
    (project.path / "out").mkdir()
    project.runpytest("--equivariance-report", "out/checks.json", "--junitxml", "junit.xml")
    data = json.loads((project.path / "out" / "checks.json").read_text())
    assert (data["total"], data["passed"], data["failed"], data["expected_failures"]) == (4, 1, 1, 2)
    first = data["checks"][0]
    assert first["test"] == "test_expected.py::test_raises"
    assert (first["kind"], first["model"], first["passed"], first["expected_failure"]) == (
        "equivariance",
        "Conv2d",
        True,
        False,
    )
    assert (first["shifts"], first["input_shape"], first["rtol"]) == (9, [2, 1, 12, 12], 1e-4)
    assert [c["expected_failure"] for c in data["checks"]] == [False, True, True, False]
    properties = ElementTree.parse(project.path / "junit.xml").getroot().iter("property")
    values = [json.loads(p.get("value", "")) for p in properties if p.get("name") == "equivariance_check"]
    assert [v["model"] for v in values] == ["Conv2d", "MLP", "MLP", "MLP"]
    result = project.runpytest("--equivariance-report", "missing/checks.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--equivariance-report missing/checks.json: the folder * does not exist*"])


def test_a_check_in_a_session_fixtures_teardown_is_attributed_to_the_fixture(
    project: pytest.Pytester,
) -> None:
    project.makeconftest(
        """
        import pytest
        from models import conv, image

        @pytest.fixture(scope="session")
        def model(assert_equivariant):
            net = conv()
            assert_equivariant(net, image(), max_shift=1)   # setup
            yield net
            assert_equivariant(net, image(10), max_shift=2)  # teardown, after the last test
        """
    )
    project.makepyfile(
        test_fixture="""
        from models import image

        def test_first(model, assert_equivariant):
            assert_equivariant(model, image(11), shifts=[(0, 1)])

        def test_last(model):
            pass
        """
    )
    result = project.runpytest()
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "model (session fixture setup) * Conv2d *1 *9 *passed",
            "test_fixture.py::test_first * Conv2d *1 *1 *passed",
            "model (session fixture teardown) * Conv2d *1 *25 *passed",
            "3 checks, 0 failed",
        ]
    )
    assert "test_last" not in result.stdout.str().split("equivariance checks")[1]


def test_the_summary_and_the_json_report_gather_the_checks_of_xdist_workers(project: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    project.makepyfile(
        test_workers="""
        import pytest
        from models import conv, image

        @pytest.mark.parametrize("size", [10, 11, 12, 13])
        def test_conv(assert_equivariant, size):
            assert_equivariant(conv(), image(size), max_shift=1)
        """
    )
    result = project.runpytest_subprocess(
        "-n", "2", "-p", "no:cacheprovider", "--equivariance-report", "r.json"
    )
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*= equivariance checks =*", "4 checks, 0 failed"])
    data = json.loads((project.path / "r.json").read_text())  # written once, by the controller
    assert sorted(c["input_shape"][-1] for c in data["checks"]) == [10, 11, 12, 13]


def test_the_example_runs_as_a_test_suite_and_again_in_float64(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """examples/test_in_your_suite.py: plain code, the fixture, and the fixture inside @given."""
    monkeypatch.setenv("COLUMNS", "160")
    example = Path(__file__).parents[1] / "examples" / "test_in_your_suite.py"
    pytester.makepyfile(test_in_your_suite=example.read_text())
    result = pytester.runpytest("--equivariance-dtype", "float64", "-p", "no:randomly")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "*::test_lenet_with_the_fixture * LeNet.conv4 * 1 * 49 * 1e-10  float64  passed",
            "*::test_my_block_keeps_any_conv_stack_equivariant * Sequential * 20 * 20 * 1e-10  float64  passed",
        ]
    )


def test_a_project_that_never_uses_the_fixtures_never_imports_torch(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import sys

        def pytest_terminal_summary(terminalreporter, config):
            plugin = config.pluginmanager.has_plugin("equivariance")
            terminalreporter.write_line(f"PLUGIN {plugin} TORCH {'torch' in sys.modules}")
        """
    )
    pytester.makepyfile(test_plain="def test_plain():\n    assert 1 + 1 == 2\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["PLUGIN True TORCH False"])


def test_a_vacuous_check_fails_the_test_unless_allowed(project: pytest.Pytester) -> None:
    """Issue 21, item 16: a check that cannot fail is not a pass; the keyword, the marker and the
    option let a property test that draws dead networks pass it, and the summary says which."""
    project.makepyfile(
        test_dead="""
        import pytest
        import torch
        from models import conv, image

        def dead():
            model = conv()
            with torch.no_grad():
                model.weight.zero_()
            return model

        def test_dead(assert_equivariant):
            assert_equivariant(dead(), image(), max_shift=1)

        def test_dead_allowed(assert_equivariant):
            report = assert_equivariant(dead(), image(), max_shift=1, allow_vacuous=True)
            assert report.vacuous is not None and not report.passed

        @pytest.mark.equivariance(allow_vacuous=True)
        def test_dead_marked(assert_equivariant):
            assert_equivariant(dead(), image(), max_shift=1)

        def test_alive(assert_equivariant):
            assert_equivariant(conv(), image(), max_shift=1)
        """
    )
    result = project.runpytest()
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*VacuousCheckError: equivariance check VACUOUS (cannot fail)*",
            "*pass allow_vacuous=True to accept it*",
            "test_dead.py::test_dead *Conv2d *1  *9  * VACUOUS",
            "test_dead.py::test_dead_allowed *Conv2d *1  *9  * vacuous",
            "test_dead.py::test_dead_marked *Conv2d *1  *9  * vacuous",
            "test_dead.py::test_alive *Conv2d *1  *9  * passed",
            "4 checks, 1 failed, 2 vacuous (allowed)",
        ]
    )
    project.runpytest("--equivariance-allow-vacuous").assert_outcomes(passed=4)
    project.makeini("[pytest]\nequivariance_allow_vacuous = true\n")
    project.runpytest().assert_outcomes(passed=4)


LONG_IDS = """
import pytest
from models import MLP, conv, image

@pytest.mark.parametrize("size", [12, 13])
def test_a_convolution_checked_on_images_of_several_sizes_with_a_long_name(assert_equivariant, size):
    assert_equivariant(conv(), image(size), max_shift=1)

def test_mlp(assert_equivariant):
    assert_equivariant(MLP(input_size=20), image(20), max_shift=1)
"""


@pytest.mark.parametrize(
    ("columns", "header"),
    [
        (60, "test model shifts max error verdict"),
        (80, "test model shifts worst shift max error verdict"),
        (100, "test model shifts worst shift max error verdict"),
    ],
)
def test_the_summary_fits_the_terminal(
    columns: int, header: str, project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makepyfile(test_long_ids=LONG_IDS)
    monkeypatch.setenv("COLUMNS", str(columns))
    result = project.runpytest()
    result.assert_outcomes(passed=2, failed=1)
    table = result.stdout.str().split("= equivariance checks =")[1].split("\n=")[0].strip("=\n").splitlines()
    assert max(len(line) for line in table) <= columns, "\n".join(table)
    # the columns of one value are named once, the ends of the test ids stay, and the rarest columns go last
    assert " ".join(table[0].split()) == header
    assert " ".join(table[4:]) == "3 checks, 1 failed (every row: float32, rtol 1e-04, 1 check a row)"
    assert table[1].endswith("passed")
    assert "long_name[12]  Conv2d" in table[1]
    assert re.search(r"test_mlp +MLP ", table[3])


def test_a_wide_terminal_gets_every_column(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    project.makepyfile(test_long_ids=LONG_IDS)
    monkeypatch.setenv("COLUMNS", "200")
    result = project.runpytest()
    result.stdout.fnmatch_lines(
        [
            "test * model * checks  shifts  worst shift  max error   rtol  dtype    verdict",
            "test_long_ids.py::test_a_convolution_checked_on_images_of_several_sizes_with_a_long_name?12?  Conv2d *",
            "3 checks, 1 failed",
        ]
    )


def test_the_fixtures_take_point_clouds_with_inputs_and_outputs(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_points="""
        import pytest
        import torch
        from equivariance.euclidean import SO3
        from equivariance.fields import Positions, Scalars, Vectors
        from equivariance.permutations import Permutations

        def centred(pos, h):
            return (pos - pos.mean(-2, keepdim=True)) * h.mean(-1, keepdim=True)

        pos, h = torch.randn(2, 5, 3), torch.randn(2, 5, 4)

        def test_rotations(assert_equivariant):
            report = assert_equivariant(centred, (pos, h), transforms=SO3(8, seed=0),
                                        inputs=(Positions(), Scalars()), outputs=Vectors())
            assert report.dtype == "float64" and len(report.parts) == 1

        def test_pooled(assert_invariant):
            assert_invariant(lambda pos, h: h.sum(-2), (pos, h), transforms=Permutations(4, n=5),
                             inputs=(Positions(), Scalars()))

        def test_coordinates_as_features(assert_invariant):
            assert_invariant(lambda pos, h: pos.sum(-2), (pos, h), transforms=SO3(4),
                             inputs=(Positions(), Scalars()))
        """
    )
    result = project.runpytest("--equivariance-dtype", "float64")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        ["*the scalar output moves under rotation: an input coordinate is used as a*"]
    )
