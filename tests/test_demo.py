"""The seed's demonstration, end to end, in its fast setting (offline digits)."""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from equivariance import demo, training
from equivariance.cli import main
from equivariance.demo import PROMISED_ACCURACY, run_demo


def test_demo_trains_checks_and_draws_then_reuses_only_weights_of_the_same_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["demo", "--fast", "--data", "digits", "--max-shift", "2", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "equivariance check PASSED: LeNet.conv4, 25 shifts" in printed
    assert "equivariance check FAILED: MLP, 25 shifts, 24 failed" in printed
    assert "LeNet passed, the MLP failed: as the seed says" in printed
    # the data in plain words, and pictures of its own: a smoke run never replaces a full run's
    assert (
        "data: scikit-learn's handwritten digits (offline; 8x8 scans resized to MNIST's 28x28), 400 of its "
        "1,438 training digits to train, 359 others to validate\n"
    ) in printed
    assert Image.open(tmp_path / "heatmaps-fast.png").size[0] >= 500
    assert Image.open(tmp_path / "moving_digit-fast.gif").n_frames > 3
    assert not (tmp_path / "heatmaps.png").exists()
    assert not (tmp_path / "moving_digit.gif").exists()
    assert f"  heatmaps: {tmp_path / 'heatmaps-fast.png'}" in printed
    fast_weights = tmp_path / "lenet-sklearn-digits-400digits-1epochs-seed0.pt"
    assert fast_weights.exists()
    # one epoch on 400 digits is far from a trained network, and the demo says so
    assert "WARNING: LeNet's accuracy" in printed
    assert f"below the {PROMISED_ACCURACY:.0%} a full run reaches (a --fast run trains 1 epoch" in printed

    again = io.StringIO()
    result = run_demo(tmp_path, data="digits", fast=True, max_shift=1, progress=False, stream=again)
    assert result.as_expected
    assert result.files["weights"] == fast_weights
    assert f"loaded {fast_weights}" in again.getvalue()
    assert "WARNING: LeNet's accuracy" in again.getvalue()  # loaded weights are no better
    assert 0.1 < result.val_accuracy < PROMISED_ACCURACY

    # weights of other settings are not reused: each set of settings has its own file
    assert demo.weights_path(tmp_path, "sklearn-digits[:1438]", 400, 1, seed=1) == (
        tmp_path / "lenet-sklearn-digits-400digits-1epochs-seed1.pt"
    )
    assert demo.weights_path(tmp_path, "mnist-train", 60000, 10, seed=0).name == (
        "lenet-mnist-train-60000digits-10epochs-seed0.pt"
    )


@pytest.mark.parametrize(
    "out",
    [lambda tmp: Path("/proc/equivariance-demo"), lambda tmp: tmp / "a-file" / "demo"],
    ids=["proc", "under-a-file"],
)
def test_an_unwritable_output_directory_is_a_usage_error_before_any_work(
    tmp_path: Path, out: object, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("")
    monkeypatch.setattr(training, "train", _no_training)
    directory = out(tmp_path)  # type: ignore[operator]
    assert main(["demo", "--fast", "--data", "digits", "--out", str(directory)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"equivariance: error: cannot write the demo's files to '{directory}' (")
    assert "pass --out a directory you can write to" in err
    assert "Traceback" not in err


def test_missing_extras_are_refused_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(training, "train", _no_training)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    start = time.perf_counter()
    assert main(["demo", "--fast", "--data", "digits", "--out", str(tmp_path)]) == 2
    assert time.perf_counter() - start < 5
    err = capsys.readouterr().err
    assert 'the demo needs matplotlib, which is not installed; pip install "equivariance[viz]"' in err
    monkeypatch.setitem(sys.modules, "sklearn", None)
    assert main(["demo", "--fast", "--data", "digits", "--out", str(tmp_path)]) == 2
    assert 'needs matplotlib, sklearn, which are not installed; pip install "equivariance[data,viz]"' in (
        capsys.readouterr().err
    )
    assert list(tmp_path.iterdir()) == []


def _no_training(*args: object, **kwargs: object) -> None:
    raise AssertionError("the demo trained before refusing")
