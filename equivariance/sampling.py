"""Seeded samples of a group: continuous groups are sampled, not enumerated.

A sample draws ``samples`` elements uniformly (by the Haar measure, for a compact group) from a seed, after
the elements you ``include``; it is a sequence usable wherever a list of elements is. The samples themselves
live in ``equivariance.euclidean`` and ``equivariance.permutations`` (docs/point_clouds.md, "Samples of a
group").

Examples:
    >>> from equivariance.euclidean import SO3, Rotation
    >>> sample = SO3(4, seed=0, include=[Rotation.inversion() * Rotation.inversion()])
    >>> len(sample), sample[0], sample == SO3(4, seed=0, include=[Rotation.identity()])
    (5, Rotation(identity), True)
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, ClassVar, Generic, TypeVar, overload

import torch

from equivariance._engine.validation import as_int, describe
from equivariance.actions import Action
from equivariance.errors import InvalidArgument

__all__ = ["GroupSample"]

E = TypeVar("E", bound=Action)


class GroupSample(Sequence[E], Generic[E], abc.ABC):
    """Group elements drawn from a seed, after the ones included by name: a sequence of elements.

    Subclasses say how to draw (``_draw``) and which elements belong (``_admit``).

    Args:
        samples: how many elements to draw (after the included ones).
        seed: the seed of the draw: the same seed, the same elements.
        include: elements checked first, as given (e.g. the inversion, or a rotation a user reported).

    Attributes:
        group: the group's name, e.g. ``"SO(3)"``.
        samples: the number of drawn elements.
        seed: the seed.
        included: the included elements.
    """

    group: ClassVar[str]

    def __init__(self, samples: int = 64, *, seed: int = 0, include: Iterable[Any] = ()) -> None:
        self.samples = as_int(samples, f"{type(self).__name__}'s samples")
        if self.samples < 0:
            raise InvalidArgument(f"samples must be at least 0, found {self.samples}")
        self.seed = as_int(seed, f"{type(self).__name__}'s seed")
        if not 0 <= self.seed < 2**63:
            raise InvalidArgument(f"seed must be in 0..2**63 - 1, found {self.seed}")
        if isinstance(include, (Action, str)) or not isinstance(include, Iterable):
            raise InvalidArgument(
                f"include must be a list of elements, found {describe(include)}; pass include=[element]"
            )
        self.included: tuple[E, ...] = tuple(self._admit(e, f"include[{i}]") for i, e in enumerate(include))
        if not self.samples and not self.included:
            raise InvalidArgument(
                f"{type(self).__name__}(0) with nothing included holds no element; pass samples >= 1"
            )
        generator = torch.Generator().manual_seed(self.seed)
        self._elements: tuple[E, ...] = self.included + tuple(self._draw(self.samples, generator))

    @abc.abstractmethod
    def _draw(self, samples: int, generator: torch.Generator) -> Sequence[E]:
        """``samples`` elements drawn with ``generator``."""

    @abc.abstractmethod
    def _admit(self, element: object, what: str) -> E:
        """``element`` if it belongs to the group, else InvalidArgument naming ``what``."""

    def _options(self) -> list[str]:
        return []

    def draw(self, samples: int, generator: torch.Generator) -> list[E]:
        """``samples`` fresh elements of the same group, drawn with ``generator`` as the sample's own
        are (not the included ones): a new draw each training step for
        [`equivariance_loss`][equivariance.loss.equivariance_loss].

        Examples:
            >>> from equivariance.euclidean import SO3
            >>> g = torch.Generator().manual_seed(1)
            >>> len(SO3(4, seed=0).draw(2, g)), SO3(4, seed=0).draw(1, g) == SO3(4, seed=0).draw(1, g)
            (2, False)
        """
        count = as_int(samples, "samples")
        if count < 1:
            raise InvalidArgument(f"samples must be positive, found {count}; pass e.g. samples=2")
        return list(self._draw(count, generator))

    @overload
    def __getitem__(self, index: int) -> E: ...

    @overload
    def __getitem__(self, index: slice) -> list[E]: ...

    def __getitem__(self, index: int | slice) -> E | list[E]:
        if isinstance(index, slice):
            return list(self._elements[index])
        return self._elements[index]

    def __len__(self) -> int:
        return len(self._elements)

    def __iter__(self) -> Iterator[E]:
        return iter(self._elements)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GroupSample):
            return NotImplemented
        return type(self) is type(other) and self._elements == other._elements

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._elements))

    def __repr__(self) -> str:
        options = [str(self.samples), f"seed={self.seed}", *self._options()]
        if self.included:
            options.append(f"include=[{', '.join(map(repr, self.included))}]")
        return f"{type(self).__name__}({', '.join(options)})"
