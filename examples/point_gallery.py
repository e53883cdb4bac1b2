"""Point clouds, sets and graphs: the model families whose symmetry is built in, and one that breaks it.

Each builder returns a small, randomly initialised model in eval mode, with
the structure of a family people build and test today:

- DeepSets (Zaheer et al. 2017): a per-point network, a sum, a head:
  invariant to permutations of the set;
- a transformer encoder over the points with no positional encoding:
  equivariant to permutations (self-attention treats its tokens as a set),
  and with a learned one added by index: not;
- PointNet (Qi et al. 2017): a per-point network on the coordinates and a
  max pool: invariant to permutations, not to rotations or translations
  (the coordinates are its features);
- a graph convolution from torch_geometric (``GCNConv``): per-node features
  equivariant to permutations of the nodes (the edges relabelled with them);
- an E(n)-equivariant GNN (EGNN, Satorras et al. 2021) written here, on all
  pairs of points: positions and features equivariant to rotations,
  reflections, translations and permutations; with an energy head and forces
  ``-dE/dx`` (what a molecule researcher measures: the energy invariant, the
  forces turning), and egnn-pytorch's implementation of the same layer;
- an e3nn network (e3nn's own ``SimpleNetwork``) with outputs of several
  irreps (``1x0e + 1x1o + 1x1e + 1x2e``): O(3)-equivariant;
- a deliberate break: the coordinates flattened into an MLP.

[`CASES`][examples.point_gallery.CASES] says, for each, what its arguments
and outputs are (their field types), and the expected verdict for each
symmetry, with the reason. ``tests/test_point_gallery.py`` pins every verdict
with the slow reference checker (``tests/_reference_points.py``), each
against a negative control. torch_geometric, egnn-pytorch and e3nn are
optional: their cases are built only where the package is installed
(``pip install equivariance[geometric,egnn,e3nn]``).

Run it to print each case's largest error over a few elements per symmetry,
measured by hand with the elements of ``equivariance.euclidean`` and
``equivariance.permutations`` (the checks of the library take these models
once the engine accepts several inputs)::

    python examples/point_gallery.py
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from equivariance.actions import Action
from equivariance.euclidean import SO3, Rotation, Translation
from equivariance.fields import EdgeIndex, FieldSpec, Irreps, Positions, Scalars, Vectors, transform
from equivariance.permutations import Permutations

__all__ = [
    "CASES",
    "SYMMETRIES",
    "Case",
    "CoordinateMLP",
    "DeepSets",
    "EGNN",
    "EGNNLayer",
    "EnergyForces",
    "PointNet",
    "SetTransformer",
    "Verdict",
    "coordinate_mlp",
    "deep_sets",
    "e3nn_network",
    "egnn",
    "egnn_pytorch",
    "energy_and_forces",
    "graph_convolution",
    "largest_error",
    "pointnet",
    "transformer",
]

POINTS = 5
FEATURES = 4


def _mlp(*widths: int) -> nn.Sequential:
    """Linear layers with SiLU between them."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


# -- sets ---------------------------------------------------------------------------------------------


class DeepSets(nn.Module):
    """``rho(sum_i phi(h_i))`` on ``(B, N, C)``: a sum over the set, so the order of its points is lost.

    With ``indexed=True`` each point's features get a learned vector for its
    index first: the order then matters (the negative control).
    """

    def __init__(
        self, features: int = FEATURES, hidden: int = 16, out: int = 3, indexed: bool = False
    ) -> None:
        super().__init__()
        self.phi = _mlp(features, hidden, hidden)
        self.rho = _mlp(hidden, hidden, out)
        self.index = nn.Parameter(torch.randn(32, features)) if indexed else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.index is not None:
            h = h + self.index[: h.shape[-2]]
        pooled: torch.Tensor = self.rho(self.phi(h).sum(-2))
        return pooled


def deep_sets(seed: int = 0, indexed: bool = False) -> nn.Module:
    """DeepSets on ``(B, N, 4)`` features, 3 outputs per set."""
    torch.manual_seed(seed)
    return DeepSets(indexed=indexed).eval()


class SetTransformer(nn.Module):
    """A transformer encoder over ``(B, N, C)`` points; ``positions=True`` adds an embedding by index."""

    def __init__(self, features: int = FEATURES, depth: int = 2, positions: bool = False) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(features, 2, 2 * features, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.positions = nn.Parameter(torch.randn(32, features)) if positions else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.positions is not None:
            h = h + self.positions[: h.shape[-2]]
        out: torch.Tensor = self.encoder(h)
        return out


def transformer(seed: int = 0, positions: bool = False) -> nn.Module:
    """A two-layer transformer encoder on ``(B, N, 4)``, with or without a position embedding."""
    torch.manual_seed(seed)
    return SetTransformer(positions=positions).eval()


class PointNet(nn.Module):
    """A shared MLP on each point's coordinates ``(B, N, 3)``, a max pool over the points, a head.

    ``pool="flatten"`` concatenates the points instead of pooling them (the
    negative control of the permutation verdict).
    """

    def __init__(self, hidden: int = 16, out: int = 3, pool: str = "max", points: int = POINTS) -> None:
        super().__init__()
        self.point = _mlp(3, hidden, hidden)
        self.pool = pool
        self.head = _mlp(hidden * (points if pool == "flatten" else 1), hidden, out)

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        features = self.point(pos)
        pooled = features.flatten(-2) if self.pool == "flatten" else features.amax(-2)
        out: torch.Tensor = self.head(pooled)
        return out


def pointnet(seed: int = 0, pool: str = "max") -> nn.Module:
    """PointNet without its input transform network, on ``(B, 5, 3)`` clouds."""
    torch.manual_seed(seed)
    return PointNet(pool=pool).eval()


# -- graphs -------------------------------------------------------------------------------------------


class GraphConvolution(nn.Module):
    """Two ``GCNConv`` layers of torch_geometric on a ``Data`` (``x``, ``edge_index``): features per node.

    ``node_ids=True`` adds a learned vector by node index (the negative control).
    """

    def __init__(
        self, features: int = FEATURES, hidden: int = 8, out: int = 3, node_ids: bool = False
    ) -> None:
        super().__init__()
        from torch_geometric.nn import GCNConv

        self.conv1 = GCNConv(features, hidden)
        self.conv2 = GCNConv(hidden, out)
        self.ids = nn.Parameter(torch.randn(32, features)) if node_ids else None

    def forward(self, data: Any) -> torch.Tensor:
        x, edge_index = data.x, data.edge_index
        if self.ids is not None:
            x = x + self.ids[: len(x)]
        out: torch.Tensor = self.conv2(torch.relu(self.conv1(x, edge_index)), edge_index)
        return out


def graph_convolution(seed: int = 0, node_ids: bool = False) -> nn.Module:
    """Two graph convolutions (torch_geometric's ``GCNConv``) on graphs with 4 features a node."""
    torch.manual_seed(seed)
    return GraphConvolution(node_ids=node_ids).eval()


def graph(seed: int = 0, nodes: int = 6) -> Any:
    """A torch_geometric ``Data``: a ring of ``nodes`` nodes with two chords, 4 random features a node."""
    from torch_geometric.data import Data

    generator = torch.Generator().manual_seed(seed)
    ring = [(i, (i + 1) % nodes) for i in range(nodes)] + [(0, nodes // 2), (1, nodes - 2)]
    edges = torch.tensor(ring + [(j, i) for i, j in ring]).T.contiguous()
    return Data(x=torch.randn(nodes, FEATURES, generator=generator, dtype=torch.float64), edge_index=edges)


GRAPH_FIELDS = {"x": Scalars(nodes=0), "edge_index": EdgeIndex()}
"""The field types of the graph's attributes: node features reorder along axis 0, edges relabel."""


# -- E(n)-equivariant graph networks ------------------------------------------------------------------


class EGNNLayer(nn.Module):
    """One E(n)-equivariant layer (Satorras, Hoogeboom and Welling, ICML 2021) on all pairs of points.

    Messages ``m_ij = phi_e(h_i, h_j, |x_i - x_j|^2)`` see the points only
    through their distances; positions move along the differences
    ``x_i - x_j`` (``x_i += mean_j (x_i - x_j) phi_x(m_ij)``), features by
    ``phi_h(h_i, sum_j m_ij)``. ``coordinates_as_features=True`` also feeds
    the raw coordinates to ``phi_h`` (the negative control: it breaks
    rotations and translations, keeps permutations).
    """

    def __init__(
        self, features: int = FEATURES, hidden: int = 16, coordinates_as_features: bool = False
    ) -> None:
        super().__init__()
        self.raw = coordinates_as_features
        self.edge = nn.Sequential(_mlp(2 * features + 1, hidden, hidden), nn.SiLU())
        self.coord = _mlp(hidden, hidden, 1)
        self.node = _mlp(features + hidden + (3 if self.raw else 0), hidden, features)

    def forward(self, pos: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = pos.shape[-2]
        diff = pos[..., :, None, :] - pos[..., None, :, :]
        dist2 = (diff * diff).sum(-1, keepdim=True)
        shape = (*h.shape[:-2], n, n, h.shape[-1])
        pairs = torch.cat([h[..., :, None, :].expand(shape), h[..., None, :, :].expand(shape), dist2], -1)
        others = 1 - torch.eye(n, dtype=pos.dtype, device=pos.device)[..., None]  # no message to itself
        m = self.edge(pairs) * others
        pos = pos + (diff * self.coord(m)).sum(-2) / max(n - 1, 1)  # x_i - x_i is 0: no move by itself
        inputs = [h, m.sum(-2)] + ([pos] if self.raw else [])
        return pos, h + self.node(torch.cat(inputs, -1))


class EGNN(nn.Module):
    """EGNN layers on ``(pos (B, N, 3), h (B, N, C))``, returning the moved positions and the features.

    ``indexed=True`` adds a learned vector by index to the features first
    (the negative control of the permutation verdicts).
    """

    def __init__(self, depth: int = 2, coordinates_as_features: bool = False, indexed: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EGNNLayer(coordinates_as_features=coordinates_as_features) for _ in range(depth)
        )
        self.index = nn.Parameter(torch.randn(32, FEATURES)) if indexed else None

    def forward(self, pos: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.index is not None:
            h = h + self.index[: h.shape[-2]]
        for layer in self.layers:
            pos, h = layer(pos, h)
        return pos, h


def egnn(seed: int = 0, coordinates_as_features: bool = False, indexed: bool = False) -> nn.Module:
    """Two EGNN layers on clouds of 5 points with 4 features."""
    torch.manual_seed(seed)
    return EGNN(coordinates_as_features=coordinates_as_features, indexed=indexed).eval()


class EnergyForces(nn.Module):
    """An energy per cloud from an EGNN's features (a sum over atoms), and forces ``-dE/dpos``.

    Returns ``(energy (B,), forces (B, N, 3))``: the energy is invariant,
    the forces turn with the cloud (vectors: they do not move with a
    translation) and permute with its points.
    """

    def __init__(self, network: nn.Module, features: int = FEATURES) -> None:
        super().__init__()
        self.network = network
        self.readout = _mlp(features, 16, 1)

    def forward(self, pos: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            leaf = pos if pos.requires_grad else pos.detach().requires_grad_()
            _, features = self.network(leaf, h)
            energy = self.readout(features).squeeze(-1).sum(-1)
            (grad,) = torch.autograd.grad(energy.sum(), leaf, create_graph=pos.requires_grad)
        return energy, -grad


def energy_and_forces(
    seed: int = 0, coordinates_as_features: bool = False, indexed: bool = False
) -> nn.Module:
    """The EGNN with an energy head and forces by autograd."""
    torch.manual_seed(seed)
    return EnergyForces(EGNN(coordinates_as_features=coordinates_as_features, indexed=indexed)).eval()


class _EGNNPytorch(nn.Module):
    """egnn-pytorch's ``EGNN`` layers, called as ``(pos, h) -> (pos, h)`` like the one here."""

    def __init__(self, depth: int = 2) -> None:
        super().__init__()
        from egnn_pytorch import EGNN as Layer

        self.layers = nn.ModuleList(Layer(dim=FEATURES) for _ in range(depth))

    def forward(self, pos: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for layer in self.layers:
            h, pos = layer(h, pos)
        return pos, h


def egnn_pytorch(seed: int = 0) -> nn.Module:
    """Two layers of egnn-pytorch's ``EGNN`` (Phil Wang's implementation of the same paper)."""
    torch.manual_seed(seed)
    return _EGNNPytorch().eval()


# -- e3nn ---------------------------------------------------------------------------------------------

E3NN_IN = "2x0e + 1x1o"
E3NN_OUT = "1x0e + 1x1o + 1x1e + 1x2e"


class _E3nnNetwork(nn.Module):
    """e3nn's ``SimpleNetwork`` (a gated tensor-product message passing network on a radius graph),
    called on batches ``(pos (B, N, 3), x (B, N, dim))``, returning ``(B, N, dim_out)``."""

    def __init__(self, irreps_in: str = E3NN_IN, irreps_out: str = E3NN_OUT) -> None:
        super().__init__()
        from e3nn.nn.models.v2106.gate_points_networks import SimpleNetwork

        self.network = SimpleNetwork(
            irreps_in, irreps_out, max_radius=3.0, num_neighbors=4.0, num_nodes=POINTS, mul=4, layers=1,
            lmax=2, pool_nodes=False,
        )  # fmt: skip

    def forward(self, pos: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        b, n = pos.shape[:2]
        batch = torch.arange(b, device=pos.device).repeat_interleave(n)
        out: torch.Tensor = self.network(
            {"pos": pos.reshape(b * n, 3), "x": x.reshape(b * n, -1), "batch": batch}
        )
        return out.reshape(b, n, -1)


def e3nn_network(seed: int = 0, irreps_in: str = E3NN_IN) -> nn.Module:
    """e3nn's ``SimpleNetwork`` from ``2x0e + 1x1o`` inputs to ``1x0e + 1x1o + 1x1e + 1x2e`` outputs."""
    torch.manual_seed(seed)
    return _E3nnNetwork(irreps_in).eval()


# -- the deliberate break -----------------------------------------------------------------------------


class CoordinateMLP(nn.Module):
    """The coordinates of all points flattened into an MLP, an energy per cloud: no symmetry at all."""

    def __init__(self, points: int = POINTS, hidden: int = 16) -> None:
        super().__init__()
        self.mlp = _mlp(3 * points, hidden, hidden, 1)

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        energy: torch.Tensor = self.mlp(pos.flatten(-2)).squeeze(-1)
        return energy


def coordinate_mlp(seed: int = 0) -> nn.Module:
    """An MLP of the flattened coordinates of 5 points."""
    torch.manual_seed(seed)
    return CoordinateMLP().eval()


# -- the cases ----------------------------------------------------------------------------------------


def cloud(seed: int = 0, batch: int = 2, points: int = POINTS) -> torch.Tensor:
    """Positions ``(batch, points, 3)``, float64, standard normal."""
    return torch.randn(batch, points, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def features(seed: int = 1, batch: int = 2, points: int = POINTS, width: int = FEATURES) -> torch.Tensor:
    """Features ``(batch, points, width)``, float64, standard normal."""
    return torch.randn(
        batch, points, width, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


SYMMETRIES: dict[str, Callable[[int], Sequence[Action]]] = {
    "permutations": lambda n: Permutations(3, n=n, seed=0),
    "rotations": lambda n: SO3(3, seed=0),
    "reflections": lambda n: [Rotation.inversion(), Rotation.reflection("z")],
    "translations": lambda n: [Translation([0.5, -1.0, 2.0]), Translation([3.0, 0.0, 0.0])],
}
"""A few elements of each symmetry the gallery checks, given the number of points."""


@dataclass(frozen=True)
class Verdict:
    """What a check of one symmetry should find, and why."""

    holds: bool
    why: str


@dataclass(frozen=True)
class Case:
    """A gallery model, its inputs, the field types of its arguments and outputs, and its verdicts.

    Attributes:
        build: the builder (``seed=`` and the controls' options).
        inputs: the arguments, a function of a seed.
        fields: the field type of each argument.
        outputs: the field type of each output (a tuple for several).
        verdicts: for each symmetry of ``SYMMETRIES`` it is checked for, whether it holds and why.
        needs: the optional package the case needs (None: torch only).
        controls: the negative controls: the builder's options that break symmetries the case has,
            each with the symmetries it breaks.
    """

    build: Callable[..., nn.Module]
    inputs: Callable[[int], tuple[Any, ...]]
    fields: FieldSpec
    outputs: FieldSpec
    verdicts: dict[str, Verdict]
    needs: str | None = None
    controls: tuple[tuple[dict[str, Any], tuple[str, ...]], ...] = ()

    @property
    def available(self) -> bool:
        """Whether the package the case needs is installed."""
        return self.needs is None or importlib.util.find_spec(self.needs) is not None

    def model(self, seed: int = 0, control: int | None = None) -> nn.Module:
        """The float64 model (negative control number ``control`` where given), built under torch's
        float64 default dtype.

        e3nn makes its constants (Clebsch-Gordan coefficients, normalisations)
        in the default dtype when a module is built: a float32-built model cast
        to float64 is equivariant to about 1e-9 only, one built in float64 to
        rounding.
        """
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            options = {} if control is None else self.controls[control][0]
            return self.build(seed=seed, **options).double()
        finally:
            torch.set_default_dtype(previous)


_SET_PERMUTED = "the points are a set: a sum over them does not depend on their order"
_NO_COORDINATES = "the model sees no coordinates"

CASES: dict[str, Case] = {
    "DeepSets": Case(
        deep_sets,
        lambda seed: (features(seed),),
        (Scalars(),),
        Scalars(nodes=None),
        {"permutations": Verdict(True, _SET_PERMUTED)},
        controls=(({"indexed": True}, ("permutations",)),),
    ),
    "transformer encoder": Case(
        transformer,
        lambda seed: (features(seed),),
        (Scalars(),),
        Scalars(),
        {
            "permutations": Verdict(
                True,
                "self-attention without positions treats its tokens as a set: "
                "reordered inputs give the same outputs, reordered",
            )
        },
        controls=(({"positions": True}, ("permutations",)),),
    ),
    "transformer encoder with positions": Case(
        lambda seed=0: transformer(seed, positions=True),
        lambda seed: (features(seed),),
        (Scalars(),),
        Scalars(),
        {
            "permutations": Verdict(
                False,
                "a position embedding added by index tells the points apart by their place in the input",
            )
        },
    ),
    "PointNet": Case(
        pointnet,
        lambda seed: (cloud(seed),),
        (Positions(),),
        Scalars(nodes=None),
        {
            "permutations": Verdict(True, "a shared network on each point, then a max over the points"),
            "rotations": Verdict(False, "the coordinates are its features: a rotated cloud is another input"),
            "translations": Verdict(False, "the coordinates are its features, not their differences"),
        },
        controls=(({"pool": "flatten"}, ("permutations",)),),
    ),
    "graph convolution": Case(
        graph_convolution,
        lambda seed: (graph(seed),),
        (GRAPH_FIELDS,),
        Scalars(nodes=0),
        {
            "permutations": Verdict(
                True,
                "messages are summed over each node's neighbours, whatever their "
                "numbers, and the edges are relabelled with the nodes",
            )
        },
        needs="torch_geometric",
        controls=(({"node_ids": True}, ("permutations",)),),
    ),
    "EGNN": Case(
        egnn,
        lambda seed: (cloud(seed), features(seed + 1)),
        (Positions(), Scalars()),
        (Positions(), Scalars()),
        {
            "permutations": Verdict(True, "messages between all pairs, summed"),
            "rotations": Verdict(True, "it sees distances only, and moves points along their differences"),
            "reflections": Verdict(True, "distances and differences do not know left from right"),
            "translations": Verdict(True, "differences of positions do not change when all move"),
        },
        controls=(
            ({"coordinates_as_features": True}, ("rotations", "reflections", "translations")),
            ({"indexed": True}, ("permutations",)),
        ),
    ),
    "EGNN energy and forces": Case(
        energy_and_forces,
        lambda seed: (cloud(seed), features(seed + 1)),
        (Positions(), Scalars()),
        (Scalars(nodes=None), Vectors()),
        {
            "permutations": Verdict(True, "the energy is a sum over atoms; the forces are per atom"),
            "rotations": Verdict(True, "an invariant energy's gradient turns with the molecule"),
            "reflections": Verdict(
                True, "EGNN is E(3)-equivariant: the forces are vectors, not pseudovectors"
            ),
            "translations": Verdict(
                True, "the energy does not change, and forces do not move with the atoms"
            ),
        },
        controls=(
            ({"coordinates_as_features": True}, ("rotations", "reflections", "translations")),
            ({"indexed": True}, ("permutations",)),
        ),
    ),
    "egnn-pytorch": Case(
        egnn_pytorch,
        lambda seed: (cloud(seed), features(seed + 1)),
        (Positions(), Scalars()),
        (Positions(), Scalars()),
        {
            "permutations": Verdict(True, "the EGNN layer, as packaged by egnn-pytorch"),
            "rotations": Verdict(True, "distances in, moves along differences out"),
            "reflections": Verdict(True, "distances and differences do not know left from right"),
            "translations": Verdict(True, "differences of positions do not change when all move"),
        },
        needs="egnn_pytorch",
    ),
    "e3nn network": Case(
        e3nn_network,
        lambda seed: (cloud(seed, batch=1), features(seed + 1, batch=1, width=5)),
        (Positions(), Irreps(E3NN_IN) if importlib.util.find_spec("e3nn") else None),
        Irreps(E3NN_OUT) if importlib.util.find_spec("e3nn") else None,
        {
            "permutations": Verdict(True, "messages are summed over each point's neighbours"),
            "rotations": Verdict(True, "tensor products of irreps with spherical harmonics of the edges"),
            "reflections": Verdict(True, "every irrep has its parity, and the 1e output is a pseudovector"),
            "translations": Verdict(True, "edges are differences of positions"),
        },
        needs="e3nn",
    ),
    "coordinates into an MLP": Case(
        coordinate_mlp,
        lambda seed: (cloud(seed),),
        (Positions(),),
        Scalars(nodes=None),
        {
            "permutations": Verdict(
                False, "each input unit has its own weights: the order of points is read"
            ),
            "rotations": Verdict(False, "the coordinates are used as features"),
            "reflections": Verdict(False, "the coordinates are used as features"),
            "translations": Verdict(False, "the coordinates are used as features"),
        },
    ),
}
"""The gallery: each model family with its field types and expected verdicts."""


def largest_error(case: Case, model: nn.Module, symmetry: str, seed: int = 0) -> float:
    """The largest relative error of ``model`` over ``SYMMETRIES[symmetry]``, by hand.

    For each element ``g``: ``f(g.x)`` against ``g.f(x)``, both sides moved by
    [`transform`][equivariance.fields.transform], compared over all outputs.
    """
    args = case.inputs(seed)
    n = _points(args[0])
    base = model(*args)
    worst = 0.0
    for g in SYMMETRIES[symmetry](n):
        out = model(*transform(g, args, case.fields, name="args"))
        ref = transform(g, base, case.outputs, name="output")
        for a, b in zip(_tensors(out), _tensors(ref)):
            worst = max(worst, float((a - b).norm() / b.norm().clamp_min(1e-300)))
    return worst


def _points(arg: Any) -> int:
    return int(arg.num_nodes if not isinstance(arg, torch.Tensor) else arg.shape[-2])


def _tensors(value: Any) -> list[torch.Tensor]:
    return [t.detach() for t in (value if isinstance(value, (tuple, list)) else (value,))]


if __name__ == "__main__":
    for name, case in CASES.items():
        if not case.available:
            print(f"# {name}: skipped, {case.needs} is not installed")
            continue
        model = case.model(seed=0)
        print(f"# {name}")
        for symmetry, verdict in case.verdicts.items():
            error = largest_error(case, model, symmetry)
            found = "holds " if error < 1e-9 else "broken"
            mark = "as expected" if (error < 1e-9) == verdict.holds else "UNEXPECTED"
            print(f"  {symmetry:13s} error {error:8.1e}  {found} ({mark}): {verdict.why}")
    print("\n(float64 models and inputs; an error below 1e-9 holds)")
