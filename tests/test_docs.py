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
# a block's first line may name an optional package it needs: "# needs e3nn: pip install equivariance[e3nn]"
NEEDS = re.compile(r"\A# needs (\w+)")


def missing(code: str) -> str | None:
    """The optional package a block needs (its first line says ``# needs e3nn``), where it is not installed."""
    found = NEEDS.match(code)
    return found.group(1) if found and importlib.util.find_spec(found.group(1)) is None else None


def test_a_block_may_need_an_optional_package() -> None:
    assert missing("# needs a_package_nobody_has: pip install it\nimport it\n") == "a_package_nobody_has"
    assert missing("# needs torch\nimport torch\n") is None
    assert missing("import torch  # needs nothing\n") is None


def test_the_pages_have_code_to_run() -> None:
    assert len(blocks(ROOT / "docs" / "quickstart.md", "python")) >= 5
    assert {page.name for page in PYTHON_PAGES} >= {"index.md", "quickstart.md", "theorem.md"}


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=lambda page: page.name)
def test_every_python_block_of_a_page_runs_in_order(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    ran = skipped = 0
    for line, code in blocks(page, "python"):
        if missing(code):  # a block that needs an optional package (and blocks after it do not use it)
            skipped += 1
            continue
        exec(compile(code, f"{page.relative_to(ROOT)}:{line}", "exec"), namespace)
        ran += 1
    assert ran + skipped == len(blocks(page, "python"))
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


CLEAN = """<html><head><link rel="stylesheet" href="../assets/style.css">
<link rel="stylesheet" href="../stylesheets/extra.css"></head><body>
<h2 id="use">Use</h2>
<p>See <a href="../other/#part">the other page</a> and <a href="#use">above</a>;
<code>:class:`x`</code> in code is fine, and so is <a href="https://example.org">a link out</a>.</p>
<pre><code>&gt;&gt;&gt; import torch
</code></pre>
<p>Math: <span class="arithmatex">\\(\\phi\\)</span></p>
<img src="../images/a.png" alt="a picture">
<div class="language-text highlight"><pre><code>equivariance check FAILED: MLP, 9 shifts, 8 failed; max error 1.62e+00 at shift (0, -1) (rtol 1e-04, float32), and
so on for two hundred columns, which wrap</code></pre></div>
<div class="language-python highlight"><pre><code>report = check_equivariance(model, x, max_shift=5)  # a line of code that fits the widest page, scrolling on small ones</code></pre></div>
<p>The error <code>x ** 2</code> is code; <span class="arithmatex">\\(x^2\\)</span> is maths.</p>
<div class="doc-signature highlight"><pre><code>DEFAULT_MAX_SHIFT = 2</code></pre></div>
<script src="../assets/mathjax/MathJax.js"></script>
<footer><div class="md-copyright"><div class="md-copyright__highlight">equivariance 1.2.3 · MIT License ·
<a href="https://github.com/equivariance/equivariance">github.com/equivariance/equivariance</a></div></div></footer>
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
    "a reStructuredText table": CLEAN.replace(
        "<p>Math", "<p>======  ====== dtype rtol ======  ====== float32 1e-4 ======  ======</p><p>Math"
    ),
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
    "maths written as code, not typeset: `||f(x)||`": CLEAN.replace(
        "<code>x ** 2</code>", "<code>||f(x)||</code>"
    ),
    "maths in plain text, not typeset: 'x^2'": CLEAN.replace(
        '<span class="arithmatex">\\(x^2\\)</span>', "x^2"
    ),
    "a private name where a value should be: DEFAULT_MAX_SHIFT = _plan.DEFAULT_MAX_SHIFT": CLEAN.replace(
        "DEFAULT_MAX_SHIFT = 2", "DEFAULT_MAX_SHIFT = _plan.DEFAULT_MAX_SHIFT"
    ),
    "a block of 168 columns that does not wrap, wider than the widest page (120)": CLEAN.replace(
        "fits the widest page", "fits the widest page (but is not the widest of lines, as this one is)"
    ),
    "a block of 119 columns on a page that does not load stylesheets/extra.css": CLEAN.replace(
        '<link rel="stylesheet" href="../stylesheets/extra.css">', ""
    )
    .replace("which wrap</code>", "which wrap</code>")
    .replace(
        "equivariance check FAILED: MLP, 9 shifts, 8 failed; max error 1.62e+00 at shift (0, -1) (rtol 1e-04, float32), and\n",
        "",
    ),
    "the footer does not show the version (equivariance 1.2.3) and the repository": CLEAN.replace(
        "equivariance 1.2.3", "equivariance 1.2.2"
    ),
}


FOOTER = (
    '<div class="md-copyright">equivariance 1.2.3 · <a href="https://github.com/equivariance/equivariance">'
    "github.com/equivariance/equivariance</a></div>"
)


def _site(tmp_path: Path, page: str, changelog: str = "## [Unreleased]\n## [1.2.3] - 2026-12-01") -> Path:
    for name, text in {
        "page/index.html": page,
        "other/index.html": f'<html><body><p id="part">x</p>{FOOTER}</body></html>',
        "changelog/index.html": f"<html><body><h2>{changelog}</h2>{FOOTER}</body></html>",
        "images/a.png": "",
        "assets/style.css": "",
        "assets/mathjax/MathJax.js": "",
        "stylesheets/extra.css": (ROOT / "docs" / "stylesheets" / "extra.css").read_text(),
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_the_site_check_passes_a_clean_site(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    check_site = _check_site_module()
    monkeypatch.setattr(check_site, "_version", lambda: "1.2.3")
    assert check_site.check_site(_site(tmp_path, CLEAN)) == []
    assert check_site.main([str(tmp_path)]) == 0
    assert capsys.readouterr().out == "3 pages checked: 0 problems, 0 known\n"


@pytest.mark.parametrize("problem", list(BROKEN), ids=lambda problem: problem.split(":")[0])
def test_the_site_check_finds_each_problem(
    problem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    check_site = _check_site_module()
    monkeypatch.setattr(check_site, "_version", lambda: "1.2.3")
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
    monkeypatch.setattr(check_site, "_version", lambda: "1.2.3")
    _site(tmp_path, BROKEN["literal Sphinx role"])
    monkeypatch.setattr(check_site, "KNOWN", {"page/index.html": {"literal Sphinx role"}})
    assert check_site.main([str(tmp_path)]) == 0
    assert 'page/index.html: literal Sphinx role ":class:"  (known)' in capsys.readouterr().out
    monkeypatch.setattr(check_site, "KNOWN", {"page/index.html": {"flattened example"}})
    assert check_site.main([str(tmp_path)]) == 1
    assert check_site.main([]) == 2


@pytest.mark.parametrize(
    ("version", "changelog", "problem"),
    [
        (
            "1.2.4",
            "## [Unreleased]\n## [1.2.3] - 2026-12-01",
            "the changelog has no section 1.2.4 for version 1.2.4",
        ),
        (
            "1.3.0.dev0",
            "## [1.2.3] - 2026-12-01",
            "the changelog has no section Unreleased for version 1.3.0.dev0",
        ),
    ],
    ids=["release", "development"],
)
def test_the_site_check_wants_the_version_in_the_changelog(
    version: str, changelog: str, problem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    check_site = _check_site_module()
    page = CLEAN.replace("1.2.3", version)
    found = check_site.check_site(_site(tmp_path, page, changelog), version=version)
    assert ("changelog/index.html", problem) in found


def test_the_site_check_reads_which_blocks_wrap_from_the_stylesheet(tmp_path: Path) -> None:
    check_site = _check_site_module()
    wrapping = check_site._wrapping_classes(ROOT / "docs" / "stylesheets" / "extra.css")
    assert {"language-text", "language-bash", "jp-OutputArea-output"} <= wrapping
    assert "language-python" not in wrapping  # code scrolls


def test_the_notebooks_inline_maths_is_marked_for_the_sites_mathjax() -> None:
    pytest.importorskip("mkdocs")
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec is not None
    assert spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    page = (
        '<div class="jp-Cell jp-MarkdownCell"><p>a $x^2$ and <code>echo $HOME $PATH</code></p></div>'
        '<div class="jp-Cell jp-CodeCell"><pre>price = "$3 and $4"</pre></div>'
    )
    assert hooks.notebook_maths(page) == (
        '<div class="jp-Cell jp-MarkdownCell"><p>a <span class="arithmatex">\\(x^2\\)</span> and '
        '<code>echo $HOME $PATH</code></p></div><div class="jp-Cell jp-CodeCell"><pre>price = "$3 and $4"</pre></div>'
    )
