"""The command line: exit codes, output formats, usage errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from equivariance import check_equivariance, cli
from equivariance.cli import main

LENET = ["equivariance.models:LeNet", "--input-shape", "2,1,24,24", "--max-shift", "1"]


def test_passing_check_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", *LENET, "--layer", "conv4"]) == 0
    assert "equivariance check PASSED: LeNet.conv4, 9 shifts" in capsys.readouterr().out


def test_failing_check_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "torch.nn:Flatten", "--input-shape", "2,1,8,8", "--invariance"]) == 1
    assert "invariance check FAILED: Flatten" in capsys.readouterr().out


def test_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", *LENET, "--layer", "conv4", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["passed"] is True
    assert len(data["results"]) == 9


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["check", "nomodule:Thing", "--input-shape", "1,1,8"], "cannot import 'nomodule'"),
        (["check", "equivariance.models:Nope", "--input-shape", "1,1,8"], "has no attribute 'Nope'"),
        (["check", "equivariance.models", "--input-shape", "1,1,8"], "must be given as PKG.MODULE:FACTORY"),
        (["check", *LENET, "--layer", "conv9"], "LeNet has no layer named 'conv9'"),
        (["check", "torch.nn:Identity", "--input-shape", "8,8"], r"needs \(N, C, \*spatial\)"),
    ],
    ids=["no-module", "no-attribute", "no-colon", "bad-layer", "bad-shape"],
)
def test_usage_errors_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("equivariance: error:")
    assert re.search(message, err)


def test_argparse_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "equivariance.models:LeNet", "--input-shape", "a,b"]) == 2
    assert "expected comma-separated integers" in capsys.readouterr().err
    assert main([]) == 2


def test_python_dash_m_runs_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "equivariance", "check", *LENET, "--layer", "conv4", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0
    assert result.stdout == ""


def test_a_factory_that_needs_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "equivariance.models:MLP", "--input-shape", "1,1,20,20"]) == 2
    assert "calling equivariance.models:MLP() raised TypeError" in capsys.readouterr().err


def test_border_puts_the_random_input_on_a_canvas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A zero-padded conv fails at the borders on full-frame noise, and passes once the input
    # has a zero border wider than the shifts.
    (tmp_path / "same_padded.py").write_text(
        "import torch\n\ndef build():\n    return torch.nn.Conv2d(1, 1, 3, padding=1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = ["check", "same_padded:build", "--input-shape", "1,1,16,16", "--max-shift", "2"]
    assert main(argv) == 1
    assert main([*argv, "--border", "3"]) == 0
    capsys.readouterr()


def test_profile_names_the_failing_layer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "strided.py").write_text(
        "import torch\n\n"
        "def build():\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Conv2d(2, 2, 2, stride=2))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = ["profile", "strided:build", "--input-shape", "2,1,16,16"]
    assert main([*argv, "--shift", "1,0"]) == 1
    out = capsys.readouterr().out
    assert "first failure at 1 (Conv2d), aliasing" in out
    assert main([*argv, "--shift", "2,0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["passed"] is True


def test_check_with_inferred_stride_and_margin(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "check",
        "torch.nn:Identity",
        "--input-shape",
        "1,1,12,12",
        "--stride",
        "auto",
        "--margin",
        "auto",
    ]
    assert main(argv) == 0
    assert "inferred" in capsys.readouterr().out


def test_batch_size_takes_an_int_or_auto(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", *LENET, "--layer", "conv4", "--batch-size", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["batch_size"] == 3
    passed: dict[str, Any] = {}

    def spy(*args: Any, **kwargs: Any) -> Any:
        passed.update(kwargs)
        return check_equivariance(*args, **kwargs)

    monkeypatch.setattr(cli, "check_equivariance", spy)
    assert main(["check", *LENET, "--layer", "conv4", "--batch-size", "auto", "--json"]) == 0
    assert passed["batch_size"] == "auto"
    assert json.loads(capsys.readouterr().out)["batch_size"] >= 1


@pytest.mark.parametrize("value", ["0", "-2", "many", "2.5"])
def test_a_bad_batch_size_is_an_argparse_error(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", *LENET, "--layer", "conv4", "--batch-size", value]) == 2
    err = capsys.readouterr().err
    assert f"argument --batch-size: expected a positive integer or auto, found '{value}'" in err


LENET_CANVAS = ["profile", "equivariance.models:LeNet", "--input-shape", "2,1,38,38", "--border", "5"]


def test_profile_up_to_stops_before_lenets_head(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*LENET_CANVAS, "--shift", "2,1", "--up-to", "conv4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("equivariance profile of LeNet up to conv4 under shift (2, 1) (zeros): every layer")
    assert re.search(r"^  conv4 +Conv2d +\(5, 22, 22\)", out, re.MULTILINE)
    assert "fc1" not in out
    assert main([*LENET_CANVAS, "--shift", "2,1", "--up-to", "conv2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [layer["name"] for layer in data["layers"]] == ["conv1", "conv2"]
    assert data["up_to"] == "conv2"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], r"LeNet's head takes 28x28 inputs .* or up_to='conv4' in a profile"),
        (["--up-to", "conv9"], r"LeNet has no layer named 'conv9'; close names: .*'conv4'"),
    ],
    ids=["no-up-to", "unknown"],
)
def test_profile_up_to_usage_errors_exit_2(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*LENET_CANVAS, "--shift", "2,1", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("equivariance: error:")
    assert re.search(message, err)


def test_profile_up_to_still_fails_on_a_failing_layer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "strided_head.py").write_text(
        "import torch\n\n"
        "def build():\n"
        "    return torch.nn.Sequential(\n"
        "        torch.nn.Conv2d(1, 2, 3), torch.nn.Conv2d(2, 2, 2, stride=2), torch.nn.Flatten(),\n"
        "        torch.nn.Linear(2 * 3 * 3, 4),\n"
        "    )\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = ["profile", "strided_head:build", "--input-shape", "2,1,16,16", "--up-to", "1"]
    assert main([*argv, "--shift", "1,0"]) == 1
    assert "first failure at 1 (Conv2d), aliasing" in capsys.readouterr().out
    assert main([*argv, "--shift", "2,0"]) == 0
    capsys.readouterr()
