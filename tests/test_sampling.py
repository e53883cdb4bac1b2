"""What every sample of a group shares: a sequence of elements, seeded, with the included ones first,
usable wherever a list of elements is; and its messages."""

from __future__ import annotations

import pytest

from equivariance.errors import InvalidArgument
from equivariance.euclidean import SO3, Rotation
from equivariance.permutations import Permutation, Permutations
from equivariance.transforms import as_transform_list


def test_a_sample_is_a_sequence_of_elements() -> None:
    drawn = SO3(5, seed=2, include=[Rotation.inversion() * Rotation.inversion()])
    assert len(drawn) == 6
    assert drawn[0].is_identity
    assert drawn[-1] == list(drawn)[-1]
    assert isinstance(drawn[1:3], list)
    assert len(drawn[1:3]) == 2
    assert (drawn.samples, drawn.seed, drawn.included, drawn.group) == (5, 2, (Rotation.identity(),), "SO(3)")
    assert as_transform_list(drawn) == list(drawn)  # wherever transforms= takes a list
    assert hash(drawn) == hash(SO3(5, seed=2, include=[Rotation.identity()]))
    assert SO3(0, include=[Rotation.identity()])[0] == Rotation.identity()


def test_messages() -> None:
    with pytest.raises(
        InvalidArgument, match=r"SO3's samples must be an integer, found 2.5 \(float\); round it yourself"
    ):
        SO3(2.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=r"samples must be at least 0, found -1"):
        SO3(-1)
    with pytest.raises(InvalidArgument, match=r"seed must be in 0..2\*\*63 - 1, found -3"):
        SO3(2, seed=-3)
    with pytest.raises(
        InvalidArgument,
        match=r"include must be a list of elements, found Rotation\(identity\) \(Rotation\); pass include=\[element\]",
    ):
        SO3(2, include=Rotation.identity())  # type: ignore[arg-type]
    with pytest.raises(
        InvalidArgument, match=r"SO3\(0\) with nothing included holds no element; pass samples >= 1"
    ):
        SO3(0)
    with pytest.raises(
        InvalidArgument,
        match=r"Permutations\(n=3\) holds permutations of 3 points; include\[1\] is Permutation\(\[1, 0\]\)",
    ):
        Permutations(1, n=3, include=[Permutation([1, 0, 2]), Permutation([1, 0])])
