"""MkDocs hooks: MathJax served with the site, pictures drawn at build time, the notebook in its fast setting.

Nothing is loaded from the network, at build time or in the reader's browser:

- MathJax 2.7 comes from the ``jupyter-server-mathjax`` package (the ``docs``
  extra) and is copied into ``assets/mathjax/``;
- the pictures the pages show (``images/*.png``, ``images/moving_digit.gif``)
  are drawn by the library itself on scikit-learn's offline digits;
- the notebook (``translation_equivariance.ipynb``, a link to the one in
  ``examples/``) is executed by mkdocs-jupyter with ``EQUIVARIANCE_FAST=1``
  unless the environment sets it otherwise; the scripts nbconvert adds to
  its page (MathJax and mermaid from a CDN) are taken out, since the site's
  MathJax serves every page and the notebook has no diagrams.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

MATHJAX_PARTS = (
    "MathJax.js",
    "config",
    "extensions",
    "jax/input",
    "jax/element",
    "jax/output/HTML-CSS",
    "fonts/HTML-CSS/STIX-Web/woff",
)


REPOSITORY = "https://github.com/equivariance/equivariance"


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    from equivariance import __version__

    # every page's footer: the version documented, its licence and where the code is
    link = f'<a href="{REPOSITORY}">{REPOSITORY.removeprefix("https://")}</a>'
    config.copyright = f"equivariance {__version__} · MIT License · {link}"
    os.environ.setdefault("EQUIVARIANCE_FAST", "1")
    os.environ.setdefault("EQUIVARIANCE_OUT", tempfile.mkdtemp(prefix="equivariance-notebook-"))
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for src_uri, path in _mathjax_files():
        files.append(File.generated(config, src_uri, abs_src_path=str(path)))
    for name, content in _pictures().items():
        files.append(File.generated(config, f"images/{name}", content=content))
    for name, content in _gallery().pictures.items():
        files.append(File.generated(config, f"images/{name}", content=content))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    if page.file.src_uri == "architectures.md":
        if GALLERY_MARKER not in markdown:
            raise RuntimeError(f"architectures.md: expected the marker {GALLERY_MARKER}")
        markdown = markdown.replace(GALLERY_MARKER, _gallery().markdown)
    if page.file.src_uri == "fixing.md":
        if FIXING_MARKER not in markdown:
            raise RuntimeError(f"fixing.md: expected the marker {FIXING_MARKER}")
        markdown = markdown.replace(
            FIXING_MARKER, fixing_tables(Path(config.docs_dir) / "fixing" / "results.json")
        )
    return markdown


FIXING_MARKER = "<!-- fixing: results table -->"
_METRICS = (
    ("consistency_4px", "consistency, shifts up to 4 px"),
    ("consistency_circular", "consistency, any circular shift"),
    ("prediction_change", "P(change), 1-pixel shift"),
)


def fixing_tables(path: Path) -> str:
    """The tables of ``examples/fix_digits.py``'s committed results: the mean of the seeds per variant,
    then every run with its 95% intervals."""
    import json

    results = json.loads(path.read_text())
    runs, settings = results["runs"], results["settings"]
    lines = [
        f"Mean over {settings['seeds']} seeds (the lowest and highest seed in brackets); {settings['data']}, "
        f"{settings['epochs']} epochs, torch {settings['torch']} on {settings['threads']} CPU thread(s), "
        f"{settings['seconds']} s in all (`python examples/fix_digits.py`, results in "
        "`docs/fixing/results.json`):",
        "",
        "| variant | accuracy | " + " | ".join(label for _, label in _METRICS) + " |",
        "|---|---:|" + "---:|" * len(_METRICS),
    ]
    for variant in results["variants"]:
        mine = [run for run in runs if run["variant"] == variant]
        cells = [_spread([run["accuracy"] for run in mine])]
        cells += [_spread([run[key]["value"] for run in mine]) for key, _ in _METRICS]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines += ["", "Every run, with the 95% interval of each measurement, clustered by digit:", ""]
    lines += [
        "| variant | seed | accuracy | " + " | ".join(label for _, label in _METRICS) + " |",
        "|---|---:|---:|" + "---:|" * len(_METRICS),
    ]
    for run in runs:
        cells = [f"{run['accuracy']:.3f}"]
        cells += [f"{run[k]['value']:.3f} [{run[k]['low']:.3f}, {run[k]['high']:.3f}]" for k, _ in _METRICS]
        lines.append(f"| {run['variant']} | {run['seed']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _spread(values: list[float]) -> str:
    return f"{sum(values) / len(values):.3f} [{min(values):.3f}, {max(values):.3f}]"


NOTEBOOK_SCRIPTS = (
    re.compile(r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.DOTALL),
    re.compile(r"<script type=\"module\">(?:(?!</script>).)*?mermaid.*?</script>", re.DOTALL),
)


def on_post_page(output: str, page: Page, config: MkDocsConfig) -> str:
    if page.file.src_uri.endswith(".ipynb"):
        for pattern in NOTEBOOK_SCRIPTS:
            output, found = pattern.subn("", output)
            if found != 1:
                raise RuntimeError(f"{page.file.src_uri}: expected one nbconvert script {pattern.pattern!r}")
        output = notebook_maths(output)
    return output


INLINE_MATHS = re.compile(r"(<code>.*?</code>)|\$([^$<\n]+?)\$", re.DOTALL)


def notebook_maths(html: str) -> str:
    """The ``$...$`` of the notebook's Markdown cells marked as arithmatex marks the pages' maths.

    The site's MathJax typesets only what carries the ``arithmatex`` class, so that a stray ``\\(`` in
    code is never typeset; the notebook's inline maths gets the same span as the pages' ``$...$``.
    """
    cells = html.split('<div class="jp-Cell ')
    for index, cell in enumerate(cells):
        if index and cell.startswith("jp-MarkdownCell"):
            cells[index] = INLINE_MATHS.sub(
                lambda m: m.group(1) or f'<span class="arithmatex">\\({m.group(2)}\\)</span>', cell
            )
    return '<div class="jp-Cell '.join(cells)


def _mathjax_files() -> list[tuple[str, Path]]:
    import jupyter_server_mathjax

    static = Path(jupyter_server_mathjax.__file__).parent / "static"
    found = []
    for part in MATHJAX_PARTS:
        root = static / part
        for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
            found.append((f"assets/mathjax/{path.relative_to(static).as_posix()}", path))
    return found


def _pictures() -> dict[str, bytes]:
    """The pictures of the pages, drawn by the library (about 20 s on two cores)."""
    import torch

    from equivariance import check_equivariance, profile_equivariance
    from equivariance.datasets import digits, embed_in_canvas, position_sweep
    from equivariance.models import MLP, LeNet
    from equivariance.training import train
    from equivariance.viz import feature_animation, heatmaps_figure, profile_chart

    pictures: dict[str, bytes] = {}
    train_data, val_data = digits().split(0.8, seed=0)
    torch.manual_seed(0)
    lenet, mlp = LeNet(), MLP(input_size=38)
    train(lenet, train_data[:600], val_data, epochs=2, batch_size=32, progress=False)
    # the dense network trained as the notebook trains it: LeNet's head on top, digits on the canvas
    dense = torch.nn.Sequential(
        mlp, torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(5 * 11 * 11, 10)
    )
    on_canvas = (embed_in_canvas(train_data.images[:600], size=38), train_data.labels[:600])
    train(dense, on_canvas, epochs=2, batch_size=32, progress=False)
    canvas = embed_in_canvas(val_data.images[:8], size=38)
    reports = [
        check_equivariance(lenet, canvas, max_shift=5, layer="conv4"),
        check_equivariance(mlp, canvas, max_shift=5),
    ]
    pictures["lenet_and_mlp.png"] = _png(heatmaps_figure(reports))

    frames = position_sweep(val_data.images[0], size=38, path="horizontal")[::2]
    reference = embed_in_canvas(val_data.images[:20], size=38)
    with tempfile.TemporaryDirectory() as folder:
        gif = feature_animation(
            {"LeNet conv4": lenet.features, "MLP (dense)": mlp}, frames, reference, Path(folder) / "a.gif"
        )
        pictures["moving_digit.gif"] = gif.read_bytes()

    # docs/diagnosing.md: a stride-2 convolution upsampled back, and a small CNN with a dense head
    torch.manual_seed(0)
    nn = torch.nn
    upsampled = nn.Sequential(nn.Conv2d(1, 4, 2, stride=2), nn.ReLU(), nn.Upsample(scale_factor=2))
    report = check_equivariance(upsampled, torch.randn(2, 1, 24, 24), max_shift=2)
    pictures["stride_heatmap.png"] = _png(heatmaps_figure([report]))
    torch.manual_seed(0)
    cnn = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2), nn.ReLU(), nn.Conv2d(4, 2, 3),
        nn.Flatten(), nn.Linear(288, 10),
    )  # fmt: skip
    x = torch.zeros(2, 1, 32, 32)
    x[..., 8:24, 8:24] = torch.rand(2, 1, 16, 16)
    pictures["profile.png"] = _png(profile_chart(profile_equivariance(cnn, x, (1, 0))).figure)
    pictures["fixing_profiles.png"] = _fixing_profiles()
    return pictures


def _fixing_profiles() -> bytes:
    """docs/fixing.md: the untrained CNN's profile and its anti-aliased copy's, side by side."""
    import matplotlib.pyplot as plt
    import torch

    from equivariance import profile_equivariance
    from equivariance.datasets import digits
    from equivariance.viz import profile_chart

    nn = torch.nn
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 20, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(20, 40, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(40, 40, 5, padding=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(40, 10),
    ).eval()  # fmt: skip
    x = digits().images[:8]
    before = profile_equivariance(model, x, (1, 0))
    after = profile_equivariance(before.fixed_copy(model), x, (1, 0))
    figure, axes = plt.subplots(1, 2, figsize=(14, 4.2), sharey=True)
    for ax, profile, title in zip(axes, (before, after), ("as is", "antialias(model, layers=['2', '5'])")):
        profile_chart(profile, ax=ax)
        ax.set_title(f"{title}: shift (1, 0)")
        labels = [label.get_text().replace("\n", " ") for label in ax.get_xticklabels()]
        ax.set_xticks(ax.get_xticks(), labels, rotation=40, ha="right")
    figure.tight_layout()
    return _png(figure)


GALLERY_MARKER = "<!-- gallery: profiles drawn at build time -->"


class _Gallery:
    """The architectures page's sections and pictures, computed once per build."""

    def __init__(self) -> None:
        self.markdown = ""
        self.pictures: dict[str, bytes] = {}


_GALLERY: list[_Gallery] = []


def _gallery() -> _Gallery:
    """Each model of ``examples/gallery.py`` profiled and checked: a section and a picture each."""
    if _GALLERY:
        return _GALLERY[0]
    import sys

    from equivariance.viz import profile_chart

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))  # not a package
    import gallery

    result = _Gallery()
    sections = []
    for name, build in gallery.GALLERY.items():
        case = gallery.CASES[name]
        model = build()
        profile, report = case.run(model)
        slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
        result.pictures[f"gallery_{slug}.png"] = _png(profile_chart(profile).figure)
        sections.append(_section(name, build, case, profile, report, slug))
    result.markdown = "\n".join(sections)
    _GALLERY.append(result)
    return result


def _wrapped(lines: list[str]) -> list[str]:
    """Long lines of a text block folded at 100 characters, continuations indented."""
    import textwrap

    folded = []
    for line in lines:
        folded.extend(textwrap.wrap(line, 100, subsequent_indent="    ", break_on_hyphens=False) or [""])
    return folded


def _boundary(case: Any) -> str:
    return "" if case.boundary == "zeros" else f", boundary={case.boundary!r}"


def _section(name: str, build: Any, case: Any, profile: Any, report: Any, slug: str) -> str:
    first = profile.first_failure
    lines = [
        f"## {name}",
        "",
        f"`{build.__name__}()`: {(build.__doc__ or '').strip().splitlines()[0]}",
        "",
        case.about,
        "",
        "```python",
        f"profile_equivariance(model, {case.inputs}, {case.shift}{_boundary(case)})",
        "```",
        "",
        f"![the profile of the {name}](images/gallery_{slug}.png)",
        "",
        "```text",
    ]
    said = [profile.summary()]
    if first is not None:
        said.append(f"likely cause at {first.name}: {first.cause}; fix: {first.fix}")
    lines += [*_wrapped(said), "```", "", "```python", case.check, "```", "", "```text"]
    checked = [report.summary(), *(f"inferred: {n}" for n in report.inferred)]
    checked += [f"hint: {hint}" for hint in report.hints]
    lines += [*_wrapped(checked), "```", ""]
    return "\n".join(lines)


def _png(figure: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()
