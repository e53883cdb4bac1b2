"""Property tests of the group laws of rotations, reflections, translations, permutations and their
products, on every field type: composition acts as acting twice, associativity, the identity, inverses;
and the elements' matrices stay orthogonal with det ±1."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from equivariance.actions import Action, Identity
from equivariance.euclidean import Rotation, Translation
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
)
from equivariance.permutations import Permutation
from equivariance.strategies import graphs, permutations, point_clouds, rotations, translations

FIELDS: tuple[Field, ...] = (
    Scalars(),
    Scalars(nodes=None),
    Pseudoscalars(),
    Vectors(),
    Pseudovectors(),
    Positions(),
    Vectors(nodes=-3),
    Adjacency(),
)
TOLERANCE = 1e-12  # float64, after a few products of matrices


def elements(n: int) -> st.SearchStrategy[Action]:
    """Rotations and reflections, translations, permutations of ``n`` points, and products of them."""
    single = st.one_of(rotations(group="O3"), translations(), permutations(n=n))
    return st.one_of(single, st.builds(lambda g, h: g * h, single, single))


@st.composite
def cases(draw: st.DrawFn, count: int = 3) -> tuple[list[Action], dict[Field, torch.Tensor]]:
    """``count`` elements and a tensor of each field type (and an edge index) on the same points."""
    n = draw(st.integers(1, 5))
    drawn = [draw(elements(n)) for _ in range(count)]
    tensors = draw(point_clouds(fields=FIELDS, batch=2, points=n, dtype=torch.float64, scale=3.0))
    by_field: dict[Field, torch.Tensor] = dict(zip(FIELDS, tensors))
    by_field[EdgeIndex()] = draw(graphs(nodes=n, self_loops=True)).edge_index
    return drawn, by_field


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.shape == b.shape and bool((a.double() - b.double()).abs().max() <= TOLERANCE) if a.numel() else True
    )


@given(cases())
def test_a_product_acts_as_its_factors_one_after_the_other(
    case: tuple[list[Action], dict[Field, Any]],
) -> None:
    (g, h, _), tensors = case
    for field, x in tensors.items():
        assert close((g * h).act(x, field), g.act(h.act(x, field), field)), (g, h, field)


@given(cases())
def test_products_are_associative(case: tuple[list[Action], dict[Field, Any]]) -> None:
    (g, h, k), tensors = case
    for field, x in tensors.items():
        assert close(((g * h) * k).act(x, field), (g * (h * k)).act(x, field)), (g, h, k, field)


@given(cases(count=1))
def test_the_identity_and_inverses(case: tuple[list[Action], dict[Field, Any]]) -> None:
    (g,), tensors = case
    assert Identity() * g == g
    assert g * Identity() == g
    for field, x in tensors.items():
        assert close(g.inverse().act(g.act(x, field), field), x), (g, field)
        assert close((g * g.inverse()).act(x, field), x), (g, field)


@given(st.lists(rotations(group="O3"), min_size=1, max_size=6))
def test_products_of_rotations_stay_orthogonal_with_det_plus_or_minus_one(drawn: list[Rotation]) -> None:
    product: Action = Rotation.identity()
    for r in drawn:
        product = product * r
    assert isinstance(product, Rotation)
    m = product.matrix
    assert (m @ m.T - torch.eye(3, dtype=torch.float64)).abs().max() < 1e-13
    assert abs(float(torch.linalg.det(m)) - product.det) < 1e-13
    assert product.det == (-1) ** sum(r.det < 0 for r in drawn)


@given(
    st.integers(1, 6).flatmap(lambda n: st.tuples(permutations(n=n), permutations(n=n), permutations(n=n)))
)
def test_permutations_form_a_group_exactly(drawn: tuple[Permutation, Permutation, Permutation]) -> None:
    g, h, k = drawn
    assert (g * h) * k == g * (h * k)
    assert (g * g.inverse()).is_identity
    assert g.inverse().inverse() == g


@given(st.lists(translations(), min_size=2, max_size=4))
def test_translations_add(drawn: list[Translation]) -> None:
    total = drawn[0]
    for t in drawn[1:]:
        composed = total * t
        assert isinstance(composed, Translation)
        total = composed
    torch.testing.assert_close(total.vector, sum(t.vector for t in drawn))  # type: ignore[arg-type]


@pytest.mark.skipif(importlib.util.find_spec("e3nn") is None, reason="e3nn is not installed")
@settings(max_examples=10)
@given(rotations(group="O3"), rotations(group="O3"))
def test_irreps_compose_as_the_rotations_do(g: Rotation, h: Rotation) -> None:
    irreps = Irreps("1x0o + 1x1e + 1x2o")
    x = torch.randn(2, 3, irreps.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert close((g * h).act(x, irreps), g.act(h.act(x, irreps), irreps))
    assert close(g.inverse().act(g.act(x, irreps), irreps), x)
