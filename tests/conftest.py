"""Shared test settings: Hypothesis profiles and seeded torch."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# "ci" keeps the whole suite under a few minutes on two CPU cores; "dev" and
# "thorough" are for local runs: pytest --hypothesis-profile=thorough
settings.register_profile(
    "ci", max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile("dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "thorough", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
# long fuzzing runs of tests/test_fuzz.py: pytest tests/test_fuzz.py --hypothesis-profile=fuzz
settings.register_profile(
    "fuzz", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


def canvas(batch: int = 4, size: int = 38, content: int = 28, channels: int = 1) -> torch.Tensor:
    """Random content on a zero canvas, centred, as in the seed's moving digits."""
    x = torch.zeros(batch, channels, size, size)
    lo = (size - content) // 2
    x[..., lo : lo + content, lo : lo + content] = torch.rand(batch, channels, content, content)
    return x
