"""Collection of the package's doctests: a module whose extra is not installed is left out, and a doctest
that needs an extra skips with the reason."""

from __future__ import annotations

import importlib.util

import pytest

# equivariance.lightning imports PyTorch Lightning (the lightning extra); its tests skip without it
collect_ignore = [] if importlib.util.find_spec("lightning") else ["equivariance/lightning.py"]

# doctests of e3nn's irreducible representations (the e3nn extra)
_NEEDS_E3NN = ("equivariance.fields.Irreps.",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if importlib.util.find_spec("e3nn"):
        return
    skip = pytest.mark.skip(reason="e3nn is not installed (pip install equivariance[e3nn])")
    for item in items:
        if item.name.startswith(_NEEDS_E3NN):
            item.add_marker(skip)
