"""The per-layer profile of a torch_geometric Batch of graphs of different sizes.

Under a ``NodePermutation`` each graph's nodes move by its own permutation (``element.sized(nodes)``):
for the Batch's one axis of nodes, a block-diagonal permutation. A per-node layer output must be
reordered by it, graph by graph; a pooled per-graph output must not change. The negative controls (a
node's index in the whole Batch used as a feature, a layer that mixes nodes across the boundaries of
graphs) must be named at the layer that breaks them.
"""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from equivariance import check_equivariance, equivariance_error, profile_equivariance
from equivariance.errors import InvalidArgument
from equivariance.euclidean import SO3, Translation
from equivariance.fields import EdgeIndex, Positions, Scalars, Vectors
from equivariance.permutations import NodePermutation, NodePermutations, Permutation

pytest.importorskip("torch_geometric", reason="the Batch of graphs is torch_geometric's")
from torch_geometric.data import Batch, Data

FEATURES, HIDDEN = 3, 6
SIZES = (5, 9, 7)
FIELDS = {"x": Scalars(nodes=0), "pos": Positions(nodes=0), "edge_index": EdgeIndex()}
OUTPUTS = (Scalars(nodes=None), Scalars(nodes=0))
"""The model's outputs: one energy a graph (unchanged), features a node (reordered graph by graph)."""


def graph(nodes: int, seed: int) -> Data:
    """A ring of ``nodes`` nodes with a chord, both ways; random features and positions."""
    generator = torch.Generator().manual_seed(seed)
    ring = [(i, (i + 1) % nodes) for i in range(nodes)] + [(0, nodes // 2)]
    edges = torch.tensor(ring + [(j, i) for i, j in ring]).T.contiguous()
    x = torch.randn(nodes, FEATURES, generator=generator, dtype=torch.float64)
    pos = torch.randn(nodes, 3, generator=generator, dtype=torch.float64)
    return Data(x=x, pos=pos, edge_index=edges)


def batch(sizes: tuple[int, ...] = SIZES) -> Batch:
    return Batch.from_data_list([graph(n, seed) for seed, n in enumerate(sizes)])


class Convolution(nn.Module):
    """``h_i W + sum_{j -> i} h_j U``: a leaf whose output has one row a node of the whole Batch."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.own = nn.Parameter(torch.randn(width, width) / width)
        self.neighbours = nn.Parameter(torch.randn(width, width) / width)

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        src, dst = edge_index
        return h @ self.own + torch.zeros_like(h).index_add(0, dst, h[src] @ self.neighbours)


class GlobalIndex(nn.Module):
    """Adds each node's index in the whole Batch to its features: breaks a permutation of the nodes."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + 0.1 * torch.arange(len(h), dtype=h.dtype)[:, None]


class AcrossGraphs(nn.Module):
    """Adds the features of the node before it in the Batch: across the boundary of two graphs."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + 0.5 * torch.roll(h, 1, 0)


class GraphSum(nn.Module):
    """The features of each graph's nodes summed: one row a graph."""

    def forward(self, h: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return torch.zeros(int(index.max()) + 1, h.shape[1], dtype=h.dtype).index_add(0, index, h)


class GraphNet(nn.Module):
    """Embedding, two convolutions, a sum a graph and a head: ``(energy a graph, features a node)``."""

    def __init__(self, index: bool = False, across: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(FEATURES, HIDDEN)
        self.index = GlobalIndex() if index else nn.Tanh()
        self.conv1 = Convolution(HIDDEN)
        self.mix = AcrossGraphs() if across else nn.Tanh()
        self.conv2 = Convolution(HIDDEN)
        self.pool = GraphSum()
        self.head = nn.Linear(HIDDEN, 1)

    def forward(self, data: Data) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.conv1(self.index(self.embed(data.x)), data.edge_index)
        h = self.conv2(self.mix(h), data.edge_index)
        return self.head(self.pool(h, data.batch)).squeeze(-1), h


def profile(model: nn.Module, element: object = NodePermutation(3), **options: object) -> object:
    return profile_equivariance(model.double(), batch(), element, inputs=FIELDS, outputs=OUTPUTS, **options)


def test_a_graph_network_of_mixed_sizes_passes_every_layer() -> None:
    result = profile(GraphNet())
    assert result.passed, result
    assert all(row.compared for row in result.layers)
    fields = {row.name: row.field for row in result.layers}
    assert fields["conv1"] == "per node"
    assert fields["pool"] == "pooled"
    assert fields["(output[0])"] == "Scalars(nodes=None) (outputs=)"
    assert result["conv2"].output_shape == (3, 9, HIDDEN)  # one row a graph, padded to the largest
    assert "3 graphs of 5 to 9 nodes" in str(result)


class LocalIndex(nn.Module):
    """Adds each node's index within its own graph: breaks a permutation, whatever the batch."""

    def forward(self, h: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        counts = torch.bincount(index)
        local = torch.arange(len(h)) - (torch.cumsum(counts, 0) - counts)[index]
        return h + 0.1 * local.to(h.dtype)[:, None]


class Local(nn.Module):
    def __init__(self, broken: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.local = nn.Linear(FEATURES, HIDDEN), LocalIndex() if broken else None

    def forward(self, data: Data) -> torch.Tensor:
        h: torch.Tensor = self.embed(data.x)
        return h if self.local is None else self.local(h, data.batch)


@pytest.mark.parametrize("broken", [False, True])
def test_the_output_row_is_the_checks_error(broken: bool) -> None:
    """The per-node output, each graph moved by its own permutation and padded, as the check does."""
    model, x, g = Local(broken).double(), batch(), NodePermutation(5)
    result = profile_equivariance(model, x, g, inputs=FIELDS, outputs=Scalars(nodes=0))
    by_check = equivariance_error(model, x, g, inputs=FIELDS, outputs=Scalars(nodes=0), reduction="max")
    last = result.layers[-1]
    assert last.name == ("local" if broken else "embed")
    assert last.error == pytest.approx(float(by_check), rel=1e-9, abs=1e-15)
    assert (float(by_check) > 1e-2) == broken
    assert result.passed != broken


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_node_index_of_the_whole_batch_fails_where_it_is_added(seed: int) -> None:
    result = profile(GraphNet(index=True), NodePermutation(seed))
    first = result.first_failure
    assert first is not None
    assert first.name == "index"
    assert result["embed"].passed
    assert "does not permute with the points" in first.fix
    assert "graphs fail)" in first.fix
    assert result.separate_passes is None  # the first graph sits first in the Batch alone too


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_layer_that_mixes_nodes_across_graphs_fails_where_it_mixes(seed: int) -> None:
    result = profile(GraphNet(across=True), NodePermutation(seed))
    first = result.first_failure
    assert first is not None
    assert first.name == "mix"
    assert all(result[name].passed for name in ("embed", "index", "conv1"))
    # the first graph's nodes read the last graph's: x[:1] alone differs from the batch, two passes
    assert result.separate_passes is not None


@settings(max_examples=8, deadline=None)
@given(st.lists(st.sampled_from([2, 3, 4, 5, 7, 9]), min_size=2, max_size=4), st.integers(0, 2**20))
def test_any_sizes_and_permutation_pass_every_layer_and_the_index_fails_at_its_layer(
    sizes: list[int], seed: int
) -> None:
    """(Sizes other than the HIDDEN features: graphs of one size read a per-graph axis that long as nodes.)"""
    x, g = batch(tuple(sizes)), NodePermutation(seed)
    good = profile_equivariance(GraphNet().double(), x, g, inputs=FIELDS, outputs=OUTPUTS)
    assert good.passed, good
    local = profile_equivariance(Local(True).double(), x, g, inputs=FIELDS, outputs=Scalars(nodes=0))
    moved = any(not g.sized(n).is_identity for n in sizes)  # a permutation of each size may be the identity
    assert local.passed != moved


def test_the_worst_graph_is_named() -> None:
    """Only the graph of 9 nodes breaks: the fix names it, and that 1 of 3 graphs fails."""

    class NineBreak(nn.Module):
        def forward(self, h: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            counts = torch.bincount(index)
            return (
                h + (counts[index] == 9).to(h.dtype)[:, None] * torch.arange(len(h), dtype=h.dtype)[:, None]
            )

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.bad = nn.Linear(FEATURES, HIDDEN), NineBreak()

        def forward(self, data: Data) -> torch.Tensor:
            out: torch.Tensor = self.bad(self.embed(data.x), data.batch)
            return out

    result = profile_equivariance(Net().double(), batch(), NodePermutation(1), inputs=FIELDS,
                                  outputs=Scalars(nodes=0))  # fmt: skip
    assert result.first_failure is not None
    assert result.first_failure.name == "bad"
    assert "(worst: graph 1 of x, 9 nodes; 1 of 3 graphs fail)" in result.first_failure.fix


def test_a_rotation_with_a_node_permutation_moves_positions_graph_by_graph() -> None:
    """Positions per node, named: rotated, translated and permuted graph by graph."""

    class Centred(nn.Module):
        def forward(self, pos: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            counts = torch.bincount(index).to(pos.dtype)[:, None]
            centroid = torch.zeros(len(counts), 3, dtype=pos.dtype).index_add(0, index, pos) / counts
            return centroid[index] + 0.5 * (pos - centroid[index])  # halfway to the centroid

    class Raw(Centred):
        def forward(self, pos: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            return super().forward(pos, index) + pos[:, :1]  # a coordinate added: no rotation

    class Net(nn.Module):
        def __init__(self, raw: bool = False) -> None:
            super().__init__()
            self.centre = Raw() if raw else Centred()

        def forward(self, data: Data) -> torch.Tensor:
            out: torch.Tensor = self.centre(data.pos, data.batch)
            return out

    g = Translation([1.0, -2.0, 0.5]) * SO3(1, seed=2)[0] * NodePermutation(4)
    fields = {"centre": Positions(nodes=0)}
    good = profile_equivariance(Net(), batch(), g, inputs=FIELDS, fields=fields)
    assert good.passed, good
    assert good["centre"].field == "Positions(nodes=0)"
    bad = profile_equivariance(Net(raw=True), batch(), g, inputs=FIELDS, fields=fields)
    assert bad.first_failure is not None
    assert bad.first_failure.name == "centre"


def test_graphs_of_one_size_are_read_as_before() -> None:
    result = profile_equivariance(GraphNet().double(), batch((5, 5)), NodePermutation(2), inputs=FIELDS,
                                  outputs=OUTPUTS)  # fmt: skip
    assert result.passed, result
    assert result["conv1"].output_shape == (2, 5, HIDDEN)
    broken = profile_equivariance(GraphNet(index=True).double(), batch((5, 5)), Permutation.cycle(5),
                                  inputs=FIELDS, outputs=OUTPUTS)  # fmt: skip
    assert broken.first_failure is not None
    assert broken.first_failure.name == "index"


def test_a_permutation_of_one_size_on_mixed_graphs_is_refused_with_the_fix() -> None:
    with pytest.raises(InvalidArgument, match=r"pass NodePermutations"):
        profile(GraphNet(), Permutation.cycle(5))


def test_a_check_finds_what_the_profile_explains() -> None:
    """The check of the broken models fails (the profile then says where)."""
    for broken in (GraphNet(index=True), GraphNet(across=True)):
        report = check_equivariance(broken.double(), batch(), transforms=NodePermutations(4, seed=0),
                                    inputs=FIELDS, outputs=OUTPUTS)  # fmt: skip
        assert not report.passed


# -- one row an edge ---------------------------------------------------------------------------------


class EdgeVectors(nn.Module):
    """Each edge's vector ``pos[dst] - pos[src]`` (one row an edge of the whole Batch); ``labels`` adds
    the source node's label (its index in the Batch), which a permutation of the nodes changes;
    ``absolute`` gives the source's position instead (a position, not a difference)."""

    def __init__(self, labels: bool = False, absolute: bool = False) -> None:
        super().__init__()
        self.labels, self.absolute = labels, absolute

    def forward(self, pos: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        src, dst = edge_index
        vectors = pos[src] if self.absolute else pos[dst] - pos[src]
        return vectors + (0.01 * src.to(pos.dtype)[:, None] if self.labels else 0)


class Forces(nn.Module):
    """Per node: the sum of its incoming edge vectors, weighted by their length."""

    def forward(self, vectors: torch.Tensor, edge_index: torch.Tensor, nodes: int) -> torch.Tensor:
        weight = torch.exp(-vectors.norm(dim=-1, keepdim=True))
        return torch.zeros(nodes, 3, dtype=vectors.dtype).index_add(0, edge_index[1], weight * vectors)


class EdgeNet(nn.Module):
    def __init__(self, **broken: bool) -> None:
        super().__init__()
        self.edges, self.forces = EdgeVectors(**broken), Forces()

    def forward(self, data: Data) -> torch.Tensor:
        out: torch.Tensor = self.forces(self.edges(data.pos, data.edge_index), data.edge_index, len(data.pos))
        return out


EDGES = {"edges": Vectors(nodes=None), "forces": Vectors(nodes=0)}
"""An edge's vector turns and keeps its row (the edges keep their order); the forces turn and move with
their nodes."""


def test_per_edge_tensors_are_read_one_row_a_graph_and_do_not_move_with_the_nodes() -> None:
    result = profile_equivariance(EdgeNet(), batch(), NodePermutation(2), inputs=FIELDS)
    assert result.passed, result
    assert (result["edges"].field, result["forces"].field) == ("per edge", "per node")
    assert result["edges"].output_shape == (3, 2 * 10, 3)  # the graph of 9 nodes has 10 edges both ways
    broken = profile_equivariance(EdgeNet(labels=True), batch(), NodePermutation(2), inputs=FIELDS)
    assert broken.first_failure is not None
    assert broken.first_failure.name == "edges"
    assert "the per-edge output (edges) changes when the nodes are reordered" in broken.first_failure.fix


def test_edge_vectors_turn_under_a_rotation_with_a_node_permutation() -> None:
    g = Translation([0.5, 1.0, -1.0]) * SO3(1, seed=5)[0] * NodePermutation(7)
    result = profile_equivariance(EdgeNet(), batch(), g, inputs=FIELDS, fields=EDGES)
    assert result.passed, result
    assert all(row.compared for row in result.layers)
    absolute = profile_equivariance(EdgeNet(absolute=True), batch(), g, inputs=FIELDS, fields=EDGES)
    assert absolute.first_failure is not None
    assert absolute.first_failure.name == "edges"
    unnamed = profile_equivariance(EdgeNet(), batch(), g, inputs=FIELDS, fields={"forces": Vectors(nodes=0)})
    assert not unnamed["edges"].compared
    assert "field type not named" in (unnamed["edges"].note or "")
    with pytest.raises(InvalidArgument, match=re.escape(
        "fields['edges'] gives layer 'edges', one row an edge, the field type Vectors(nodes=0), whose points "
        "are on an axis; a permutation of the nodes relabels edge_index but keeps the edges in their order, so "
        "a per-edge tensor has no axis of points: pass nodes=None, e.g. Vectors(nodes=None)"
    )):  # fmt: skip
        profile_equivariance(
            EdgeNet(), batch(), g, inputs=FIELDS, fields={**EDGES, "edges": Vectors(nodes=0)}
        )
