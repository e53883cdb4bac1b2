"""Permutations of points and nodes: what they do to each field type (held against the reference's index
loops), edges that join the same points after a relabelling, the batched gather, uniform draws, messages."""

from __future__ import annotations

import pytest
import torch
from _reference_points import moved

from equivariance.errors import InvalidArgument
from equivariance.fields import Adjacency, EdgeIndex, Positions, Scalars, Vectors, transform
from equivariance.permutations import NodePermutation, NodePermutations, Permutation, Permutations

P = Permutation([3, 0, 4, 1, 2])

FIELDS = {
    "scalars": (Scalars(), (2, 5, 4)),
    "nodes first": (Scalars(nodes=0), (5, 4)),
    "pooled": (Scalars(nodes=None), (2, 4)),
    "several vectors a point": (Vectors(nodes=-3), (2, 5, 2, 3)),
    "positions": (Positions(), (2, 5, 3)),
    "adjacency": (Adjacency(), (2, 5, 5)),
    "edge features": (Adjacency(nodes=(-3, -2)), (2, 5, 5, 2)),
}


@pytest.mark.parametrize("name", FIELDS)
def test_acting_matches_the_references_index_loops(name: str) -> None:
    field, shape = FIELDS[name]
    x = torch.randn(shape, dtype=torch.float64)
    assert torch.equal(P.act(x, field), moved(x, P, field))


def test_indexing_convention() -> None:
    x = torch.arange(5.0)[:, None]
    assert P.act(x, Scalars()).flatten().tolist() == [3.0, 0.0, 4.0, 1.0, 2.0]  # x[indices]
    assert P.indices == (3, 0, 4, 1, 2)
    assert P.n == 5
    a = torch.arange(25.0).reshape(5, 5)
    assert torch.equal(P.act(a, Adjacency()), a[list(P.indices)][:, list(P.indices)])


def test_relabelled_edges_join_the_same_points() -> None:
    pos = torch.randn(5, 3)
    edges = torch.tensor([[0, 1, 2, 4, 4], [1, 2, 3, 0, 4]])
    moved_pos, moved_edges = P.act(pos, Positions(nodes=0)), P.act(edges, EdgeIndex())
    assert torch.equal(moved_pos[moved_edges], pos[edges])  # each edge's ends are the same points
    assert torch.equal(moved_edges, moved(edges, P, EdgeIndex()))
    # the adjacency of the relabelled edges is the adjacency of the edges, permuted
    adjacency = torch.zeros(5, 5)
    adjacency[edges[0], edges[1]] = 1
    relabelled = torch.zeros(5, 5)
    relabelled[moved_edges[0], moved_edges[1]] = 1
    assert torch.equal(relabelled, P.act(adjacency, Adjacency()))


def test_named_permutations_and_the_group() -> None:
    assert Permutation.cycle(4, 1).indices == (3, 0, 1, 2)
    assert Permutation.cycle(4, -1).indices == (1, 2, 3, 0)
    assert Permutation.swap(4, 0, 3).indices == (3, 1, 2, 0)
    assert Permutation.identity(3).is_identity
    assert P * P.inverse() == Permutation.identity(5)
    assert (P.inverse() * P).is_identity
    x = torch.randn(5, 2)
    q = Permutation.cycle(5, 2)
    assert torch.equal((P * q).act(x, Scalars()), P.act(q.act(x, Scalars()), Scalars()))
    assert Permutation(torch.tensor([3, 0, 4, 1, 2])) == P
    assert hash(P) == hash(Permutation([3, 0, 4, 1, 2]))
    assert P.to_json() == {"permutation": [3, 0, 4, 1, 2]}
    assert (
        repr(Permutation(list(range(20))))
        == "Permutation([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ..., 19]; 20 points)"
    )


@pytest.mark.parametrize("name", [n for n in FIELDS if n != "nodes first"])
def test_the_batched_gather_matches_acting_one_permutation_at_a_time(name: str) -> None:
    field, shape = FIELDS[name]
    x = torch.randn(shape)
    perms = list(Permutations(4, n=5, seed=1))
    batched = Permutation.batched(x, perms, field)
    assert batched is not None
    rows, which = torch.tensor([0, 1, 0, 1]), torch.tensor([3, 2, 1, 0])
    expected = torch.stack([perms[w].act(x[r], field) for r, w in zip(rows.tolist(), which.tolist())])
    assert torch.equal(batched.take(rows, which), expected)


def test_the_batched_gather_declines_what_has_no_axis_of_rows() -> None:
    perms = list(Permutations(2, n=5, seed=0))
    assert Permutation.batched(torch.randn(5, 4), perms, Scalars(nodes=0)) is None
    assert Permutation.batched(torch.tensor([[0, 1], [1, 2]]), perms, EdgeIndex()) is None


def test_draws_are_uniform_and_seeded() -> None:
    drawn = Permutations(2400, n=4, seed=0)
    counts = torch.zeros(4, 4)
    for p in drawn:
        counts[torch.arange(4), torch.tensor(p.indices)] += 1
    assert ((counts / len(drawn) - 0.25).abs() < 0.04).all(), counts  # each point lands anywhere alike
    pairs = {p.indices[:2] for p in drawn}
    assert len(pairs) == 12  # every ordered pair of the first two places is drawn
    assert drawn == Permutations(2400, n=4, seed=0)
    assert list(drawn)[:5] != list(Permutations(5, n=4, seed=1))
    assert repr(Permutations(3, n=4)) == "Permutations(3, seed=0, n=4)"


def test_messages() -> None:
    with pytest.raises(
        InvalidArgument,
        match=r"\[0, 0, 2\] is not a permutation of 0..2: 0 appears more than once; pass each index once",
    ):
        Permutation([0, 0, 2])
    with pytest.raises(InvalidArgument, match=r"\[0, 3, 1\] is not a permutation of 0..2: 3 is not in 0..2"):
        Permutation([0, 3, 1])
    with pytest.raises(
        InvalidArgument,
        match=r"a Permutation takes the indices 0..n-1 once each, as a list or 1-D integer tensor, found \[0.0, 1.0\]",
    ):
        Permutation([0.0, 1.0])
    with pytest.raises(
        InvalidArgument,
        match=r"Permutation\(\[3, 0, 4, 1, 2\]\) permutes 5 points, but Scalars\(\) of shape \(2, 4, 3\) has 4 on its axis of points \(-2\); draw permutations of 4 points, or pass nodes= the axis of the points",
    ):
        P.act(torch.randn(2, 4, 3), Scalars())
    with pytest.raises(
        InvalidArgument,
        match=r"EdgeIndex\(\) holds node 7 \(and 0\), but Permutation\(\[3, 0, 4, 1, 2\]\) permutes the nodes 0..4; draw permutations of all the graph's nodes",
    ):
        P.act(torch.tensor([[0, 7]]).T.reshape(2, 1), EdgeIndex())
    with pytest.raises(
        InvalidArgument,
        match=r"EdgeIndex\(\) holds a tensor \(2, E\) of integer node indices, found shape \(3, 2\) of torch.int64",
    ):
        P.act(torch.zeros(3, 2, dtype=torch.long), EdgeIndex())
    with pytest.raises(
        InvalidArgument,
        match=r"Adjacency\(\) expects the node axes \(-2, -1\) of one size, found shape \(5, 4\); pass a square adjacency",
    ):
        P.act(torch.zeros(5, 4), Adjacency())
    with pytest.raises(InvalidArgument, match=r"permutations of 5 and 3 points do not compose"):
        P * Permutation([0, 1, 2])
    with pytest.raises(
        InvalidArgument,
        match=r"Permutations\(n=4\) holds permutations of 4 points; include\[0\] is Permutation\(\[3, 0, 4, 1, 2\]\)",
    ):
        Permutations(2, n=4, include=[P])
    with pytest.raises(InvalidArgument, match=r"n must be at least 1 \(the number of points\), found 0"):
        Permutations(2, n=0)


# -- permutations of graphs of any size ----------------------------------------------------------------


def test_a_node_permutation_is_one_permutation_of_each_size() -> None:
    g, h = NodePermutation(seed=3), NodePermutation(seed=4)
    for n in (1, 5, 9, 12):
        assert g.sized(n).n == n
        assert g.sized(n) == Permutation(torch.randperm(n, generator=torch.Generator().manual_seed(3)))
        assert (g * h).sized(n) == g.sized(n) * h.sized(n)  # h first, then g, as for Permutation
        assert g.inverse().sized(n) == g.sized(n).inverse()
        x = torch.randn(2, n, 3, dtype=torch.float64)
        assert torch.equal(g.act(x, Vectors()), g.sized(n).act(x, Vectors()))
    assert (g * g.inverse()).is_identity
    assert not g.is_identity
    assert g == NodePermutation(3)
    assert g != h
    assert hash(g) == hash(NodePermutation(3))
    assert repr(g.inverse() * h) == "NodePermutation(seed=3).inverse() * NodePermutation(seed=4)"
    assert g.to_json() == {"node_permutation": [{"seed": 3, "inverse": False}]}
    rows = torch.randn(6, 7, 2)
    batched = NodePermutation.batched(rows, [g, h], Scalars())
    assert batched is not None
    taken = batched.take(torch.tensor([0, 5]), torch.tensor([1, 0]))
    assert torch.equal(taken, torch.stack([h.act(rows[0], Scalars()), g.act(rows[5], Scalars())]))
    with pytest.raises(
        InvalidArgument, match=r"which an edge_index alone does not give; move the whole graph"
    ):
        g.act(torch.tensor([[0, 1], [1, 0]]), EdgeIndex())


def test_a_batch_of_graphs_is_permuted_graph_by_graph() -> None:
    """transform() moves each graph of a Batch on its own nodes: no node leaves its graph, and every
    edge joins the same two atoms; a Permutation of one size is refused by a graph of another."""
    data = pytest.importorskip("torch_geometric.data")
    graphs = []
    for n in (5, 9, 12):
        src = torch.arange(n)
        graphs.append(data.Data(x=torch.arange(n, dtype=torch.float64)[:, None] + 100 * n,
                                edge_index=torch.stack([src, (src + 1) % n])))  # fmt: skip
    batch = data.Batch.from_data_list(graphs)
    fields = {"x": Scalars(nodes=0), "edge_index": EdgeIndex()}
    g = NodePermutation(seed=0)
    moved_batch = transform(g, batch, fields)
    assert torch.equal(moved_batch.batch, batch.batch)  # every node stays in its graph
    for k, n in enumerate((5, 9, 12)):
        graph, moved_graph = batch.get_example(k), moved_batch.get_example(k)
        assert torch.equal(moved_graph.x, graph.x[list(g.sized(n).indices)])
        assert torch.equal(moved_graph.x[moved_graph.edge_index], graph.x[graph.edge_index])
    with pytest.raises(
        InvalidArgument, match=r"x \(graph 1\)\.(x|edge_index): .*Permutation\(\[4, 0, 1, 2, 3\]\) permutes"
    ):
        transform(Permutation.cycle(5), batch, fields, name="x")


def test_node_permutations_are_seeded() -> None:
    sample = NodePermutations(8, seed=2)
    assert sample == NodePermutations(8, seed=2)
    assert sample != NodePermutations(8, seed=3)
    assert len({g.sized(6) for g in sample}) > 4
    assert repr(NodePermutations(2, seed=1)) == "NodePermutations(2, seed=1)"
    with pytest.raises(InvalidArgument, match=r"NodePermutations holds NodePermutations"):
        NodePermutations(2, include=[Permutation.cycle(3)])
