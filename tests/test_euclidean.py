"""Rotations, reflections and translations: construction, how they act on each field type (held against
the reference's own matrix products), the batched path, the samples and their Haar moments, the messages."""

from __future__ import annotations

import math

import pytest
import torch
from _reference_points import moved

from equivariance.actions import Grid
from equivariance.errors import InvalidArgument
from equivariance.euclidean import E3, O2, O3, SE3, SO2, SO3, Rotation, Translation, haar
from equivariance.fields import (
    Adjacency,
    EdgeIndex,
    Field,
    Positions,
    Pseudoscalars,
    Pseudovectors,
    Scalars,
    Vectors,
)
from equivariance.products import Product

EYE3 = torch.eye(3, dtype=torch.float64)

# field types and tensors of their shape: a batch of 2 clouds of 5 points
FIELDS = {
    "scalars": (Scalars(), (2, 5, 4)),
    "pooled scalars": (Scalars(nodes=None), (2, 4)),
    "pseudoscalars": (Pseudoscalars(), (2, 5, 1)),
    "vectors": (Vectors(), (2, 5, 3)),
    "several vectors a point": (Vectors(nodes=-3), (2, 5, 2, 3)),
    "pseudovectors": (Pseudovectors(), (2, 5, 3)),
    "positions": (Positions(), (2, 5, 3)),
    "adjacency": (Adjacency(), (2, 5, 5)),
}


def tensor(shape: tuple[int, ...], dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


# -- construction --------------------------------------------------------------------------------------


def test_rotations_by_name_are_exact_where_they_can_be() -> None:
    assert Rotation.about("z", 90, degrees=True).matrix.tolist() == [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
    assert Rotation.about("y", -180, degrees=True).matrix.tolist() == [[-1, 0, 0], [0, 1, 0], [0, 0, -1]]
    assert Rotation.planar(270, degrees=True).matrix.tolist() == [[0, 1], [-1, 0]]
    assert Rotation.reflection("x").matrix.tolist() == [[-1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert torch.equal(Rotation.inversion().matrix, -EYE3)
    assert Rotation.identity().is_identity
    assert not Rotation.inversion().is_identity
    about = Rotation.about(
        [1.0, 1.0, 1.0], 2 * math.pi / 3
    )  # a third of a turn about the diagonal cycles x, y, z
    torch.testing.assert_close(about.matrix, torch.tensor([[0, 0, 1], [1, 0, 0], [0, 1, 0]]).double())


def test_a_float32_matrix_is_made_orthogonal_and_a_float64_one_is_kept() -> None:
    r64 = SO3(1, seed=3)[0].matrix
    r32 = (-r64).float()  # with the inversion: det -1
    made = Rotation(r32)
    assert (made.matrix @ made.matrix.T - EYE3).abs().max() < 1e-15
    assert (made.matrix - r32.double()).abs().max() < 1e-6
    assert made.det == -1
    assert torch.equal(
        Rotation(r64).matrix, r64
    )  # already orthogonal to float64's precision: kept bit for bit


def test_det_dim_equality_and_hash() -> None:
    a, b = Rotation.about("z", 30, degrees=True), Rotation.about("z", 30, degrees=True)
    assert a == b
    assert hash(a) == hash(b)
    assert a != Rotation.about("z", 31, degrees=True)
    assert (a.dim, a.det, Rotation.reflection([0.0, 1.0]).dim, Rotation.reflection([0.0, 1.0]).det) == (
        3,
        1,
        2,
        -1,
    )
    assert Translation([1.0, 2.0]) == Translation([1, 2])
    assert Translation([1.0, 2.0]) != Translation([1.0, 2.0, 0.0])
    assert a != Translation([1.0, 2.0, 3.0])


@pytest.mark.parametrize(
    ("element", "shown", "json"),
    [
        (Rotation.identity(), "Rotation(identity)", {"rotation": EYE3.tolist()}),
        (Rotation.inversion(), "Rotation(inversion)", {"rotation": (-EYE3).tolist()}),
        (Rotation.about("x", 45, degrees=True), "Rotation(45.0° about [1.00, 0.00, 0.00])", None),
        (Rotation.about("z", -45, degrees=True), "Rotation(45.0° about [0.00, 0.00, -1.00])", None),
        (Rotation.about("z", 180, degrees=True), "Rotation(180.0° about [0.00, 0.00, 1.00])", None),
        (Rotation.reflection("y"), "Rotation(mirror normal to [0.00, 1.00, 0.00])", None),
        (
            Rotation.inversion() * Rotation.about("x", 30, degrees=True),
            "Rotation(inversion · 30.0° about [1.00, 0.00, 0.00])",
            None,
        ),
        (Rotation.planar(30, degrees=True), "Rotation(30.0° in 2-D)", None),
        (Rotation.identity(2), "Rotation(identity, 2-D)", None),
        (Rotation.reflection([1.0, 0.0]), "Rotation(mirror across the line at 90.0°)", None),
        (Translation([0.5, 0.0, -1.25]), "Translation([0.5, 0, -1.25])", {"translation": [0.5, 0.0, -1.25]}),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_what_elements_print(element: object, shown: str, json: object) -> None:
    assert repr(element) == str(element) == shown
    if json is not None:
        assert element.to_json() == json  # type: ignore[attr-defined]


# -- acting ----------------------------------------------------------------------------------------------


ELEMENTS = [
    SO3(1, seed=0)[0],
    Rotation.inversion() * SO3(1, seed=1)[0],
    Rotation.reflection([1.0, -2.0, 0.5]),
    Translation([0.3, -1.0, 2.0]),
    Translation([0.3, -1.0, 2.0]) * SO3(1, seed=2)[0],
]


@pytest.mark.parametrize("field_name", FIELDS)
@pytest.mark.parametrize("element", ELEMENTS, ids=repr)
def test_acting_matches_the_references_own_matrix_products(element: object, field_name: str) -> None:
    field, shape = FIELDS[field_name]
    x = tensor(shape)
    got = element.act(x, field)  # type: ignore[attr-defined]
    torch.testing.assert_close(got, moved(x, element, field), rtol=0, atol=1e-14)


def test_what_moves_and_what_stays() -> None:
    r, t = Rotation.inversion(), Translation([1.0, 2.0, 3.0])
    x = tensor((2, 5, 3))
    assert torch.equal(r.act(x, Vectors()), -x)
    assert torch.equal(r.act(x, Pseudovectors()), x)
    assert torch.equal(r.act(x, Pseudoscalars()), -x)
    assert r.act(x, Scalars()) is x
    assert torch.equal(t.act(x, Positions()), x + torch.tensor([1.0, 2.0, 3.0]).double())
    for field in (Vectors(), Pseudovectors(), Scalars(), Pseudoscalars()):
        assert t.act(x, field) is x
    edges = torch.tensor([[0, 1], [1, 2]])
    assert r.act(edges, EdgeIndex()) is edges
    assert t.act(edges, EdgeIndex()) is edges


def test_a_float32_tensor_is_transformed_in_float64_and_rounded_once() -> None:
    r = SO3(1, seed=4)[0]
    x = tensor((64, 5, 3), torch.float32) * 100
    exact = torch.einsum("ij,...j->...i", r.matrix, x.double())
    got = r.act(x, Vectors())
    assert got.dtype == torch.float32
    # one rounding of the exact result: within half a float32 ulp of it, element by element
    assert ((got.double() - exact).abs() <= exact.abs() * 2**-24 + 1e-30).all()
    # the float32 matrix product, the way a test written by hand turns forces, rounds more
    by_hand = x @ r.matrix.float().T
    assert (by_hand.double() - exact).abs().max() > (got.double() - exact).abs().max()


def test_acting_keeps_the_autograd_graph() -> None:
    x = tensor((1, 4, 3)).requires_grad_()
    (Rotation.about("x", 1.0).act(x, Positions()) ** 2).sum().backward()
    assert x.grad is not None
    assert torch.allclose(x.grad, 2 * x.detach())


# -- the batched path ------------------------------------------------------------------------------------


@pytest.mark.parametrize("field_name", FIELDS)
def test_the_batched_path_matches_acting_one_element_at_a_time(field_name: str) -> None:
    field, shape = FIELDS[field_name]
    x = tensor(shape)
    rows, which = torch.tensor([0, 1, 1, 0, 1]), torch.tensor([0, 1, 2, 3, 4])
    for kind, elements in ((Rotation, list(O3(5, seed=1))), (Product, list(E3(5, seed=2)))):
        batched = kind.batched(x, elements, field)
        assert batched is not None
        got = batched.take(rows, which)
        expected = torch.stack([elements[w].act(x[r], field) for r, w in zip(rows.tolist(), which.tolist())])
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-14)
        assert got.data_ptr() != x.data_ptr()


def test_the_batched_path_declines_what_has_no_axis_of_rows() -> None:
    rotations = list(SO3(2, seed=0))
    assert Rotation.batched(torch.tensor([[0, 1], [1, 0]]), rotations, EdgeIndex()) is None
    assert Rotation.batched(tensor((5, 3)), rotations, Vectors(nodes=0)) is None
    assert Rotation.batched(tensor((5, 3)), rotations, Grid.of_input(1)) is None
    assert Translation.batched(tensor((5, 3)), [Translation([1.0, 0.0, 0.0])], Positions(nodes=0)) is None


# -- samples ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sample", "dim", "dets"), [(SO2, 2, {1}), (O2, 2, {1, -1}), (SO3, 3, {1}), (O3, 3, {1, -1})]
)
def test_rotation_samples(sample: type[SO3], dim: int, dets: set[int]) -> None:
    drawn = sample(200, seed=5)
    assert len(drawn) == 200
    assert {r.dim for r in drawn} == {dim}
    assert {r.det for r in drawn} == dets
    assert drawn == sample(200, seed=5)
    assert list(drawn) != list(sample(200, seed=6))
    for r in drawn[:20]:
        assert (r.matrix @ r.matrix.T - torch.eye(dim, dtype=torch.float64)).abs().max() < 1e-14


def test_included_elements_come_first() -> None:
    named = [Rotation.about("z", 90, degrees=True), Rotation.identity()]
    drawn = SO3(3, seed=0, include=named)
    assert list(drawn[:2]) == named
    assert len(drawn) == 5
    assert drawn[2:] == list(SO3(3, seed=0))
    assert repr(drawn) == (
        "SO3(3, seed=0, include=[Rotation(90.0° about [0.00, 0.00, 1.00]), Rotation(identity)])"
    )


def test_motions_rotate_then_translate() -> None:
    for sample, dets in ((SE3, {1}), (E3, {1, -1})):
        drawn = sample(40, seed=1, scale=2.0)
        assert repr(drawn) == f"{sample.__name__}(40, seed=1, scale=2)"
        dets_seen = set()
        for g in drawn:
            assert isinstance(g, Product)
            t, r = g.factors
            assert isinstance(t, Translation)
            assert isinstance(r, Rotation)
            dets_seen.add(r.det)
            p = tensor((3, 3))
            torch.testing.assert_close(g.act(p, Positions()), p @ r.matrix.T + t.vector)
        assert dets_seen == dets
    spread = torch.stack([g.factors[0].vector for g in SE3(2000, seed=0, scale=2.0)])  # type: ignore[attr-defined]
    assert abs(float(spread.std()) - 2.0) < 0.1
    assert abs(float(spread.mean())) < 0.1


def moments(matrices: torch.Tensor) -> tuple[float, float]:
    """How far the first and second moments of rotation matrices are from Haar's on SO(3):
    ``E[R] = 0`` and ``E[vec(R) vec(R)ᵀ] = I / 3``."""
    flat = matrices.reshape(len(matrices), 9)
    first = float(flat.mean(0).abs().max())
    second = float((flat.T @ flat / len(flat) - torch.eye(9, dtype=flat.dtype) / 3).abs().max())
    return first, second


def test_so3_draws_have_the_haar_moments_and_naive_euler_angles_do_not() -> None:
    matrices = haar(4000, 3, False, torch.Generator().manual_seed(0))
    first, second = moments(matrices)
    assert first < 0.04, first  # each entry's standard error is about 0.009
    assert second < 0.04, second
    # the negative control: ZYZ Euler angles drawn uniformly are not uniform on SO(3)
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.rand(4000, generator=g, dtype=torch.float64) * math.pi * k for k in (2, 1, 2))
    naive = about_z(a) @ about_y(b) @ about_z(c)
    assert moments(naive)[1] > 0.1  # E[R_zz^2] = E[cos^2 b] = 1/2, not 1/3


def about_z(t: torch.Tensor) -> torch.Tensor:
    c, s, o, i = torch.cos(t), torch.sin(t), torch.zeros_like(t), torch.ones_like(t)
    return torch.stack(
        [torch.stack([c, -s, o], -1), torch.stack([s, c, o], -1), torch.stack([o, o, i], -1)], -2
    )


def about_y(t: torch.Tensor) -> torch.Tensor:
    c, s, o, i = torch.cos(t), torch.sin(t), torch.zeros_like(t), torch.ones_like(t)
    return torch.stack(
        [torch.stack([c, o, s], -1), torch.stack([o, i, o], -1), torch.stack([-s, o, c], -1)], -2
    )


def test_o3_draws_an_inversion_half_of_the_time_and_so2_a_uniform_angle() -> None:
    o3 = haar(4000, 3, True, torch.Generator().manual_seed(1))
    share = float((torch.linalg.det(o3) < 0).double().mean())
    assert abs(share - 0.5) < 0.04
    so2 = haar(4000, 2, False, torch.Generator().manual_seed(2))
    c, s = so2[:, 0, 0], so2[:, 1, 0]
    assert max(abs(float(c.mean())), abs(float(s.mean())), abs(float((c * c).mean()) - 0.5)) < 0.04


# -- messages --------------------------------------------------------------------------------------------


def test_messages() -> None:
    r = Rotation.about("z", 1.0)
    with pytest.raises(
        InvalidArgument,
        match=r"Vectors\(\) expects a tensor \(\.\.\., N, 3\) with its 3 components last, found shape \(3, 4\); pass the 3 components on the last axis, or Scalars\(\) for features that do not turn",
    ):
        r.act(torch.randn(3, 4), Vectors())
    with pytest.raises(
        InvalidArgument,
        match=r"Vectors\(\) expects a tensor \(\.\.\., N, 3\) but found shape \(3,\), which has no axis -2 of points; pass nodes= the axis of the points, or nodes=None for a tensor without one",
    ):
        r.act(torch.randn(3), Vectors())
    with pytest.raises(
        InvalidArgument,
        match=r"Positions\(\) holds real numbers that turn, found a tensor of torch.int64; pass a floating-point tensor",
    ):
        r.act(torch.zeros(2, 3, dtype=torch.long), Positions())
    with pytest.raises(
        InvalidArgument,
        match=r"acts on tensors of points by their field type, not on a grid; pass inputs= the field type of x \(or of each argument, x a tuple\) and outputs= that of each output",
    ):
        r.act(torch.randn(2, 3), Grid.of_input(1))
    with pytest.raises(InvalidArgument, match=r"was given the class Vectors; pass Vectors\(\)"):
        r.act(torch.randn(2, 3), Vectors)
    with pytest.raises(
        InvalidArgument,
        match=r"acts on tensors of points by their field type, found 'vectors' \(str\); pass one",
    ):
        r.act(torch.randn(2, 3), "vectors")
    with pytest.raises(
        InvalidArgument,
        match=r"Positions\(\) expects a tensor \(\.\.\., N, 2\) with its 2 components last, found shape \(4, 3\)",
    ):
        Translation([1.0, 2.0]).act(torch.randn(4, 3), Positions())
    with pytest.raises(
        InvalidArgument,
        match=r"R Rᵀ differs from the identity by 3.0e\+00 \(more than 0.0001\); pass an orthogonal matrix, e.g. torch.linalg.qr\(a\).Q",
    ):
        Rotation([[1.0, 0.0], [0.0, 2.0]])
    with pytest.raises(
        InvalidArgument,
        match=r"a Rotation takes an orthogonal 2x2 or 3x3 matrix of finite numbers, found a tensor of shape \(4, 4\); pass e.g. Rotation.about\('z', 30, degrees=True\)",
    ):
        Rotation(torch.eye(4))
    with pytest.raises(
        InvalidArgument,
        match=r"axis must be a nonzero vector of 3 finite numbers \(or 'x', 'y', 'z'\), found \[0, 0, 0\]",
    ):
        Rotation.about([0, 0, 0], 1.0)
    with pytest.raises(
        InvalidArgument, match=r"a 3-D and a 2-D rotation do not compose; use rotations of one dimension"
    ):
        r * Rotation.planar(1.0)
    with pytest.raises(
        InvalidArgument,
        match=r"a Translation takes a vector of 2 or 3 finite numbers, found \[1.0\] \(list\) of shape \(1,\)",
    ):
        Translation([1.0])
    with pytest.raises(
        InvalidArgument,
        match=r"does not act on Matrices\(\): it knows Scalars, .*; define moved_by in Matrices to say how it moves",
    ):
        r.act(torch.randn(3, 3), Matrices())


class Matrices(Field):
    """A field type no element knows."""


def test_sample_messages() -> None:
    with pytest.raises(
        InvalidArgument,
        match=r"SO3 holds 3-D rotations \(det \+1\); include\[0\] is Rotation\(inversion\) \(Rotation\); use O3 for reflections",
    ):
        SO3(2, include=[Rotation.inversion()])
    with pytest.raises(
        InvalidArgument, match=r"SO2 holds 2-D rotations \(det \+1\); include\[0\] is Rotation\(identity\)"
    ):
        SO2(2, include=[Rotation.identity()])
    with pytest.raises(
        InvalidArgument,
        match=r"SE3 holds rotations and translations of 3-D space; include\[0\] is 'x' \(str\)",
    ):
        SE3(2, include=["x"])
    with pytest.raises(
        InvalidArgument,
        match=r"scale must be a positive number \(the standard deviation of the translations\), found 0.0 \(float\)",
    ):
        E3(2, scale=0.0)
    assert E3(1, include=[Translation([1.0, 0.0, 0.0]) * Rotation.inversion()])[0].is_identity is False
