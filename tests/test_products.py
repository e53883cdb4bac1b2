"""Products of elements of different kinds: their simplest form, the order they act in, inverses,
printing, and the batched path of products of one structure."""

from __future__ import annotations

import pytest
import torch
from _reference_points import moved

from equivariance.actions import Action, Identity
from equivariance.errors import InvalidArgument
from equivariance.euclidean import E3, Rotation, Translation
from equivariance.fields import EdgeIndex, Positions, Scalars, Vectors
from equivariance.permutations import Permutation
from equivariance.products import Product

R = Rotation.about("z", 90, degrees=True)
T = Translation([1.0, 0.0, 0.0])
P = Permutation([1, 2, 0])


def test_kinds_compose_within_and_make_products_across() -> None:
    assert isinstance(R * R, Rotation)
    assert isinstance(T * T, Translation)
    assert isinstance(P * P, Permutation)
    g = T * R
    assert isinstance(g, Product)
    assert g.factors == (T, R)
    assert (g * P).factors == (T, R, P)  # type: ignore[union-attr]
    assert (R * g).factors == (R, T, R)  # type: ignore[union-attr]
    assert (g * R).factors == (T, R * R)  # type: ignore[union-attr]  # neighbours of one kind compose
    assert Identity() * g == g
    assert g * Identity() == g
    assert Product.of(P, Identity(), P.inverse()) == Identity()
    assert Product.of(R) is R


def test_the_innermost_factor_acts_first() -> None:
    p = torch.tensor([[1.0, 0.0, 0.0]])
    assert (T * R).act(p, Positions()).tolist() == [[1.0, 1.0, 0.0]]  # rotate, then move
    assert (R * T).act(p, Positions()).tolist() == [[0.0, 2.0, 0.0]]  # move, then rotate
    assert (T * R).act(p, Vectors()).tolist() == [[0.0, 1.0, 0.0]]  # vectors do not move
    x = torch.randn(2, 3, 3, dtype=torch.float64)
    g = T * R * P
    torch.testing.assert_close(g.act(x, Positions()), moved(x, g, Positions()), rtol=0, atol=1e-15)
    edges = torch.tensor([[0, 1], [1, 2]])
    assert torch.equal(g.act(edges, EdgeIndex()), P.act(edges, EdgeIndex()))


def test_inverse_equality_and_printing() -> None:
    g = T * R * P
    x = torch.randn(2, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(g.inverse().act(g.act(x, Positions()), Positions()), x, rtol=0, atol=1e-15)
    assert (g * g.inverse()).is_identity or isinstance(g * g.inverse(), Identity)
    assert g == T * R * P
    assert hash(g) == hash(T * R * P)
    assert g != P * T * R
    assert (
        repr(g)
        == "Translation([1, 0, 0]) * Rotation(90.0° about [0.00, 0.00, 1.00]) * Permutation([1, 2, 0])"
    )
    assert g.to_json() == {"product": [T.to_json(), R.to_json(), P.to_json()]}  # type: ignore[union-attr]


def test_the_batched_path_of_products_of_one_structure() -> None:
    x = torch.randn(3, 4, 3, dtype=torch.float64)
    motions = [g * Permutation.cycle(4, k % 3 + 1) for k, g in enumerate(E3(4, seed=0))]
    batched = Product.batched(x, motions, Positions())
    assert batched is not None
    rows, which = torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 2, 3])
    expected = torch.stack([motions[w].act(x[r], Positions()) for r, w in zip(rows.tolist(), which.tolist())])
    torch.testing.assert_close(batched.take(rows, which), expected, rtol=0, atol=1e-14)
    mixed = [*E3(2, seed=0), R * P]
    assert Product.batched(x, mixed, Positions()) is None  # different structures: one element at a time


class Negate(Action):
    """An element of one's own that writes to the tensor it is given."""

    def act(self, x: torch.Tensor, where: object) -> torch.Tensor:
        return x.mul_(-1)


def test_a_factor_that_writes_to_its_tensor_leaves_the_callers_alone() -> None:
    x = torch.ones(1, 3, 3)
    moved = (R * Negate()).act(x, Vectors())  # the factor of one's own acts first, on x itself
    assert torch.equal(x, torch.ones(1, 3, 3))
    torch.testing.assert_close(moved, -R.act(x, Vectors()))


def test_messages() -> None:
    with pytest.raises(
        InvalidArgument, match=r"a Product needs two or more factors, found 1; use the element itself"
    ):
        Product(R)
    with pytest.raises(
        InvalidArgument, match=r"a Product's factors must be group elements \(Action\), found 3 \(int\)"
    ):
        Product(R, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        R * 3  # type: ignore[operator]
    with pytest.raises(
        InvalidArgument, match=r"Scalars\(\) expects a tensor \(\.\.\., N, C\) but found shape \(3,\)"
    ):
        (R * P).act(torch.zeros(3), Scalars())
