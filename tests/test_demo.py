"""The seed's demonstration, end to end, in its fast setting (offline digits)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from equivariance.cli import main
from equivariance.demo import run_demo


def test_demo_trains_checks_and_draws_then_reuses_its_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["demo", "--fast", "--data", "digits", "--max-shift", "2", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "equivariance check PASSED: LeNet.conv4, 25 shifts" in printed
    assert "equivariance check FAILED: MLP, 25 shifts, 24 failed" in printed
    assert "LeNet passed, the MLP failed: as the seed says" in printed
    assert Image.open(tmp_path / "heatmaps.png").size[0] >= 500
    assert Image.open(tmp_path / "moving_digit.gif").n_frames > 3

    again = run_demo(tmp_path, data="digits", fast=True, max_shift=1, progress=False, stream=io.StringIO())
    assert again.as_expected
    assert again.files["weights"] == tmp_path / "lenet-sklearn-digits.pt"
    assert 0.1 < again.val_accuracy <= 1.0  # loaded, not retrained: evaluated on the validation digits
