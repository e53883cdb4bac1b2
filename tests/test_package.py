"""Packaging promises: a light import, type information, a consistent public surface."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import equivariance


def test_import_does_not_pull_test_or_plotting_libraries() -> None:
    code = (
        "import sys, equivariance, equivariance.models, equivariance.linear, equivariance.datasets\n"
        "import equivariance.training, equivariance.euclidean, equivariance.permutations, equivariance.fields\n"
        "heavy = ('hypothesis', 'pytest', 'matplotlib', 'sklearn', 'e3nn', 'torch_geometric')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_py_typed_ships_with_the_package() -> None:
    assert (Path(equivariance.__file__).parent / "py.typed").is_file()


def test_public_names_exist_and_are_documented() -> None:
    for name in equivariance.__all__:
        obj = getattr(equivariance, name)
        if name != "__version__":
            assert obj.__doc__, f"{name} has no docstring"
    assert re.fullmatch(r"\d+\.\d+\.\d+(\.dev\d+)?", equivariance.__version__)


def test_the_changelog_has_a_section_for_this_version() -> None:
    """Keep a Changelog: a development version's changes are under Unreleased, a release has its own."""
    changelog = (Path(__file__).parents[1] / "CHANGELOG.md").read_text()
    version = equivariance.__version__
    heading = "## [Unreleased]" if ".dev" in version else f"## [{version}] - "
    assert heading in changelog
    released = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$", changelog, re.MULTILINE)
    assert released, "no release section dated YYYY-MM-DD"
    assert all(f"[{v}]: https://" in changelog for v in released)  # each version links to its source


def test_the_pytest_plugin_is_registered_and_imports_no_torch() -> None:
    from importlib.metadata import entry_points

    plugins = {e.name: e.value for e in entry_points(group="pytest11") if e.name.startswith("equivariance")}
    assert plugins == {
        "equivariance": "_equivariance_pytestplugin",
        "equivariance-regressions": "_equivariance_regressions",
    }
    code = (
        "import sys, _equivariance_pytestplugin, _equivariance_regressions\n"
        "print('torch' in sys.modules, 'equivariance' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_the_readme_test_command_installs_pytest_xdist() -> None:
    """The README's test command installs the test extra, which has xdist: the plugin's xdist test runs."""
    root = Path(__file__).parents[1]
    readme = (root / "README.md").read_text()
    command = readme.split("# run the tests\n")[1].splitlines()[0]
    assert '-e ".[test]"' in command
    assert command.endswith("python -m pytest")
    test_extra = re.search(r"^test = \[(.*)\]$", (root / "pyproject.toml").read_text(), re.MULTILINE)
    assert test_extra is not None
    assert '"pytest-xdist>=3.5"' in test_extra.group(1)
