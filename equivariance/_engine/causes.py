"""Why a measurement fails: each cause named once, with its explanation and its fix, in the one vocabulary the
check's hints and the profile's causes share (docs/diagnosing.md)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from equivariance._engine.anatomy import Cover, Padded
from equivariance._engine.grids import as_fraction
from equivariance._engine.validation import shown_per_dim

ALIASING = "aliasing"
BORDERS = "borders"
GLOBAL_POOLING = "global pooling"
ABSOLUTE_POSITIONS = "absolute positions"
SPATIAL_DIMS_GONE = "spatial dims gone"
NO_SYMMETRY = "no symmetry"
CAUSES = (ALIASING, BORDERS, GLOBAL_POOLING, ABSOLUTE_POSITIONS, SPATIAL_DIMS_GONE, NO_SYMMETRY)
"""The causes a profile names, one per failing layer."""

GEOMETRIC = (ALIASING, BORDERS)
"""Causes a layer's geometry explains whatever the batch: a stride that does not divide the shift, an
error confined to the edges. A batch effect puts error everywhere on a layer."""


def _samples(count: int) -> str:
    return f"{count} sample{'s' if count != 1 else ''}"


# -- aliasing ---------------------------------------------------------------------------------------


def _shown(stride: Sequence[float] | int) -> str:
    return str(stride) if isinstance(stride, int) else shown_per_dim(stride)


def multiples(stride: Sequence[float] | int) -> str:
    """How to test only the shifts a stride divides: multiples of its numerator (3 for a stride of 3/2)."""
    whole = _shown(stride if isinstance(stride, int) else [as_fraction(s).numerator for s in stride])
    return f"test multiples of {whole} (multiples_of({whole}, max_shift=...))"


ANTIALIASED = "make the downsampling anti-aliased (blur before subsampling)"


def aliasing(lead: str, stride: Sequence[float] | int, *, also: str = "") -> str:
    """A map subsampled by ``stride`` met a shift the stride does not divide; ``also``: a fix first."""
    shown = _shown(stride)
    fix = f"{also}, or {multiples(stride)}" if also else multiples(stride)
    return (
        f"{lead}: a map subsampled by {shown} cannot follow a shift that {shown} does not divide "
        f"(aliasing); {fix}, or {ANTIALIASED}"
    )


def brought_back(lead: str, stride: Sequence[float] | int) -> str:
    """A map subsampled by ``stride`` and upsampled back to a finer grid: it follows only multiples."""
    shown = _shown(stride)
    return (
        f"{lead}: a map subsampled by {shown} follows only shifts that {shown} divides, and upsampling "
        f"cannot restore what the subsampling aliased; {multiples(stride)}, or {ANTIALIASED}"
    )


def pooled_after_subsampling(lead: str, stride: Sequence[float] | int) -> str:
    """A pooled output whose value changes because the map before the pooling was subsampled."""
    shown = _shown(stride)
    return (
        f"{lead}: a map subsampled by {shown} cannot follow a shift that {shown} does not divide, so the "
        f"pooled value changes (aliasing); invariance holds at most for shifts it divides: "
        f"{multiples(stride)}, and anti-aliased downsampling (blur before subsampling) reduces the rest"
    )


def blurred(layer: str, stride: Sequence[float], error: float, without: float | None) -> str:
    """A layer that blurs before it subsamples and still fails: blurring lowers aliasing, never removes
    it; ``without``: the error of its input subsampled without the blur, where measured."""
    shown = shown_per_dim(stride)
    measured = ""
    if without is not None and without > 0 and error > 0:
        measured = (
            f" (its input subsampled by the same step without the blur: {without:.1e}, so the blur "
            f"divides the error by {without / error:.1f})"
        )
    return (
        f"{layer} blurs before it subsamples by {shown}: blurring reduces aliasing but does not remove it "
        "(a blur of a few taps leaves some of the signal above the new Nyquist frequency), so a shift "
        f"that {shown} does not divide still moves the output by a relative {error:.1e}{measured}; "
        f"{multiples(stride)}, or accept the residual with rtol above {error:.0e} (a wider blur lowers it)"
    )


def misaligned_grid(lead: str, fix: str) -> str:
    """A strided layer whose sampling grid a rotation or flip does not map onto itself."""
    return (
        f"{lead}: its samples are not placed symmetrically, and a strided layer is exactly rotation- and "
        f"flip-equivariant only when (n + 2p - k) = 0 (mod s) at its input; {fix}"
    )


def adaptive_sampling(layer: str, boundary: str) -> str:
    """A row after adaptive polyphase sampling, compared with a rounded shift it need not follow."""
    exactly = (
        "under circular shifts, with circular padding and sizes the strides divide, the map is then "
        "exactly a shift of itself by that amount, and a globally pooled output exactly invariant"
        if boundary == "circular"
        else "under circular shifts (boundary='circular') and with circular padding it is exact"
    )
    return (
        f"adaptive polyphase sampling at {layer} keeps, for each sample, the subsampling grid of "
        "largest norm, so the map moves by a whole number of samples that depends on the sample (which "
        f"grid wins), not by the rounded shift this row is compared with; {exactly}. Test the pooled output "
        "with check_invariance(model, x, boundary='circular')"
    )


# -- borders ----------------------------------------------------------------------------------------

BOUNDARY_EFFECT = "a boundary effect (zero padding, or content leaving the canvas)"
LARGER_INPUT = "check on a larger input (content on a zero canvas, or larger maps)"


def borders(margin: int, suggested: Sequence[int], boundary: str) -> str:
    """The error vanishes beyond ``margin`` samples of the borders of the compared region."""
    circular = ", or use circular padding with boundary='circular'" if boundary == "zeros" else ""
    return (
        f"errors only within {_samples(margin)} of the borders of the compared region: {BOUNDARY_EFFECT}; "
        f"pass margin={shown_per_dim(suggested)} (or margin='auto'), put the content on a larger zero "
        f"canvas{circular}"
    )


def kept_share(sides: Sequence[int], margin: int) -> float:
    """The share of a compared region of ``sides`` that a margin of ``margin`` keeps (0 for none)."""
    total = math.prod(sides)
    return math.prod(max(0, side - 2 * margin) for side in sides) / total if total > 0 else 0.0


def keeps_little(margin: int, kept: float) -> str:
    """What a margin that passes leaves of the map, where that is little."""
    return f"a margin of {margin} keeps only {kept:.0%} of this map: a larger input keeps more"


def beyond_the_borders(lead: str, margin: int, kept: float, why: str = "") -> str:
    """Errors everywhere, but none beyond ``margin`` samples of the borders: the borders, however
    little the margin keeps; ``why``: the reach that explains it and its fix, where the layers say."""
    fix = (
        f"; {why}"
        if why
        else f" (zero padding, or content leaving the canvas); {LARGER_INPUT} with margin='auto', or use "
        "circular padding with boundary='circular'"
    )
    return (
        f"{lead}; but beyond {_samples(margin)} of the borders of the compared region every sample "
        f"passes: a boundary effect whose reach leaves only {kept:.0%} of the region beyond it{fix}"
    )


def pad_circularly(layer: Padded) -> str:
    """How to make a layer's padding circular."""
    if "Pool" in layer.type:
        return f"pad circularly before {layer.name!r} (F.pad(x, ..., mode='circular')) and give it padding=0"
    return f"give {layer.name!r} padding_mode='circular'"


def not_circular(layer: Padded) -> str:
    """Under the circular boundary, the first layer whose padding is not circular."""
    return (
        f"boundary='circular' moves content across the edges, but {layer.describe()} does not pad circularly"
    )


def covered(cover: Cover) -> str:
    """Errors everywhere on a map that the borders' reach covers: the explanation and the fix."""
    first, count = cover.layers[0], sum(layer.pads for layer in cover.layers)
    start = f"the padding of {first.describe()}"
    if count > 1:
        start = f"the padding of {count} layers, from {first.describe()} on,"
    if cover.boundary == "circular":
        start = f"{not_circular(first)}, and {start}"
    stride = f" at stride {shown_per_dim(cover.stride)}" if any(s > 1 for s in cover.stride) else ""
    fix = (
        f"{pad_circularly(first)}, or check on a larger input, with maps more than twice the reach"
        if cover.boundary == "circular"
        else "check on a larger input (maps more than twice the reach, or content on a zero canvas), or "
        "use circular padding with boundary='circular'"
    )
    return (
        f"{start} reaches {_samples(cover.reach[cover.dim])} in from each edge of this map{stride}, whose "
        f"compared region has {cover.side} along dim {cover.dim}: every compared sample is within the "
        "borders' reach, so errors all over it are what the borders do there, not evidence of a layer "
        f"without symmetry; {fix}"
    )


def attention(layers: Sequence[str], verb: str = "check") -> str:
    """Self-attention under the zeros boundary: what enters and leaves at the edges reaches every token."""
    more = f" and {len(layers) - 1} more" if len(layers) > 1 else ""
    return (
        f"self-attention ({layers[0]!r}{more}) mixes every token with every other, and under "
        "boundary='zeros' a shift drops content at one edge and fills zeros in at the other: the "
        "tokens there change, and through attention every token. A model without a position "
        f"embedding follows shifts by whole patches on a torus: {verb} with boundary='circular', or "
        "with content on a zero canvas that the shifts keep inside"
    )


# -- global pooling ---------------------------------------------------------------------------------


def global_pooling(lead: str) -> str:
    """A map pooled to one value per channel, which content entering or leaving the canvas changes."""
    return (
        f"{lead}: a global statistic, which a shift leaves unchanged only while all of the content stays "
        "inside the input and out of the zero padding's reach; content that enters or leaves the canvas "
        "changes it, and every sample it gates or is added to (a squeeze-excite block, a global-pool "
        "branch). Put the content on a zero canvas larger than the shifts, use circular padding with "
        "boundary='circular', or check the pooled part for invariance (check_invariance) and the layers "
        "before the pooling for equivariance"
    )


# -- absolute positions -----------------------------------------------------------------------------


def positions(name: str, shape: tuple[int, ...], where: str = "") -> str:
    """A parameter with a value for every position: a position embedding."""
    return (
        f"the parameter {name} of shape {shape} holds a different value at every position of a map the "
        "model computes: an absolute (learned) position embedding, which stays where it is when the "
        f"content moves.{where} Use relative positions (a relative position bias, as in Swin, or a "
        "convolutional position encoding) for equivariance, or check a pooled output for invariance "
        "(check_invariance) and the layers before the embedding for equivariance"
    )


def carried_positions(layer: str) -> str:
    """A layer after the one a position embedding broke."""
    return (
        f"the error is everywhere, after the position embedding at {layer} (see its row): a value for "
        "every position that stays where it is when the content moves, which every later layer "
        "carries; fix it there"
    )


# -- spatial dims gone, and invariance ----------------------------------------------------------------

POOL_FOR_INVARIANCE = (
    "invariance needs pooling over the whole map (global average pooling) and, for an exact result, "
    "circular shifts or content on a zero canvas that stays inside it"
)


def spatial_dims_gone() -> str:
    """A layer without spatial dims whose output changes with the shift."""
    return (
        "the spatial dims are gone (flatten, a dense head, or a pooling that keeps position), so nothing "
        f"moves with the input: test the layer before it with layer=; {POOL_FOR_INVARIANCE}, which "
        "check_invariance tests"
    )


NOT_POOLED = f"the output changes when the input moves; {POOL_FOR_INVARIANCE}"

NOT_POOLED_OVER_THE_GROUP = (
    "the output changes when the input is rotated or flipped; invariance needs features that "
    "rotate or flip with the input (kernels averaged over the group, as in a p4 / p4m group "
    "convolution) pooled over the whole map and over the group (global average pooling)"
)


# -- no symmetry ------------------------------------------------------------------------------------

NOT_TRANSLATION_EQUIVARIANT = (
    "Dense layers (flatten, fully connected), position embeddings or absolute coordinates break "
    "translation equivariance"
)


def no_symmetry(lead: str, earlier: str = "check an earlier layer with layer=") -> str:
    """An error everywhere that nothing else explains: a layer that does not commute with translations."""
    return f"{lead}: the output does not move with the input. {NOT_TRANSLATION_EQUIVARIANT}; {earlier}"


def no_group_symmetry(lead: str, earlier: str = "check an earlier layer with layer=") -> str:
    """A layer that does not commute with a rotation or flip."""
    return (
        f"{lead}: a plain convolution has no such symmetry; average its kernels over the group (as in a "
        f"p4 / p4m group convolution), or {earlier}"
    )


def not_followed(lead: str, earlier: str = "check an earlier layer with layer=") -> str:
    """An output that does not follow elements of the caller's own, which say nothing of their failures
    (``Action.failure_hint``): no advice of grids, only where to look."""
    return f"{lead}: the model does not commute with these elements; {earlier} to find where it breaks"


def in_forward(between: str) -> str:
    """The first failure is a tensor computed in ``forward`` between two submodules."""
    return (
        f"the break happens {between}, in forward code rather than in a submodule: an operation there "
        "(a parameter or a constant added, indexing or concatenation by position, a reshape that mixes "
        "positions) does not commute with translations; make it translation-equivariant, or wrap it in "
        "a submodule to profile it"
    )


def in_forward_code(between: str) -> str:
    """Where a break in ``forward`` lies, for an element that words its own failure."""
    return (
        f"The break happens {between}, in forward code rather than in a submodule: an operation there (a "
        "parameter or constant added, indexing or concatenation by position) does it; wrap it in a "
        "submodule to profile it"
    )


# -- the batch --------------------------------------------------------------------------------------

BATCH_INTERACTION = (
    "the samples of a batch influence each other (a layer that normalizes with the batch's statistics, "
    "such as BatchNorm with track_running_stats=False, attention across the batch, or randomness in "
    "forward)"
)
