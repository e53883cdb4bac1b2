"""The documentation: every code block of every page runs, and the site check finds what it must.

``docs/*.md`` pages are run as a reader would: their ``python`` blocks in order,
in one namespace per page, and the ``$ equivariance ...`` transcripts of their
``bash`` blocks through the command line, output compared.
"""

from __future__ import annotations

import doctest
import inspect
import re
import shlex
from pathlib import Path

import pytest
from hypothesis import settings

import equivariance
from equivariance.cli import main

ROOT = Path(__file__).parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(page: Path, language: str) -> list[tuple[int, str]]:
    """The fenced blocks of ``language`` on a page, with the line each starts on."""
    text = page.read_text()
    return [
        (text.count("\n", 0, match.start()) + 2, match.group(2))
        for match in FENCE.finditer(text)
        if match.group(1) == language
    ]


PYTHON_PAGES = [page for page in PAGES if blocks(page, "python")]


def test_the_pages_have_code_to_run() -> None:
    assert len(blocks(ROOT / "docs" / "quickstart.md", "python")) >= 5
    assert {page.name for page in PYTHON_PAGES} >= {"index.md", "quickstart.md", "theorem.md"}


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=lambda page: page.name)
def test_every_python_block_of_a_page_runs_in_order(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    ran = 0
    for line, code in blocks(page, "python"):
        exec(compile(code, f"{page.relative_to(ROOT)}:{line}", "exec"), namespace)
        ran += 1
    assert ran == len(blocks(page, "python"))
    # the tests a page defines run too, with the library's functions for the plugin's fixtures
    fixtures = {
        "assert_equivariant": equivariance.assert_equivariant,
        "assert_invariant": equivariance.assert_invariant,
    }
    for name, test in list(namespace.items()):
        if name.startswith("test_") and callable(test):
            if hasattr(test, "hypothesis"):
                test = settings(max_examples=10)(test)  # a property of the page, briefly
            parameters = inspect.signature(test).parameters
            test(**{parameter: fixtures[parameter] for parameter in parameters})
    capsys.readouterr()


TRANSCRIPTS = [
    (page, line, command, expected)
    for page in PAGES
    for line, code in blocks(page, "bash")
    for command, expected in re.findall(r"^\$ (.*)\n((?:(?!\$ ).*\n)*)", code, re.MULTILINE)
]


def test_the_pages_have_transcripts() -> None:
    assert [page.name for page, *_ in TRANSCRIPTS].count("cli.md") >= 2


@pytest.mark.parametrize(
    ("page", "line", "command", "expected"),
    TRANSCRIPTS,
    ids=[f"{page.name}:{line}" for page, line, *_ in TRANSCRIPTS],
)
def test_every_command_line_transcript_prints_what_the_page_shows(
    page: Path, line: int, command: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = shlex.split(command)
    assert argv[0] == "equivariance"
    code = main(argv[1:])
    out = capsys.readouterr().out
    checker = doctest.OutputChecker()
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    assert checker.check_output(expected, out, flags), f"{page.name}:{line}\n{expected}\n---\n{out}"
    assert code == 0
