"""Pictures of equivariance: error heatmaps and the seed's moving feature maps.

Needs the ``viz`` extra (``pip install "equivariance[viz]"``: matplotlib and Pillow). Nothing here is imported
by ``import equivariance``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from equivariance.errors import InvalidArgument
from equivariance.monitor import EquivarianceMonitor, MonitorRecord
from equivariance.profile import EquivarianceProfile
from equivariance.report import EquivarianceReport
from equivariance.shifts import Shift

__all__ = [
    "cluster_colors",
    "feature_animation",
    "heatmaps_figure",
    "kmeans",
    "monitor_curve",
    "profile_chart",
    "shift_heatmap",
]

FeatureMap = Callable[[torch.Tensor], torch.Tensor]


def _pyplot() -> Any:
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        raise InvalidArgument(
            'equivariance.viz needs matplotlib; install the extra: pip install "equivariance[viz]"'
        ) from None
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")  # headless unless the caller chose a backend already
    return importlib.import_module("matplotlib.pyplot")


def shift_heatmap(report: EquivarianceReport, ax: Any = None, title: str | None = None) -> Any:
    """Draw a report's per-shift errors on the (dy, dx) grid; returns the matplotlib Axes.

    The colour is the error on a log scale; failing shifts are marked with a cross, and the tolerance is drawn
    in the colour bar.

    Args:
        report: a report of 2-D shifts.
        ax: the Axes to draw in (default: a new figure).
        title: the title (default: the report's subject and verdict).

    Examples:
        >>> import torch
        >>> from equivariance import check_equivariance
        >>> report = check_equivariance(torch.nn.Conv2d(1, 2, 3), torch.randn(2, 1, 12, 12), max_shift=2)
        >>> ax = shift_heatmap(report)
        >>> ax.get_xlabel(), ax.get_ylabel()
        ('dx (columns)', 'dy (rows)')
    """
    plt = _pyplot()
    colors = importlib.import_module("matplotlib.colors")
    shifts = [s for s in report.elements if isinstance(s, Shift)]
    if len(shifts) != len(report.elements):
        raise InvalidArgument(
            "shift_heatmap draws shifts, found transforms (Rot90, Flip); print the report instead"
        )
    if any(s.ndim != 2 for s in shifts):
        raise InvalidArgument(
            f"shift_heatmap draws 2-D shifts, found shifts of {shifts[0].ndim} dims; "
            "plot report.errors against report.elements yourself for other dims"
        )
    rows = sorted({s[0] for s in shifts})
    cols = sorted({s[1] for s in shifts})
    grid = torch.full((len(rows), len(cols)), float("nan"), dtype=torch.float64)
    for shift, result in zip(shifts, report.results):
        grid[rows.index(shift[0]), cols.index(shift[1])] = result.error
    # Exact zeros have no logarithm: they are drawn at the bottom of the scale.
    floor = min([report.rtol / 100, *(e for e in report.errors if e > 0)])
    shown = grid.clamp_min(floor)
    top = max(float(shown.nan_to_num(floor).max()), report.rtol * 10)
    if ax is None:
        _, ax = plt.subplots(figsize=(4.8, 4))
    norm = colors.LogNorm(vmin=floor, vmax=top)
    image = ax.imshow(shown.numpy(), norm=norm, cmap="viridis", origin="upper")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    ax.set_xlabel("dx (columns)")
    ax.set_ylabel("dy (rows)")
    for shift, result in zip(shifts, report.results):
        if not result.passed:
            ax.plot(cols.index(shift[1]), rows.index(shift[0]), "x", color="white", ms=5)
    bar = ax.figure.colorbar(image, ax=ax, label="relative error")
    bar.ax.axhline(report.rtol, color="red", linewidth=1.5)
    verdict = "passed" if report.passed else f"{len(report.failures)} shifts fail"
    if report.within_tolerance and report.vacuous is not None:
        verdict = "vacuous (cannot fail)"
    ax.set_title(title or f"{report.subject}: {verdict}")
    return ax


def heatmaps_figure(reports: Sequence[EquivarianceReport]) -> Any:
    """One figure with a ``shift_heatmap`` per report, side by side; returns the Figure.

    The figure is not registered with pyplot, so it needs no closing: save it with ``figure.savefig(path)``.

    Examples:
        >>> import torch
        >>> from equivariance import check_equivariance
        >>> report = check_equivariance(torch.nn.Conv2d(1, 2, 3), torch.randn(2, 1, 12, 12), max_shift=1)
        >>> len(heatmaps_figure([report, report]).axes)  # two heatmaps and their colour bars
        4
    """
    _pyplot()
    figure_module = importlib.import_module("matplotlib.figure")
    figure = figure_module.Figure(figsize=(5 * len(reports), 4), layout="tight")
    axes = figure.subplots(1, len(reports), squeeze=False)[0]
    for ax, report in zip(axes, reports):
        shift_heatmap(report, ax=ax)
    return figure


def profile_chart(profile: EquivarianceProfile, ax: Any = None) -> Any:
    """A bar per layer of a ``profile_equivariance`` result; returns the Axes.

    The bars are the layers' errors on a log scale, in the order the model runs them, red where a layer fails,
    with the tolerance as a line: the first red bar is where equivariance breaks.

    Examples:
        >>> import torch
        >>> from equivariance import profile_equivariance
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Conv2d(2, 2, 2, stride=2))
        >>> ax = profile_chart(profile_equivariance(net, torch.randn(2, 1, 16, 16), (1, 0)))
        >>> " / ".join(label.get_text().replace("\\n", " ") for label in ax.get_xticklabels())
        '0 Conv2d / 1 Conv2d'
    """
    plt = _pyplot()
    rows = profile.layers
    floor = min([profile.rtol / 100, *(r.error for r in rows if r.error > 0)])
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(rows) + 1.5), 3.6))
    heights = [max(r.error, floor) for r in rows]
    colours = ["tab:green" if r.passed else "tab:red" for r in rows]
    ax.bar(range(len(rows)), heights, color=colours)
    ax.set_yscale("log")
    ax.axhline(profile.rtol, color="black", linestyle="--", linewidth=1, label=f"rtol {profile.rtol:.0e}")
    if max(len(r.name) for r in rows) > 8 and len(rows) > 4:  # long names side by side would overlap
        kinds = [r.type if r.type.startswith("(") else f"({r.type})" for r in rows]  # "(forward)" rows
        ax.set_xticks(
            range(len(rows)), [f"{r.name} {k}" for r, k in zip(rows, kinds)], rotation=40, ha="right"
        )
    else:
        ax.set_xticks(range(len(rows)), [f"{r.name}\n{r.type}" for r in rows])
    ax.set_ylabel("relative error")
    what = profile.element.noun
    subject = profile.subject if profile.up_to is None else f"{profile.subject} up to {profile.up_to}"
    ax.set_title(f"{subject} under {what} {profile.element}")
    ax.legend(loc="upper left")
    return ax


Curve = EquivarianceMonitor | Sequence[MonitorRecord]


def monitor_curve(curves: Curve | Mapping[str, Curve], ax: Any = None, *, log: bool = True) -> Any:
    """The values a monitor measured during training against the step, one line per monitor; returns the Axes.

    Examples:
        >>> import torch
        >>> from equivariance.monitor import EquivarianceMonitor
        >>> net = torch.nn.Sequential(
        ...     torch.nn.Conv2d(1, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        >>> monitor = EquivarianceMonitor(net, torch.randn(2, 1, 8, 8))
        >>> for _ in range(3):
        ...     _ = monitor.step()
        >>> monitor_curve({"plain": monitor}).get_lines()[0].get_xdata().tolist()
        [1, 2, 3]

    Args:
        curves: a monitor (or its ``history``), or several by label.
        ax: the Axes to draw on; default a new figure.
        log: a log scale for the values (default).
    """
    plt = _pyplot()
    named = dict(curves) if isinstance(curves, Mapping) else {"": curves}
    if ax is None:
        _, ax = plt.subplots(figsize=(6.0, 3.6))
    ylabel = "value"
    for label, curve in named.items():
        records = curve.history if isinstance(curve, EquivarianceMonitor) else list(curve)
        if not records or not all(isinstance(r, MonitorRecord) for r in records):
            raise InvalidArgument(
                f"monitor_curve draws a monitor's records; {label or 'the curve'} has none (call "
                "monitor.step() during training first)"
            )
        if isinstance(curve, EquivarianceMonitor):
            ylabel = curve.name
        ax.plot([r.step for r in records], [r.value for r in records], marker="o", markersize=3, label=label)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    if any(named):
        ax.legend()
    return ax


def kmeans(points: torch.Tensor, k: int, iterations: int = 25, seed: int = 0) -> torch.Tensor:
    """Cluster centres of ``points`` (M, D) by Lloyd's k-means, seeded by k-means++.

    Deterministic for a given ``seed``; runs on the points' device.

    Examples:
        >>> points = torch.cat([torch.zeros(10, 2), torch.ones(10, 2)])
        >>> sorted(kmeans(points, 2).sum(1).tolist())
        [0.0, 2.0]
    """
    if points.dim() != 2 or len(points) < k or k < 1:
        raise InvalidArgument(
            f"kmeans needs (M, D) points with M >= k >= 1, found shape {tuple(points.shape)} and k={k}"
        )
    generator = torch.Generator().manual_seed(seed)
    points = points.float()
    centres = points[torch.randint(len(points), (1,), generator=generator)]
    for _ in range(1, k):  # k-means++: far points are likely next centres
        distance = torch.cdist(points, centres).amin(dim=1).square()
        if float(distance.sum()) == 0:
            centres = torch.cat([centres, centres[:1]])
            continue
        choice = torch.multinomial(distance.cpu() / distance.sum().cpu(), 1, generator=generator)
        centres = torch.cat([centres, points[choice.to(points.device)]])
    for _ in range(iterations):
        labels = torch.cdist(points, centres).argmin(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, labels, points)
        counts = torch.bincount(labels, minlength=k).unsqueeze(1)
        updated = torch.where(counts > 0, sums / counts.clamp_min(1), centres)  # empty clusters stay
        if torch.allclose(updated, centres):
            break
        centres = updated
    return centres


def cluster_colors(
    feature_map: FeatureMap, images: torch.Tensor, k: int = 6, seed: int = 0
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A colouring of feature maps by k-means clusters of their activations, as in the seed.

    Runs ``feature_map`` on ``images`` (the seed uses a batch of 50), clusters the per-pixel activation
    vectors into ``k`` clusters, and returns a function mapping a batch of inputs to label maps ``(N, H, W)``
    (the nearest centre of each pixel's activations).

    Examples:
        >>> import torch
        >>> conv = torch.nn.Conv2d(1, 3, 3)
        >>> colour = cluster_colors(conv, torch.rand(5, 1, 10, 10), k=4)
        >>> colour(torch.rand(2, 1, 10, 10)).shape
        torch.Size([2, 8, 8])
    """
    with torch.no_grad():
        features = feature_map(images)
    if features.dim() != 4:
        raise InvalidArgument(
            f"cluster_colors needs a feature map of shape (N, C, H, W), found {tuple(features.shape)}"
        )
    channels = features.shape[1]
    centres = kmeans(features.permute(0, 2, 3, 1).reshape(-1, channels), k, seed=seed)

    def labels(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            f = feature_map(x)
        flat = f.permute(0, 2, 3, 1).reshape(-1, channels).float()
        return torch.cdist(flat, centres).argmin(dim=1).view(f.shape[0], f.shape[2], f.shape[3])

    return labels


def feature_animation(
    feature_maps: Mapping[str, FeatureMap],
    frames: torch.Tensor,
    reference_images: torch.Tensor,
    path: str | Path,
    k: int = 6,
    fps: int = 6,
    seed: int = 0,
) -> Path:
    """Save the seed's animation as a GIF: the input moving, each model's clustered map beside it.

    For each model in ``feature_maps`` (name -> callable giving an ``(N, C, H, W)`` map), the activations on
    ``reference_images`` are clustered with k-means ([`cluster_colors`][equivariance.viz.cluster_colors]);
    every frame of ``frames`` (``(T, 1, H, W)``, e.g. a digit moving across a canvas) is then drawn as the
    input next to each model's map, coloured by cluster. An equivariant map moves with the digit; a dense
    network's map does not.

    Args:
        feature_maps: the models to show, by name, e.g. ``{"LeNet conv4": lenet.features, "MLP": mlp}``.
        frames: the inputs, one per frame.
        reference_images: the batch whose activations define the clusters.
        path: where to write the GIF.
        k: number of clusters (colours).
        fps: frames per second.
        seed: seed of the k-means initialisation.

    Returns:
        The path written.
    """
    plt = _pyplot()
    animation = importlib.import_module("matplotlib.animation")
    if frames.dim() != 4 or len(frames) == 0:
        raise InvalidArgument(f"frames must be (T, C, H, W) with T >= 1, found {tuple(frames.shape)}")
    colourings = {name: cluster_colors(fm, reference_images, k, seed) for name, fm in feature_maps.items()}
    labelled = {name: colour(frames) for name, colour in colourings.items()}
    columns = 1 + len(labelled)
    figure, axes = plt.subplots(1, columns, figsize=(2.6 * columns, 2.8))
    axes = list(axes) if columns > 1 else [axes]
    images: list[Any] = [axes[0].imshow(frames[0, 0].cpu().numpy(), cmap="gray", vmin=0, vmax=1)]
    axes[0].set_title("input")
    for ax, (name, labels) in zip(axes[1:], labelled.items()):
        images.append(
            ax.imshow(labels[0].cpu().numpy(), cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
        )
        ax.set_title(name)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    figure.tight_layout()

    def draw(t: int) -> Sequence[Any]:
        images[0].set_data(frames[t, 0].cpu().numpy())
        for image, labels in zip(images[1:], labelled.values()):
            image.set_data(labels[t].cpu().numpy())
        return images

    movie = animation.FuncAnimation(figure, draw, frames=len(frames), blit=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    movie.save(path, writer=animation.PillowWriter(fps=fps))
    plt.close(figure)
    return path
