"""The sink of several outputs (``PartSums``): each part compares ``f(g.x)`` with ``g.f(x)`` by its own field
type, in float64 where the device has it, and keeps its own sums, so a small energy is judged against its own
size. A per-node output of graphs of different sizes is moved graph by graph (``GraphReferences``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from equivariance._engine.copies import Copies
from equivariance._engine.judge import Sums, accumulation_dtype
from equivariance._engine.parts import OutputParts
from equivariance._engine.sinks import Describe, all_finite, check_finite
from equivariance.actions import Action, guarded_act
from equivariance.fields import Field


class PartSums:
    """Per part, the squared norms of ``f(g.x) - g.f(x)`` and of ``g.f(x)``, item by item.

    Args:
        base: ``f(x)``, the parts side by side, ``(N, total)``.
        outputs: the parts (their field types and shapes).
        acting: the element acting on the outputs, one per row (the identity for the noise floor's rows
            and for invariance).
    """

    def __init__(self, base: torch.Tensor, outputs: OutputParts, acting: Sequence[Action]) -> None:
        self.outputs, self.acting = outputs, list(acting)
        self.work = accumulation_dtype(base.device)
        self.n = len(base)
        pieces = outputs.unflatten(base.to(self.work))
        self.base = [p.reshape(self.n, -1) for p in pieces]
        moving = any(not e.is_identity for e in self.acting)
        self.references: list[Copies | GraphReferences | None] = []
        for piece, part, field, per_node in zip(
            pieces, outputs.parts, outputs.acting, outputs.per_node or (False,) * len(pieces)
        ):
            if field is None or not moving:
                self.references.append(None)
            elif per_node and outputs.mixed:
                assert part.field is not None
                self.references.append(GraphReferences(piece, self.acting, part.field, outputs.nodes))
            else:
                self.references.append(Copies(piece, self.acting, field))
        rows, count = len(self.acting), len(outputs.parts)
        self.diff_sq = torch.zeros(rows * self.n, count, dtype=torch.float64)
        self.ref_sq = torch.zeros(rows * self.n, count, dtype=torch.float64)

    def add(
        self, outputs: torch.Tensor, items: slice, sample: torch.Tensor, row: torch.Tensor, what: Describe
    ) -> None:
        if not all_finite(outputs):  # the description of the chunk is made only for a message
            check_finite(outputs, what())
        pieces = self.outputs.unflatten(outputs)
        for p, (piece, references) in enumerate(zip(pieces, self.references)):
            if references is None:
                reference = self.base[p][sample.to(self.base[p].device)]
            else:
                reference = references.take(sample, row).reshape(len(sample), -1)
            got = piece.reshape(len(sample), -1).to(self.work)
            self.diff_sq[items, p] = (got - reference).square().sum(1).cpu().double()
            self.ref_sq[items, p] = reference.square().sum(1).cpu().double()

    def retry(self) -> None:
        pass

    def sums(self) -> list[Sums]:
        """One ``Sums`` a part, ``[row, sample]``."""
        rows = len(self.acting)
        return [
            Sums(
                self.diff_sq[:, p].reshape(rows, self.n).clone(),
                self.ref_sq[:, p].reshape(rows, self.n).clone(),
                torch.full((rows,), float(max(1, size)), dtype=torch.float64),
            )
            for p, size in enumerate(self.outputs.sizes)
        ]


class GraphReferences:
    """Per-node outputs ``f(x)`` of graphs of different sizes, padded ``(graphs, width, ...)``, moved graph
    by graph: ``take(sample, row)[b]`` is ``acting[row[b]].sized(n)`` acting on the ``n`` rows of graph
    ``sample[b]`` (its field type's nodes on axis 0), padded with zeros again.

    Args:
        base: the padded outputs.
        acting: the element of each row.
        field: the part's field type, on one graph's tensor ``(nodes, ...)``.
        nodes: each graph's number of nodes.
    """

    def __init__(
        self, base: torch.Tensor, acting: Sequence[Action], field: Field, nodes: Sequence[int]
    ) -> None:
        self.base, self.acting, self.field, self.nodes = base, list(acting), field, list(nodes)

    def take(self, sample: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(sample), *self.base.shape[1:], dtype=self.base.dtype, device=self.base.device)
        for b, (s, k) in enumerate(zip(sample.tolist(), row.tolist())):
            n = self.nodes[s]
            out[b, :n] = guarded_act(self.acting[k].sized(n), self.base[s, :n], self.field)
        return out
