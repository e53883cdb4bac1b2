"""Field types: what they accept and say, ``transform`` over arguments, dicts and torch_geometric graphs,
a field type of one's own, and e3nn's conventions (its l = 1 basis, parity, and the precision of its
Wigner matrices)."""

from __future__ import annotations

import math
import sys
from collections import namedtuple
from typing import Any

import pytest
import torch
from _reference_points import moved, wigner

from equivariance.errors import InvalidArgument
from equivariance.euclidean import O3, SO3, Rotation, Translation
from equivariance.fields import (
    Adjacency,
    EdgeIndex,
    Field,
    Irreps,
    Positions,
    Pseudoscalars,
    Pseudovectors,
    Scalars,
    Vectors,
    transform,
)
from equivariance.permutations import Permutation


def test_field_types_print_compare_and_say_what_they_expect() -> None:
    assert [
        repr(f) for f in (Scalars(), Vectors(nodes=-3), Positions(nodes=0), EdgeIndex(), Adjacency())
    ] == [
        "Scalars()",
        "Vectors(nodes=-3)",
        "Positions(nodes=0)",
        "EdgeIndex()",
        "Adjacency()",
    ]
    assert Scalars() == Scalars(nodes=-2)
    assert Scalars() != Scalars(nodes=None)
    assert Scalars() != Pseudoscalars()
    assert hash(Vectors()) == hash(Vectors())
    assert Positions() != Vectors()
    assert [
        f.expects(3) for f in (Scalars(), Scalars(nodes=None), Vectors(), Vectors(nodes=-3), Vectors(nodes=0))
    ] == [
        "(..., N, C)",
        "(...) with no axis of points",
        "(..., N, 3)",
        "(..., N, C, 3)",
        "(..., 3) with the points on axis 0",
    ]


def test_construction_messages() -> None:
    with pytest.raises(
        InvalidArgument,
        match=r"Vectors keeps its components on the last axis, so nodes=-1 cannot be the axis of points; pass nodes=-2 for \(\.\.\., N, 3\) or nodes=-3 for \(\.\.\., N, C, 3\)",
    ):
        Vectors(nodes=-1)
    with pytest.raises(
        InvalidArgument,
        match=r"Scalars's nodes must be an int \(the axis of points\) or None, found 1.5 \(float\); pass e.g. nodes=-2",
    ):
        Scalars(nodes=1.5)  # type: ignore[arg-type]
    with pytest.raises(
        InvalidArgument,
        match=r"Adjacency's nodes must be a pair of axes, found -2 \(int\); pass e.g. nodes=\(-2, -1\)",
    ):
        Adjacency(nodes=-2)  # type: ignore[arg-type]


class Matrices(Field):
    """Rank-2 Cartesian tensors ``(..., N, 3, 3)``: ``R X Rᵀ`` (a field type of one's own)."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(nodes=-3)

    def moved_by(self, element: Any, x: torch.Tensor) -> torch.Tensor:
        if isinstance(element, Rotation):
            r = element.matrix.to(x.dtype)
            return r @ x @ r.T
        if isinstance(element, Translation):
            return x
        return super().moved_by(element, x)


def test_a_field_type_of_ones_own() -> None:
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    r = SO3(1, seed=0)[0]
    torch.testing.assert_close(r.act(x, Matrices()), r.matrix @ x @ r.matrix.T)
    p = Permutation([2, 0, 3, 1])
    assert torch.equal(p.act(x, Matrices()), x[:, [2, 0, 3, 1]])  # permutations use its nodes axis unasked
    g = r * p
    torch.testing.assert_close(g.act(x, Matrices()), r.act(p.act(x, Matrices()), Matrices()))


# -- transform ------------------------------------------------------------------------------------------


def test_transform_moves_each_part_by_its_field_type() -> None:
    g = Translation([1.0, 2.0, 3.0]) * Permutation([1, 0, 2])
    pos, h = torch.randn(2, 3, 3), torch.randn(2, 3, 4)
    moved_pos, moved_h = transform(g, (pos, h), (Positions(), Scalars()))
    torch.testing.assert_close(moved_pos, pos[:, [1, 0, 2]] + torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(moved_h, h[:, [1, 0, 2]])
    out = transform(g, {"pos": pos, "h": h, "name": "water"}, {"pos": Positions(), "h": None})
    assert out["name"] == "water"
    assert out["h"] is h
    assert not torch.equal(out["pos"], pos)
    Cloud = namedtuple("Cloud", "pos h")
    assert isinstance(transform(g, Cloud(pos, h), (Positions(), None)), Cloud)
    assert transform(g, [pos, h], [None, Scalars()])[0] is pos


def test_transform_messages() -> None:
    g = Permutation([1, 0, 2])
    pos = torch.randn(2, 3, 3)
    with pytest.raises(
        InvalidArgument,
        match=r"args should have 2 parts, one per field type in \(Positions\(\), Scalars\(\)\), found tuple of 1; pass one field type \(or None\) per part",
    ):
        transform(g, (pos,), (Positions(), Scalars()), name="args")
    with pytest.raises(
        InvalidArgument,
        match=r"value\[1\]: Permutation\(\[1, 0, 2\]\) permutes 3 points, but Scalars\(\) of shape \(2, 4, 1\) has 4",
    ):
        transform(g, (pos, torch.randn(2, 4, 1)), (Positions(), Scalars()))
    with pytest.raises(
        InvalidArgument, match=r"value has no 'h' \(it has 'pos'\); give field types only to the parts it has"
    ):
        transform(g, {"pos": pos}, {"pos": Positions(), "h": Scalars()})
    with pytest.raises(
        InvalidArgument,
        match=r"value's tensors 'z' have no field type; give each one \(None to leave it alone\), e.g. \{'z': None\}",
    ):
        transform(g, {"pos": pos, "z": torch.arange(3)}, {"pos": Positions()})
    with pytest.raises(
        InvalidArgument,
        match=r"the field types of value must be a Field, None, or a tuple, list or dict of them, found 'vectors' \(str\)",
    ):
        transform(g, pos, "vectors")
    with pytest.raises(
        InvalidArgument, match=r"value has the field type Positions\(\) but is 3 \(int\); pass a tensor"
    ):
        transform(g, 3, Positions())


def test_transform_of_a_torch_geometric_graph() -> None:
    data_module = pytest.importorskip("torch_geometric.data", reason="torch_geometric is not installed")
    data = data_module.Data(
        x=torch.randn(4, 2), pos=torch.randn(4, 3), z=torch.tensor([1, 6, 8, 1]),
        edge_index=torch.tensor([[0, 1, 2], [1, 2, 3]]), edge_attr=torch.randn(3, 5),
    )  # fmt: skip
    fields = {
        "x": Scalars(nodes=0),
        "pos": Positions(nodes=0),
        "z": Scalars(nodes=0),
        "edge_index": EdgeIndex(),
    }
    g = Permutation([3, 2, 1, 0]) * Rotation.about("z", 90, degrees=True)
    with pytest.raises(
        InvalidArgument,
        match=r"graph's tensors 'edge_attr' have no field type; give each one \(None to leave it alone\), e.g. \{'edge_attr': None\}",
    ):
        transform(g, data, fields, name="graph")
    out = transform(g, data, {**fields, "edge_attr": Scalars(nodes=None)}, name="graph")
    assert type(out) is type(data)
    assert out is not data
    assert out.z.tolist() == [1, 8, 6, 1]
    assert data.z.tolist() == [1, 6, 8, 1]
    assert torch.equal(out.pos[out.edge_index], (data.pos @ g.factors[1].matrix.T.float())[data.edge_index])  # type: ignore[attr-defined]
    assert out.edge_attr is data.edge_attr
    batch = data_module.Batch.from_data_list([data, data])
    batched = transform(
        Rotation.inversion(), batch, {**fields, "edge_attr": None}
    )  # batch and ptr understood
    assert torch.equal(batched.pos, -batch.pos)
    assert torch.equal(batched.batch, batch.batch)


# -- e3nn -------------------------------------------------------------------------------------------------


def test_irreps_need_e3nn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "e3nn.o3", None)  # as if e3nn were not installed
    with pytest.raises(
        InvalidArgument,
        match=r"Irreps needs e3nn, which is not installed; pip install equivariance\[e3nn\] \(or use Scalars, Vectors and Pseudovectors, which need nothing more\)",
    ):
        Irreps("1x1o")


def test_irreps_of_e3nn_act_as_its_wigner_matrices_and_the_reference() -> None:
    pytest.importorskip("e3nn", reason="e3nn is not installed (pip install equivariance[e3nn])")
    irreps = Irreps("2x0e + 1x1o + 1x1e + 1x2e + 1x0o")
    assert (irreps.irreps, irreps.dim, repr(irreps)) == (
        "2x0e+1x1o+1x1e+1x2e+1x0o",
        14,
        "Irreps('2x0e+1x1o+1x1e+1x2e+1x0o')",
    )
    assert Irreps("1x1o", nodes=0) != Irreps("1x1o")
    assert Irreps("1x1o") == Irreps("1o")
    x = torch.randn(2, 4, 14, dtype=torch.float64)
    for r in O3(4, seed=3, include=[Rotation.inversion()]):
        torch.testing.assert_close(r.act(x, irreps), moved(x, r, irreps), rtol=0, atol=1e-13)
        torch.testing.assert_close(
            irreps.representation(r.matrix), wigner(irreps.irreps, r.matrix), rtol=0, atol=1e-13
        )


def test_e3nns_l1_basis_is_xyz_and_its_parity_that_of_vectors_and_pseudovectors() -> None:
    pytest.importorskip("e3nn", reason="e3nn is not installed (pip install equivariance[e3nn])")
    x = torch.randn(3, 5, 3, dtype=torch.float64)
    s = torch.randn(3, 5, 1, dtype=torch.float64)
    for r in O3(6, seed=0, include=[Rotation.inversion(), Rotation.reflection("y")]):
        torch.testing.assert_close(r.act(x, Irreps("1o")), r.act(x, Vectors()), rtol=0, atol=1e-13)
        torch.testing.assert_close(r.act(x, Irreps("1e")), r.act(x, Pseudovectors()), rtol=0, atol=1e-13)
        torch.testing.assert_close(r.act(s, Irreps("0o")), r.act(s, Pseudoscalars()), rtol=0, atol=0)


def test_the_wigner_matrices_are_float64_exact_where_e3nns_defaults_are_not() -> None:
    o3 = pytest.importorskip("e3nn.o3", reason="e3nn is not installed (pip install equivariance[e3nn])")
    assert torch.get_default_dtype() == torch.float32
    r = SO3(1, seed=8)[0].matrix
    ours = Irreps("1o").representation(r)
    assert (ours - r).abs().max() < 1e-14
    assert torch.get_default_dtype() == torch.float32
    # the negative control: e3nn under torch's float32 default makes its generators in float32
    theirs = o3.Irreps("1o").D_from_matrix(r)
    assert theirs.dtype == torch.float64
    assert (theirs - r).abs().max() > 1e-9


def test_the_wigner_matrices_are_e3nns_and_exact_where_its_d_from_matrix_is_not() -> None:
    o3 = pytest.importorskip("e3nn.o3", reason="e3nn is not installed (pip install equivariance[e3nn])")
    irreps = Irreps("1x0e + 1x0o + 1x1o + 1x1e + 1x2e + 1x2o + 1x3o")
    drawn = torch.stack([r.matrix for r in O3(64, seed=1)])
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        theirs = o3.Irreps(irreps.irreps).D_from_matrix(drawn)  # a batch, under the float64 default: exact
        near_pole = Rotation.about("x", 1e-9).matrix  # takes the y axis almost to itself
        their_pole = o3.Irreps(irreps.irreps).D_from_matrix(near_pole.expand(2, 3, 3))[0]
    finally:
        torch.set_default_dtype(previous)
    assert (
        irreps.representation(drawn) - theirs
    ).abs().max() < 1e-13  # the same matrices: e3nn's conventions
    for r in (near_pole, Rotation.about([0.0, 1.0, 1.0], math.pi).matrix, -Rotation.about("x", 1e-5).matrix):
        assert (irreps.representation(r) - wigner(irreps.irreps, r)).abs().max() < 1e-13, r
    # the negative control: e3nn's acos near its pole
    assert (their_pole - wigner(irreps.irreps, near_pole)).abs().max() > 1e-10


def test_one_matrix_is_turned_into_wigner_matrices_as_exactly_as_a_batch() -> None:
    o3 = pytest.importorskip("e3nn.o3", reason="e3nn is not installed (pip install equivariance[e3nn])")
    one = SO3(4, seed=0)[1].matrix  # an Euler angle of about 0.0174: matrix_exp's one-matrix path
    assert (Irreps("1o").representation(one) - one).abs().max() < 1e-14
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        single = float((o3.Irreps("1o").D_from_matrix(one) - one).abs().max())
    finally:
        torch.set_default_dtype(previous)
    if single < 1e-14:
        pytest.skip(
            f"the negative control: this torch ({torch.__version__}) exponentiates one matrix exactly"
        )
    assert single > 1e-13  # torch 2.13's one-matrix path, off by about 1e-12


def test_irreps_messages() -> None:
    pytest.importorskip("e3nn", reason="e3nn is not installed (pip install equivariance[e3nn])")
    with pytest.raises(
        InvalidArgument,
        match=r"Irreps takes an e3nn irreps string such as '2x0e \+ 1x1o', found '1x1q' \(str\)",
    ):
        Irreps("1x1q")
    with pytest.raises(
        InvalidArgument,
        match=r"Irreps\('1x1o'\) expects a tensor \(\.\.\., N, 3\) with its 3 components last, found shape \(2, 5\); pass features whose last axis holds the 3 components of 1x1o",
    ):
        Rotation.identity().act(torch.zeros(2, 5), Irreps("1x1o"))
    with pytest.raises(
        InvalidArgument,
        match=r"Irreps\('1x1o'\) are representations of O\(3\), and Rotation\(30.0° in 2-D\) acts in 2-D; check e3nn features with 3-D rotations \(SO3, O3\)",
    ):
        Rotation.planar(math.radians(30)).act(torch.zeros(2, 3), Irreps("1x1o"))
