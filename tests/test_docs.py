"""The documentation: every code block of every page runs, and the site check finds what it must.

``docs/*.md`` pages are run as a reader would: their ``python`` blocks in order,
in one namespace per page, and the ``$ equivariance ...`` transcripts of their
``bash`` blocks through the command line, output compared. The site check
(``docs/check_site.py``) runs in CI on the built site; here it is shown to
find each problem it looks for on a small made-up site (a negative control
for each), and to pass a clean one.
"""

from __future__ import annotations

import doctest
import importlib.util
import inspect
import re
import shlex
import sys
from pathlib import Path
from types import ModuleType

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
    page: Path,
    line: int,
    command: str,
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # a transcript may write a file (-o report.json)
    argv = shlex.split(command)
    assert argv[0] == "equivariance"
    code = main(argv[1:])
    out = capsys.readouterr().out
    checker = doctest.OutputChecker()
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    assert checker.check_output(expected, out, flags), f"{page.name}:{line}\n{expected}\n---\n{out}"
    assert code == 0


def _check_site_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_site", ROOT / "docs" / "check_site.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_site"] = module
    spec.loader.exec_module(module)
    return module


CLEAN = """<html><head><link rel="stylesheet" href="../assets/style.css"></head><body>
<h2 id="use">Use</h2>
<p>See <a href="../other/#part">the other page</a> and <a href="#use">above</a>;
<code>:class:`x`</code> in code is fine, and so is <a href="https://example.org">a link out</a>.</p>
<pre><code>&gt;&gt;&gt; import torch
</code></pre>
<p>Math: <span class="arithmatex">\\(\\phi\\)</span></p>
<img src="../images/a.png" alt="a picture">
<script src="../assets/mathjax/MathJax.js"></script>
</body></html>
"""

BROKEN = {
    "literal Sphinx role": CLEAN.replace("See <a", "See :class:`~equivariance.Shift` and <a"),
    "flattened example": CLEAN.replace(
        "<p>Math",
        "<blockquote><blockquote><blockquote><p>import torch x = 1"
        "</p></blockquote></blockquote></blockquote><p>Math",
    ),
    'flattened example ">>>"': CLEAN.replace("<p>Math", "<p>&gt;&gt;&gt; x = 1</p><p>Math"),
    "raw TeX delimiter": CLEAN.replace("<p>Math", "<p>\\(x\\) raw</p><p>Math"),
    "has math but does not load": CLEAN.replace('<script src="../assets/mathjax/MathJax.js"></script>', ""),
    "broken link: ../missing/": CLEAN.replace("../other/#part", "../missing/"),
    "broken link: ../other/#nowhere": CLEAN.replace("../other/#part", "../other/#nowhere"),
    "broken load: ../images/b.png": CLEAN.replace("a.png", "b.png"),
    "loads from the network: https://cdn.example/x.js": CLEAN.replace(
        "</body>", '<script src="https://cdn.example/x.js"></script></body>'
    ),
    "loads from the network: https://cdn.example/m.mjs": CLEAN.replace(
        "</body>", '<script>import("https://cdn.example/m.mjs")</script></body>'
    ),
}


def _site(tmp_path: Path, page: str) -> Path:
    for name, text in {
        "page/index.html": page,
        "other/index.html": '<html><body><p id="part">x</p></body></html>',
        "images/a.png": "",
        "assets/style.css": "",
        "assets/mathjax/MathJax.js": "",
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_the_site_check_passes_a_clean_site(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    check_site = _check_site_module()
    assert check_site.check_site(_site(tmp_path, CLEAN)) == []
    assert check_site.main([str(tmp_path)]) == 0
    assert capsys.readouterr().out == "2 pages checked: 0 problems, 0 known\n"


@pytest.mark.parametrize("problem", list(BROKEN), ids=lambda problem: problem.split(":")[0])
def test_the_site_check_finds_each_problem(
    problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    check_site = _check_site_module()
    found = check_site.check_site(_site(tmp_path, BROKEN[problem]))
    assert len(found) == 1
    assert found[0][0] == "page/index.html"
    assert found[0][1].startswith(problem)
    assert check_site.main([str(tmp_path)]) == 1
    assert "1 problems, 0 known" in capsys.readouterr().out


def test_the_site_check_lets_known_problems_pass_and_only_those(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    check_site = _check_site_module()
    _site(tmp_path, BROKEN["literal Sphinx role"])
    monkeypatch.setattr(check_site, "KNOWN", {"page/index.html": {"literal Sphinx role"}})
    assert check_site.main([str(tmp_path)]) == 0
    assert 'page/index.html: literal Sphinx role ":class:"  (known)' in capsys.readouterr().out
    monkeypatch.setattr(check_site, "KNOWN", {"page/index.html": {"flattened example"}})
    assert check_site.main([str(tmp_path)]) == 1
    assert check_site.main([]) == 2
