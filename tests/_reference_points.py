"""A plain, slow reference for point clouds, sets and graphs: the oracle of the engine's integration.

One element and one sample at a time, in float64, with transformations of its
own and nothing from the library's elements: rotations as explicit matrix
products, translations as additions, permutations by Python loops over the
indices, edge indices relabelled through a dict, and the Wigner matrices of
e3nn irreps found from how e3nn's spherical harmonics turn (a least-squares
fit of ``Y(R v) = D(R) Y(v)`` over points on the sphere), not from e3nn's
``D_from_matrix``. ``f(g.x)`` and ``g.f(x)`` are computed as the definitions
read and compared output by output (tests/_reference.py's ``compare``).

Elements are read through their public attributes only (``Rotation.matrix``,
``Translation.vector``, ``Permutation.indices``, ``Product.factors``); field
types through their classes and ``nodes``/``axes``/``irreps``.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from _reference import compare

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
from equivariance.products import Product

Error = tuple[float, bool]


# -- the transformations, by hand -----------------------------------------------------------------------


def factors(element: object) -> list[object]:
    """The elements a product is made of, outermost first (an element alone otherwise)."""
    return list(element.factors) if isinstance(element, Product) else [element]


def moved(x: torch.Tensor, element: object, field: Field) -> torch.Tensor:
    """``x`` moved by ``element`` by its field type: each factor in turn, the innermost first."""
    for factor in reversed(factors(element)):
        if isinstance(factor, Rotation):
            x = rotated(x, factor.matrix, field)
        elif isinstance(factor, Translation):
            x = x + factor.vector.to(x.dtype) if isinstance(field, Positions) else x
        elif isinstance(factor, Permutation):
            x = permuted(x, list(factor.indices), field)
        else:
            raise TypeError(f"the reference does not know {factor!r}")
    return x


def rotated(x: torch.Tensor, r: torch.Tensor, field: Field) -> torch.Tensor:
    det = 1.0 if torch.linalg.det(r) > 0 else -1.0
    r = r.to(x.dtype)
    if isinstance(field, (Vectors, Pseudovectors)):  # positions too
        sign = det if isinstance(field, Pseudovectors) else 1.0
        return sign * torch.einsum("ij,...j->...i", r, x)
    if isinstance(field, Irreps):
        return torch.einsum("ij,...j->...i", wigner(field.irreps, r).to(x.dtype), x)
    if isinstance(field, Pseudoscalars):
        return det * x
    assert isinstance(field, (Scalars, EdgeIndex, Adjacency)), field
    return x


def permuted(x: torch.Tensor, perm: list[int], field: Field) -> torch.Tensor:
    if isinstance(field, EdgeIndex):
        where = {old: new for new, old in enumerate(perm)}  # point perm[new] is now at new
        return torch.tensor([[where[int(v)] for v in row] for row in x.tolist()], dtype=x.dtype)
    if isinstance(field, Adjacency):
        axes = [a % x.dim() for a in field.axes]
    else:
        axes = [] if field.nodes is None else [field.nodes % x.dim()]
    for axis in axes:
        x = torch.stack([x.select(axis, p) for p in perm], axis)
    return x


@functools.lru_cache(maxsize=64)
def _sphere_points(count: int) -> torch.Tensor:
    v = torch.randn(count, 3, generator=torch.Generator().manual_seed(1234), dtype=torch.float64)
    return v / v.norm(dim=-1, keepdim=True)


def wigner(irreps: str, r: torch.Tensor) -> torch.Tensor:
    """The block-diagonal matrix by which e3nn features of ``irreps`` turn under the orthogonal ``r``
    (see ``_wigner``)."""
    return _wigner(irreps, tuple(r.to(torch.float64).flatten().tolist()))


@functools.lru_cache(maxsize=256)
def _wigner(irreps: str, entries: tuple[float, ...]) -> torch.Tensor:
    """The block-diagonal matrix by which e3nn features of ``irreps`` turn under the orthogonal ``r``.

    For each irrep ``(l, p)``: ``D_l(Q)`` of the proper part ``Q = det(r) r``
    solves ``Y_l(Q v) = D_l(Q) Y_l(v)`` over 40 points ``v`` of the sphere, with
    e3nn's real spherical harmonics ``Y_l``; an improper ``r`` multiplies it
    by the parity ``p``.
    """
    from e3nn import o3

    r = torch.tensor(entries, dtype=torch.float64).reshape(3, 3)
    det = 1.0 if torch.linalg.det(r) > 0 else -1.0
    q = det * r
    v = _sphere_points(40)
    blocks = []
    for mul, (degree, p) in o3.Irreps(irreps):
        y = o3.spherical_harmonics(degree, v, normalize=False)
        y_turned = o3.spherical_harmonics(degree, v @ q.T, normalize=False)
        d = torch.linalg.lstsq(y, y_turned).solution.T  # y_turned = y @ d.T
        sign = float(p) if det < 0 else 1.0
        blocks += [sign * d] * mul
    return torch.block_diag(*blocks) if blocks else torch.zeros(0, 0, dtype=torch.float64)


def moved_value(value: Any, element: object, fields: Any) -> Any:
    """``value`` (a tensor, a tuple or list, a dict, a torch_geometric ``Data``) moved part by part."""
    if fields is None:
        return value
    if isinstance(fields, Field):
        return moved(value, element, fields)
    if isinstance(fields, (tuple, list)):
        return tuple(moved_value(v, element, f) for v, f in zip(value, fields))
    assert isinstance(fields, Mapping)
    if isinstance(value, Mapping):
        return {k: moved_value(v, element, fields.get(k)) for k, v in value.items()}
    out = copy.copy(value)  # a graph: its attributes by name
    for key in fields:
        setattr(out, key, moved_value(getattr(value, key), element, fields[key]))
    return out


# -- the errors -----------------------------------------------------------------------------------------


def parts(output: Any) -> list[torch.Tensor]:
    """A model's outputs as a list of tensors."""
    return [t.detach() for t in (output if isinstance(output, (tuple, list)) else (output,))]


def split(args: Sequence[Any]) -> list[tuple[Any, ...]]:
    """The samples of batched arguments (every one a tensor with a leading batch axis), one at a time."""
    count = len(args[0])
    return [tuple(a[n : n + 1] for a in args) for n in range(count)]


def equivariance_errors(
    model: Callable[..., Any],
    samples: Sequence[tuple[Any, ...]],
    elements: Sequence[object],
    fields: Any,
    outputs: Any,
    *,
    per_output: bool = False,
) -> list[list[Error]] | list[list[list[Error]]]:
    """``[element][sample] -> (error, absolute)``: ``f(g.x)`` against ``g.f(x)``.

    Each sample is one tuple of arguments (``split`` makes them of a batch);
    ``fields`` gives the field type of each argument, ``outputs`` of each
    output. The error of a sample is the largest of its outputs' errors
    (each relative to its own size, so a small energy is not drowned by
    large forces); ``per_output=True`` gives them all,
    ``[element][sample][output]``.
    """
    bases = [model(*args) for args in samples]  # f(x), once per sample
    table: list[Any] = []
    for element in elements:
        row: list[Any] = []
        for args, base in zip(samples, bases):
            out = parts(model(*moved_value(args, element, fields)))
            ref = parts(moved_value(base, element, outputs))
            errors = [compare(a.double(), b.double()) for a, b in zip(out, ref)]
            row.append(errors if per_output else max(errors))
        table.append(row)
    return table


def worst(table: Sequence[Sequence[Error]]) -> float:
    """The largest error of a table."""
    return max(error for row in table for error, _ in row)
