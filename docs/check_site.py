"""Check a built site for what a reader must never see: ``python docs/check_site.py SITE_DIR``.

Every HTML page is read with the standard library's parser and checked for

- a literal Sphinx role in the text (``:class:`` / ``:func:`` ... written for
  Sphinx, shown as text by mkdocstrings: use ``[`Name`][equivariance.Name]``);
- a flattened example: ``>>>`` in the text outside a code block, or the three
  nested quotes Markdown makes of it (a docstring example that is not in an
  ``Examples:`` section shows as one paragraph of code);
- raw TeX delimiters outside code and outside the math MathJax typesets
  (``\\(``, ``\\[``, ``$$``), and a page with math that does not load the
  site's own MathJax;
- a broken internal link: a link, image, script or stylesheet whose file is not
  in the site, or a ``#fragment`` that names no element of its page;
- anything loaded from the network (a script, stylesheet, image or frame with an
  ``http(s)://`` address, or an address inside an inline script);
- a reStructuredText table in the text (a run of ``=====  =====`` rules, which
  Markdown shows as one paragraph of its cells): write a Markdown table;
- maths written as code: a code span with a norm (``||x||``), a power (``^2``,
  ``²``), which the site's MathJax would typeset if written ``$...$``;
- a private name where the API reference should show a value
  (``DEFAULT_MAX_SHIFT = _plan.DEFAULT_MAX_SHIFT``);
- a block wider than a page shows that neither wraps nor fits: blocks whose
  class the site's stylesheet (``stylesheets/extra.css``) makes wrap may be
  as wide as they like; any other block may be ``SCROLL_COLUMNS`` wide, what
  the widest page shows, and scrolls beyond ``FITS_COLUMNS``, what a page
  shows on a 1280-pixel screen; a page with a block wider than that must load
  the stylesheet;
- a page whose footer does not show the version documented
  (``equivariance/__init__.py``) and the repository, and a changelog page
  without a section for that version.

It prints one line per problem and exits with 1 if any is left, 0 otherwise.
Pages listed in ``KNOWN`` may still show the problems named there: they are
printed as known and do not fail the check (see the comment on ``KNOWN``).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

# Pages allowed to show a problem, each with the problem kinds still allowed there (none today: every
# module's docstrings are in the team's convention). A page is listed only with a reason, and goes as
# soon as the reason does.
KNOWN: dict[str, set[str]] = {}

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = "https://github.com/equivariance/equivariance"
STYLESHEET = "stylesheets/extra.css"
FITS_COLUMNS = 110  # what a page shows of a code block on a 1280-pixel-wide screen
SCROLL_COLUMNS = 120  # what the widest page shows; a wider block that does not wrap is cut for everyone
MATHS_AS_CODE = re.compile(r"\|\|.+\|\||[\w)\]]\^[\w({]|[²³]")
MATHS_IN_TEXT = re.compile(r"\S*[\w)\]]\^[\w({]\S*|\S*[²³]\S*")
PRIVATE_VALUE = re.compile(r"(?<![\w.])_[a-z]\w*\.\w")
WRAP_RULE = re.compile(r"([^{}]+)\{[^}]*white-space:\s*pre-wrap[^}]*\}")

SPHINX_ROLE = re.compile(r":(?:py:)?(class|func|meth|mod|attr|data|exc|obj|const|ref):(?=\s*[`~\w])")
RAW_TEX = re.compile(r"\\\(|\\\[|\$\$")
RST_TABLE = re.compile(r"={4,}\s+={4,}")
NETWORK = re.compile(r"^(?:https?:)?//", re.IGNORECASE)
LOADING = {"script": "src", "img": "src", "iframe": "src", "source": "src", "audio": "src", "video": "src"}
CODE = {"pre", "code", "script", "style", "textarea"}
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def problems_in_text(text: str) -> list[str]:
    """The problems in a piece of visible text (outside code and typeset math)."""
    found = [f'literal Sphinx role ":{match.group(1)}:"' for match in SPHINX_ROLE.finditer(text)]
    if ">>>" in text:
        found.append('flattened example ">>>" outside a code block')
    found.extend(f'raw TeX delimiter "{match.group(0)}"' for match in RAW_TEX.finditer(text))
    if RST_TABLE.search(text):
        found.append("a reStructuredText table shown as text (write a Markdown table)")
    return found


class _Page(HTMLParser):
    """Collects a page's visible text, references, element ids and whether it has and loads math."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool, bool]] = []  # (tag, code, math)
        self.text: list[str] = []
        self.references: list[tuple[str, str]] = []  # (what, address)
        self.ids: set[str] = set()
        self.has_math = False
        self.inline_scripts: list[str] = []
        self.nested_quotes = 0
        self.classes: list[set[str]] = []  # the classes of each open element, as the stack
        self.blocks: list[tuple[frozenset[str], str]] = []  # each <pre>: the classes around it, its text
        self.code_spans: list[str] = []
        self.signatures: list[str] = []  # the API reference's signatures (values of attributes)
        self.footer: list[str] = []
        self._capture: list[list[str]] = []  # texts being collected, one per open element collecting

    def _in(self) -> tuple[bool, bool]:
        return (self.stack[-1][1], self.stack[-1][2]) if self.stack else (False, False)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        for key in ("id", "name"):
            if values.get(key):
                self.ids.add(values[key])
        if tag == "a" and "href" in values:
            self.references.append(("link", values["href"]))
        if tag == "link" and "href" in values and values.get("rel") not in ("canonical", "alternate"):
            self.references.append(("load", values["href"]))
        if tag in LOADING and values.get(LOADING[tag]):
            self.references.append(("load", values[LOADING[tag]]))
        math = "arithmatex" in values.get("class", "").split()
        self.has_math = self.has_math or math
        if tag in VOID:
            return
        classes = set(values.get("class", "").split())
        code, in_math = self._in()
        if tag == "pre":
            around = frozenset(c for above in self.classes for c in above)
            self.blocks.append((around, ""))
            if "doc-signature" in around:
                self.signatures.append("")
        elif tag == "code" and not code:
            self.code_spans.append("")
        self.stack.append((tag, code or tag in CODE, in_math or math))
        self.classes.append(classes)
        if tag == "blockquote" and sum(t == "blockquote" for t, _, _ in self.stack) == 3:
            self.nested_quotes += 1

    def handle_endtag(self, tag: str) -> None:
        for index in range(len(self.stack) - 1, -1, -1):
            if self.stack[index][0] == tag:
                del self.stack[index:]
                del self.classes[index:]
                return

    def handle_data(self, data: str) -> None:
        tags = [tag for tag, _, _ in self.stack]
        classes = {c for above in self.classes for c in above}
        if "pre" in tags:
            around, text = self.blocks[-1]
            self.blocks[-1] = (around, text + data)
        elif tags and tags[-1] == "code" and self.code_spans:
            self.code_spans[-1] += data
        if "doc-signature" in classes and self.signatures:
            self.signatures[-1] += data
        if "md-copyright" in classes:
            self.footer.append(data)
        code, math = self._in()
        if self.stack and self.stack[-1][0] == "script":
            self.inline_scripts.append(data)
        elif not code and not math:
            self.text.append(data)


def check_site(site: Path, version: str | None = None) -> list[tuple[str, str]]:
    """Every problem of the site as ``(page, problem)``, pages relative to ``site``.

    ``version`` is the version the site documents (default: the repository's).
    """
    version = version or _version()
    pages = {path.relative_to(site).as_posix(): _parse(path) for path in sorted(site.rglob("*.html"))}
    wrapping = _wrapping_classes(site / STYLESHEET)
    problems: list[tuple[str, str]] = _changelog_problems(pages, version)
    for name, page in pages.items():
        problems.extend((name, problem) for problem in _page_problems(name, page, version, wrapping))
        text = " ".join(" ".join(page.text).split())
        problems.extend((name, problem) for problem in dict.fromkeys(problems_in_text(text)))
        if page.nested_quotes:
            problems.append(
                (name, f"flattened example: {page.nested_quotes} '>>>' read as three nested quotes")
            )
        problems.extend((name, problem) for problem in _reference_problems(site, name, page, pages))
        for script in page.inline_scripts:
            problems.extend(
                (name, f"loads from the network: {address}")
                for address in re.findall(r"[\"'`]((?:https?:)?//[^\"'`\s]+)", script)
            )
        mathjax = any(
            what == "load" and address.split("?")[0].endswith("mathjax/MathJax.js")
            for what, address in page.references
        )
        if page.has_math and not mathjax:
            problems.append(
                (name, "has math but does not load the site's MathJax (assets/mathjax/MathJax.js)")
            )
    return problems


def _version() -> str:
    found = re.search(r'^__version__ = "(.+)"$', (ROOT / "equivariance" / "__init__.py").read_text(), re.M)
    assert found, "no __version__ in equivariance/__init__.py"
    return found.group(1)


def _wrapping_classes(stylesheet: Path) -> set[str]:
    """The classes whose blocks the stylesheet wraps (its rules with ``white-space: pre-wrap``)."""
    if not stylesheet.is_file():
        return set()
    css = re.sub(r"/\*.*?\*/", "", stylesheet.read_text(), flags=re.DOTALL)
    return {c for selectors in WRAP_RULE.findall(css) for c in re.findall(r"\.([\w-]+)", selectors)} - {
        "md-typeset"
    }


def _page_problems(name: str, page: _Page, version: str, wrapping: set[str]) -> Iterator[str]:
    for span in page.code_spans:
        if MATHS_AS_CODE.search(span):
            yield f"maths written as code, not typeset: `{span}` (write it as $...$)"
    for found in MATHS_IN_TEXT.finditer(" ".join(page.text)):
        yield f"maths in plain text, not typeset: {found.group(0)!r} (write it as $...$)"
    for signature in page.signatures:
        if PRIVATE_VALUE.search(signature):
            yield f"a private name where a value should be: {' '.join(signature.split())}"
    styled = any(what == "load" and address.endswith(STYLESHEET) for what, address in page.references)
    for around, text in page.blocks:
        columns = max((len(line) for line in text.splitlines()), default=0)
        wraps = styled and bool(around & wrapping)
        if columns > SCROLL_COLUMNS and not wraps:
            yield (
                f"a block of {columns} columns that does not wrap, wider than the widest page "
                f"({SCROLL_COLUMNS}): {_first_long_line(text, SCROLL_COLUMNS)}"
            )
        elif columns > FITS_COLUMNS and not styled:
            yield f"a block of {columns} columns on a page that does not load {STYLESHEET}"
    footer = " ".join(" ".join(page.footer).split())
    if f"equivariance {version}" not in footer or REPOSITORY.removeprefix("https://") not in footer:
        yield f"the footer does not show the version (equivariance {version}) and the repository: {footer!r}"


def _first_long_line(text: str, columns: int) -> str:
    line = next(line for line in text.splitlines() if len(line) > columns)
    return repr(line[:60] + "...")


def _changelog_problems(pages: dict[str, _Page], version: str) -> list[tuple[str, str]]:
    page = pages.get("changelog/index.html")
    heading = "Unreleased" if ".dev" in version else version
    if page is None:
        return [("changelog/index.html", "no changelog page")]
    if heading not in " ".join(page.text):
        return [("changelog/index.html", f"the changelog has no section {heading} for version {version}")]
    return []


def _reference_problems(site: Path, name: str, page: _Page, pages: dict[str, _Page]) -> Iterator[str]:
    for what, address in page.references:
        if NETWORK.match(address):
            if what == "load":
                yield f"loads from the network: {address}"
            continue
        parts = urlsplit(address)
        if parts.scheme or address.startswith("/"):
            continue  # mailto:, data:, javascript:, or an absolute path the site does not use
        target_name = name
        if parts.path:
            target = (site / name).parent / unquote(parts.path)
            if target.is_dir() or parts.path.endswith("/"):
                target = target / "index.html"
            if not target.is_file():
                yield f"broken {what}: {address} (no such file in the site)"
                continue
            target_name = (
                target.resolve().relative_to(site).as_posix() if target.resolve().is_relative_to(site) else ""
            )
        fragment = unquote(parts.fragment)
        if fragment and target_name in pages and fragment not in pages[target_name].ids:
            yield f"broken {what}: {address} (no element with id {fragment!r} in {target_name})"


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python docs/check_site.py SITE_DIR  (a site built by mkdocs build)", file=sys.stderr)
        return 2
    site = Path(argv[0]).resolve()
    problems = check_site(site)
    failing = [(page, problem) for page, problem in problems if not _known(page, problem)]
    known = len(problems) - len(failing)
    for page, problem in problems:
        print(f"{page}: {problem}{'  (known)' if _known(page, problem) else ''}")
    pages = len(list(site.rglob("*.html")))
    print(f"{pages} pages checked: {len(failing)} problems, {known} known")
    return 1 if failing else 0


def _known(page: str, problem: str) -> bool:
    return any(problem.startswith(kind) for kind in KNOWN.get(page, ()))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
