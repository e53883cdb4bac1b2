"""The command line: exit codes, output formats, usage errors."""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import equivariance
from equivariance import check_equivariance, cli
from equivariance._engine import runner as _runner
from equivariance._engine.progress import Progress
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
    assert result.stdout == (
        "equivariance check PASSED: LeNet.conv4, 9 shifts; max error 0.00e+00 at shift (-1, -1) "
        "(rtol 1e-04, float32)\n"
    )
    assert result.stderr == ""  # not a terminal: no progress bar


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


# -- a command line that feels native -------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"equivariance {equivariance.__version__}\n"


def test_a_bare_command_prints_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: equivariance [-h] [--version] {check,profile,demo} ...")
    assert (
        "examples:\n  equivariance check equivariance.models:LeNet --input-shape 8,1,38,38 --layer conv4"
        in out
    )


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", ["check", "profile", "demo"])
def test_every_subcommand_documents_its_options_defaults_and_examples(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = _subcommands()[command]
    undocumented = [a.dest for a in parser._actions if not (a.help or "").strip()]
    assert undocumented == []
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    examples = out.split("examples:\n")[1].split("\n\n")[0].replace("\\\n", "").splitlines()
    assert len(examples) >= 2
    assert all(line.startswith(f"  equivariance {command} ") for line in examples)
    with_defaults = [
        a for a in parser._actions if isinstance(a.default, int | str) and a.default != argparse.SUPPRESS
    ]
    assert with_defaults  # --boundary, --seed, --out, ...
    flat = " ".join(out.split())
    for action in with_defaults:
        if not isinstance(action.default, bool):
            assert f"(default: {action.default})" in flat, action.dest


def test_a_model_in_the_current_directory_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "mymodels_here.py").write_text(
        "import torch\n\ndef make():\n    return torch.nn.Conv2d(1, 2, 3)\n"
    )
    monkeypatch.chdir(tmp_path)
    path_before = list(sys.path)
    assert main(["check", "mymodels_here:make", "--input-shape", "1,1,12,12", "--quiet"]) == 0
    assert sys.path == path_before
    # and as a user runs it: the installed script, whose sys.path[0] is its own folder
    script = Path(sys.executable).with_name("equivariance")
    command = (
        [str(script)]
        if script.exists()
        else [sys.executable, "-c", "from equivariance.cli import main; raise SystemExit(main())"]
    )
    result = subprocess.run(
        [*command, "check", "mymodels_here:make", "--input-shape", "1,1,12,12", "--max-shift", "1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "equivariance check PASSED: Conv2d, 9 shifts" in result.stdout


def test_a_closed_pipe_ends_quietly() -> None:
    """``equivariance check ... | head -1``: the reader is gone before the report is written."""
    process = subprocess.Popen(
        [sys.executable, "-m", "equivariance", "check", *LENET, "--layer", "conv4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    process.stdout.close()  # long before the child has imported torch
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 0  # the verdict, although nobody read it
    assert stderr == ""


SEGMENTER = """
import torch

class Segmenter(torch.nn.Module):
    def __init__(self, num_classes=2):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, num_classes, 3, padding=1, padding_mode="circular")
        self.head = torch.nn.Linear(num_classes * 8 * 8, 4)

    def forward(self, x):
        masks = self.conv(x)
        return {"masks": masks, "scores": self.head(masks.flatten(1))}

class Pair(Segmenter):
    def forward(self, x):
        out = super().forward(x)
        return out["scores"], out["masks"]

instance = Segmenter()
"""


@pytest.fixture
def segmenter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    (tmp_path / "segmenter.py").write_text(SEGMENTER)
    monkeypatch.syspath_prepend(str(tmp_path))
    return ["--input-shape", "2,1,8,8", "--boundary", "circular", "--max-shift", "1"]


def test_select_picks_a_tensor_by_key_or_index(
    segmenter: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "segmenter:Segmenter", *segmenter]) == 2
    err = capsys.readouterr().err
    assert "pass output='masks' (a key)" in err
    assert err.rstrip().endswith("on the command line: output= is --select")
    assert main(["check", "segmenter:Segmenter", *segmenter, "--select", "masks"]) == 0
    assert main(["check", "segmenter:Segmenter", *segmenter, "--select", "scores", "--invariance"]) == 1
    assert main(["check", "segmenter:Pair", *segmenter, "--select", "1"]) == 0
    assert main(["check", "segmenter:Pair", *segmenter, "--select", "0", "--invariance", "--quiet"]) == 1
    capsys.readouterr()


@pytest.mark.parametrize("old", ["masks", "0"])
def test_the_old_spelling_of_select_is_refused_with_a_pointer(
    old: str, segmenter: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "segmenter:Segmenter", *segmenter, "--output", old]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: equivariance check MODEL")
    assert (
        f"equivariance check: error: argument -o/--output: expected a file name with a suffix, such as "
        f"report.json or report.txt, found '{old}'; to pick the tensor '{old}' of a model's dict or tuple "
        f"output, pass --select {old} (--output was that option's name before 0.2.0)"
    ) in err


def test_factory_arguments(segmenter: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["check", "segmenter:Segmenter", *segmenter, "--select", "masks", "--json"]
    assert main([*argv, "--arg", "num_classes=3"]) == 0
    assert json.loads(capsys.readouterr().out)["output_shape"][1] == 3
    assert main([*argv, "--arg", "num_classes=many"]) == 2
    assert "calling segmenter:Segmenter(num_classes='many') raised TypeError" in capsys.readouterr().err
    assert main([*argv, "--arg", "3"]) == 2
    assert "argument --arg: expected NAME=VALUE, found '3'; e.g. num_classes=3" in capsys.readouterr().err
    assert main(["check", "segmenter:instance", *segmenter, "--arg", "num_classes=3"]) == 2
    assert "segmenter:instance is a model, not a factory, so it takes no arguments" in capsys.readouterr().err
    mlp = ["check", "equivariance.models:MLP", "--input-shape", "2,1,20,20", "--max-shift", "1", "--quiet"]
    assert main([*mlp, "--arg", "input_size=20", "--arg", "hidden=8"]) == 1


def _digit_canvas(channels: int = 1) -> torch.Tensor:
    x = torch.zeros(1, channels, 38, 38)
    x[..., 10:28, 10:28] = torch.rand(1, channels, 18, 18, generator=torch.Generator().manual_seed(0))
    return x


def test_input_from_a_tensor_an_array_or_an_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "same_padded_input.py").write_text(
        "import torch\n\ndef build():\n    return torch.nn.Conv2d(1, 1, 3, padding=1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    x = _digit_canvas()
    torch.save(x, tmp_path / "x.pt")
    np.save(tmp_path / "x.npy", x.numpy())
    Image.fromarray((x[0, 0].numpy() * 255).astype(np.uint8)).save(tmp_path / "digit.png")
    Image.fromarray((_digit_canvas(3)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(
        tmp_path / "rgb.png"
    )
    # a zero-padded conv passes on content with a zero border, and fails on noise of the same shape
    argv = ["check", "same_padded_input:build", "--max-shift", "3", "--json"]
    for name in ("x.pt", "x.npy", "digit.png"):
        assert main([*argv, "--input", str(tmp_path / name)]) == 0, name
        data = json.loads(capsys.readouterr().out)
        assert data["input_shape"] == [1, 1, 38, 38]
        assert data["passed"] is True
    assert main([*argv, "--input-shape", "1,1,38,38"]) == 1
    capsys.readouterr()
    assert torch.allclose(cli.load_input(tmp_path / "digit.png"), x, atol=1 / 255)
    rgb = cli.load_input(tmp_path / "rgb.png")
    assert rgb.shape == (1, 3, 38, 38)
    assert torch.allclose(rgb, _digit_canvas(3), atol=1 / 255)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing.pt", r"--input '.*missing.pt': no such file"),
        (lambda p: _write(p / "x.txt", b"1 2 3"), r"expected a .pt, .npy or image file .*found '.txt'"),
        (
            lambda p: _npy(p / "flat.npy", np.zeros((8, 8))),
            r"found shape \(8, 8\); add the batch and channel dims",
        ),
        (lambda p: _pt(p / "many.pt", {"x": torch.zeros(1)}), r"expected one tensor, found dict"),
        (lambda p: _write(p / "broken.npy", b"garbage"), r"numpy.load could not read it"),
        (lambda p: _write(p / "broken.png", b"garbage"), r"not an image Pillow can read"),
    ],
    ids=["missing", "suffix", "2-d", "dict", "bad-npy", "bad-png"],
)
def test_bad_input_files_are_usage_errors(
    tmp_path: Path, make: Any, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make(tmp_path)
    assert main(["check", "torch.nn:Identity", "--input", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("equivariance: error: --input")
    assert re.search(message, err)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _npy(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


def _pt(path: Path, value: object) -> Path:
    torch.save(value, path)
    return path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["check", *LENET, "--border", "-3"],
            "argument --border: expected a non-negative integer, found '-3'",
        ),
        (
            ["check", *LENET, "--border", "12"],
            "--border 12 leaves nothing of an input of spatial shape (24, 24)",
        ),
        (
            ["check", *LENET, "--rtol", "-1"],
            "argument --rtol: expected a finite non-negative number, found '-1'",
        ),
        (["check", *LENET, "--input", "x.pt"], "argument --input: not allowed with argument --input-shape"),
        (
            ["check", "equivariance.models:LeNet"],
            "one of the arguments --input-shape --input --example is required",
        ),
        (["demo", "--epochs", "0"], "argument --epochs: expected a positive integer, found '0'"),
        (["demo", "--max-shift", "-1"], "argument --max-shift: expected a non-negative integer, found '-1'"),
    ],
    ids=[
        "negative-border",
        "border-too-wide",
        "negative-rtol",
        "two-inputs",
        "no-input",
        "epochs",
        "demo-shift",
    ],
)
def test_bad_numbers_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


# -- the conventions of every command line: -o, -q, --help, a misspelt option ---------------------


def _refuse_to_check(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the check ran before the usage error")


@pytest.mark.parametrize(
    ("name", "extra", "kind"),
    [
        ("report.json", [], "json"),
        ("report.txt", [], "text"),
        ("report.out", ["--format", "json"], "json"),
        ("report.log", ["--json"], "json"),
    ],
    ids=["json-by-suffix", "text-by-suffix", "format", "json-flag"],
)
def test_output_writes_the_report_to_a_file_and_the_verdict_to_stdout(
    name: str, extra: list[str], kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / name
    assert main(["check", *LENET, "--layer", "conv4", "-o", str(path), *extra]) == 0
    assert capsys.readouterr().out == (
        "equivariance check PASSED: LeNet.conv4, 9 shifts; max error 0.00e+00 at shift (-1, -1) "
        "(rtol 1e-04, float32)\n"
    )
    text = path.read_text()
    if kind == "json":
        data = json.loads(text)
        assert (data["passed"], len(data["results"]), data["subject"]) == (True, 9, "LeNet.conv4")
    else:
        assert text.startswith("equivariance check PASSED: LeNet.conv4, 9 shifts")
        assert "  shift " in text


def test_output_of_a_failing_check_and_of_a_profile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    failing = ["check", "torch.nn:Flatten", "--input-shape", "2,1,8,8", "--invariance", "--max-shift", "1"]
    assert main([*failing, "--output", str(tmp_path / "flat.json")]) == 1
    assert capsys.readouterr().out.startswith("invariance check FAILED: Flatten, 9 shifts, 8 failed")
    assert json.loads((tmp_path / "flat.json").read_text())["passed"] is False
    argv = [*LENET_CANVAS, "--shift", "2,1", "--up-to", "conv4"]
    assert main([*argv, "-o", str(tmp_path / "profile.json")]) == 0
    assert capsys.readouterr().out == (
        "equivariance profile of LeNet up to conv4 under shift (2, 1) (zeros): every layer within rtol 1e-04\n"
    )
    layers = json.loads((tmp_path / "profile.json").read_text())["layers"]
    assert [layer["name"] for layer in layers] == ["conv1", "conv2", "conv3", "conv4"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-o", "missing/report.json"], "argument -o/--output: the folder 'missing' does not exist"),
        (["-o", "report"], "argument -o/--output: expected a file name with a suffix"),
        (["--json", "--format", "text"], "argument --json: not allowed with argument --format text"),
    ],
    ids=["no-folder", "no-suffix", "json-and-text"],
)
def test_output_options_are_checked_before_any_work(
    argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "check_equivariance", _refuse_to_check)
    assert main(["check", *LENET, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "usage: equivariance check MODEL (--input-shape S | --input F | --example FN) ...\n"
    )
    assert f"equivariance check: error: {message}" in err


def test_quiet_prints_the_verdict_line_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "torch.nn:Flatten", "--input-shape", "2,1,8,8", "--invariance", "-q"]) == 1
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert out.startswith("invariance check FAILED: Flatten, 25 shifts, 24 failed; max error")
    assert main([*LENET_CANVAS, "--shift", "1,0", "--up-to", "conv2", "--quiet"]) == 0
    assert capsys.readouterr().out.count("\n") == 1


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("extra", "shown"), [([], True), (["-q"], False), (["--no-progress"], False)])
def test_a_long_check_shows_progress_on_a_terminal(
    extra: list[str], shown: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    monkeypatch.setattr(_runner, "PROGRESS_DELAY_S", 0.0)  # every check counts as long
    assert main(["check", *LENET, "--layer", "conv4", "--batch-size", "2", *extra]) == 0
    assert ("\requivariance sweep |########################| 10/10 [" in terminal.getvalue()) is shown
    capsys.readouterr()


def test_a_quick_bar_on_a_terminal_leaves_no_trace() -> None:
    terminal = _Terminal()
    with Progress(3, "sweep", stream=terminal, delay=60.0) as bar:
        bar.update(3)
    assert terminal.getvalue() == ""
    with Progress(3, "sweep", stream=terminal) as bar:
        bar.update(3)
    assert terminal.getvalue().startswith("\rsweep |")


def test_check_help_fits_a_screen_with_examples_first_and_options_grouped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["check", "--help"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) <= 52, len(lines)  # a screen of a maximized terminal, with the options of points
    assert max(len(line) for line in lines) <= 80
    headings = [line for line in lines if line and not line.startswith(" ") and line.endswith(":")]
    assert headings == ["examples:", "model and input:", "what to check:", "tolerance and speed:", "output:"]
    assert lines[0] == "usage: equivariance check MODEL (--input-shape S | --input F | --example FN) ..."


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (
            ["check", *LENET, "--max-shfit", "2"],
            "unrecognized arguments: --max-shfit 2; did you mean --max-shift?",
        ),
        (
            ["check", *LENET, "--layuot", "tokens", "--quite"],
            "unrecognized arguments: --layuot tokens --quite; did you mean --layout for --layuot, --quiet for "
            "--quite?",
        ),
        (["check", *LENET, "--verbose"], "unrecognized arguments: --verbose\n"),
        (["profile", *LENET_CANVAS[1:], "--shift", "1,0", "--upto", "conv4"], "did you mean --up-to?"),
    ],
    ids=["one", "two", "none-close", "profile"],
)
def test_a_misspelt_option_gets_the_subcommands_usage_and_a_guess(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: equivariance {argv[0]} MODEL")
    assert said in err


TOKENS = """
import torch

class Tokenizer(torch.nn.Module):
    '''Patches of 4x4 as tokens after a class token, then a per-token linear map: tokens on a grid.'''

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Conv2d(1, 4, 4, stride=4)
        self.cls = torch.nn.Parameter(torch.randn(1, 1, 4))
        self.mix = torch.nn.Linear(4, 4)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        return self.mix(torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1))
"""


@pytest.fixture
def tokenizer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    (tmp_path / "tokenizer.py").write_text(TOKENS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return [
        "check", "tokenizer:Tokenizer", "--input-shape", "2,1,16,16", "--boundary", "circular",
        "--stride", "4", "--max-shift", "4",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "layout",
    [
        ["--layout", "tokens"],
        ["--layout", "tokens", "--prefix", "1"],
        ["--layout", "tokens", "--grid", "4,4", "--prefix", "1"],
        ["--layout", "Tokens((4, 4), prefix=1)"],
    ],
    ids=["inferred", "prefix", "grid-and-prefix", "as-python"],
)
def test_layout_checks_tokens_on_their_grid(
    layout: list[str], tokenizer: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*tokenizer, *layout, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["passed"], data["layout"], len(data["results"])) == (True, "tokens", 9)


def test_layout_is_needed_for_tokens_and_the_error_names_the_option(
    tokenizer: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(tokenizer) == 2
    err = capsys.readouterr().err
    assert "pass layout='channels_last' or layout=Tokens(grid, prefix=...)" in err
    assert (
        "on the command line: layout= is --layout, layer= is --layer, check_invariance is --invariance" in err
    )
    # a wrong prefix leaves tokens that are no grid: the check refuses it
    assert main([*tokenizer, "--layout", "tokens", "--grid", "4,4", "--prefix", "2"]) == 2
    capsys.readouterr()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--layout", "rows"], "argument --layout: expected channels_first, channels_last, tokens or Tokens((H, W), "
         "prefix=K), found 'rows'; e.g. --layout tokens --grid 14,14 --prefix 1"),
        (["--layout", "Tokens(__import__('os'))"], "argument --layout: expected channels_first"),
        (["--prefix", "1"], "argument --prefix: describes tokens; pass it with --layout tokens"),
        (["--layout", "channels_last", "--grid", "4,4"], "argument --grid: describes tokens; pass it with --layout tokens"),
        (["--layout", "tokens", "--grid", "0,4"], "argument --grid: grid must be a tuple of positive sizes"),
        (["--layout", "channels_last", "--invariance"], "argument --layout: an invariance check compares the whole "
         "output"),
    ],
    ids=["unknown", "code", "prefix-alone", "grid-not-tokens", "bad-grid", "invariance"],
)  # fmt: skip
def test_bad_layouts_are_usage_errors(
    argv: list[str], message: str, tokenizer: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*tokenizer, *argv]) == 2
    assert f"equivariance check: error: {message}" in capsys.readouterr().err


# -- points, sets and graphs (issue 25) ------------------------------------------------------------------

CLI_PAGE = Path(__file__).parents[1] / "docs" / "cli.md"
POINT_FIELDS = ["--inputs", "Positions(), Scalars()", "--outputs", "Scalars(nodes=None), Vectors()"]


def _page_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """docs/cli.md's ``mols.py``, written to the current directory, and its console transcript."""
    page = CLI_PAGE.read_text()
    module = re.search(r"```python\n(# mols\.py\n.*?)```", page, re.DOTALL)
    console = re.search(r"```console\n(.*?)```", page, re.DOTALL)
    assert module is not None
    assert console is not None
    (tmp_path / "mols.py").write_text(module.group(1))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    text = console.group(1).replace("\\\n", "")
    return re.findall(r"^\$ (.*)\n((?:(?!\$ ).*\n)*)", text, re.MULTILINE)


def test_the_pages_point_example_passes_and_its_leak_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import doctest
    import shlex

    runs = _page_example(tmp_path, monkeypatch)
    assert len(runs) == 2
    for (command, expected), code in zip(runs, (0, 1)):
        argv = shlex.split(command)
        assert main(argv[1:]) == code  # the leak is a negative control: it must fail
        out = capsys.readouterr().out
        assert doctest.OutputChecker().check_output(expected, out, doctest.ELLIPSIS), out


def test_one_tensor_of_points_random_or_from_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    points = ["--input-shape", "4,6,3", "--transforms", "so3:8", "--inputs", "Positions()", "-q"]
    assert main(["check", "torch.nn:Identity", *points, "--outputs", "Positions()"]) == 0
    assert "equivariance check PASSED: Identity, 8 rotations" in capsys.readouterr().out
    # a linear map of the coordinates is not rotation-equivariant; its flattening is not invariant
    assert main(["check", "torch.nn:Linear", "--arg", "in_features=3", "--arg", "out_features=3", *points,
                 "--outputs", "Vectors()"]) == 1  # fmt: skip
    assert main(["check", "torch.nn:Flatten", *points, "--invariance"]) == 1
    assert "invariance check FAILED: Flatten, 8 rotations, 8 failed" in capsys.readouterr().out
    torch.save(torch.randn(3, 5, 3), tmp_path / "pos.pt")
    sets = ["--transforms", "Permutations(8, n=5)", "--inputs", "Positions()", "--outputs", "Positions()"]
    assert main(["check", "torch.nn:Identity", "--input", str(tmp_path / "pos.pt"), *sets, "-q"]) == 0
    pooled = ["--input", str(tmp_path / "pos.pt"), "--transforms", "Permutations(8, n=5)"]
    assert main(["check", "torch.nn:Flatten", *pooled, "--inputs", "Positions()", "--invariance"]) == 1


def test_a_graph_of_torch_geometric_from_an_example(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch_geometric")
    (tmp_path / "graphs_here.py").write_text(
        "import torch\nfrom torch_geometric.data import Batch, Data\n\n"
        "def graphs():\n"
        "    ring = lambda n: torch.stack([torch.arange(n), (torch.arange(n) + 1) % n])\n"
        "    return Batch.from_data_list([Data(pos=torch.randn(n, 3), edge_index=ring(n)) for n in (4, 6)])\n\n"
        "def messages(index=False):\n"
        "    def forward(data):\n"
        "        src, dst = data.edge_index\n"
        "        w = (data.pos[src] - data.pos[dst]).norm(dim=-1, keepdim=True)\n"
        "        if index:  # the node's place in its own graph: breaks permutations\n"
        "            w = w + 0.3 * (src - data.ptr[data.batch[src]]).unsqueeze(-1)\n"
        "        return torch.zeros_like(data.pos).index_add(0, src, w * (data.pos[src] - data.pos[dst]))\n"
        "    return forward\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    fields = ["--inputs", "{'pos': Positions(nodes=0), 'edge_index': EdgeIndex()}", "--outputs",
              "Vectors(nodes=0)", "--example", "graphs_here:graphs", "--dtype", "float64", "-q"]  # fmt: skip
    for transforms in ("node-permutations:4", "so3:8"):
        assert main(["check", "graphs_here:messages", *fields, "--transforms", transforms]) == 0
    capsys.readouterr()
    broken = ["check", "graphs_here:messages", "--arg", "index=True", *fields]
    assert main([*broken, "--transforms", "node-permutations:4"]) == 1
    assert main([*broken, "--transforms", "so3:8"]) == 0  # the index breaks permutations, not rotations
    assert "FAILED" in capsys.readouterr().out


def _module_and_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    _page_example(tmp_path, monkeypatch)
    return ["check", "mols:PairPotential", "--example", "mols:molecules"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (POINT_FIELDS, r"argument --inputs: .* pass it, e\.g\. --transforms so3:64"),
        (["--transforms", "e3:8"], r"argument --transforms: .* pass --inputs, e\.g\. --inputs 'Positions\(\)'"),
        (["--transforms", "e3:8", "--inputs", "Positions(), Scalars()"],
         r"argument --transforms: pass --outputs, .* or --invariance"),
        (["--transforms", "e3:8", *POINT_FIELDS, "--invariance"], r"argument --outputs: --invariance compares"),
        (["--transforms", "e3:8", *POINT_FIELDS, "--max-shift", "2"],
         r"argument --max-shift: an option of grids \(shifts\); .* drop it"),
        (["--transforms", "e3:8", *POINT_FIELDS, "--boundary", "circular"], r"argument --boundary: an option of"),
        (["--transforms", "so4:8", *POINT_FIELDS], r"expected NAME:COUNT with NAME one of so2, .* found 'so4:8'"),
        (["--transforms", "e3:0", *POINT_FIELDS], r"COUNT a positive integer, found 'e3:0'"),
        (["--transforms", "Permutations(16)", *POINT_FIELDS],
         r"found 'Permutations\(16\)' \(.*missing 1 required keyword-only argument: 'n'\)"),
        (["--transforms", "e3:8", "--inputs", "Positions(), Scalers()", "--outputs", "Vectors()"],
         r"argument --inputs: expected Positions, .* found 'Positions\(\), Scalers\(\)' \(Scalers\(\) is none"),
        (["--transforms", "e3:8", "--inputs", "__import__('os').getcwd()", "--outputs", "Vectors()"],
         r"argument --inputs: expected Positions, .* is none of them"),
        (["--transforms", "Rotation.__init__.__globals__", *POINT_FIELDS], r"is none of them"),
    ],
    ids=["no-transforms", "no-inputs", "no-outputs", "outputs-and-invariance", "max-shift", "boundary",
         "unknown-group", "zero-count", "permutations-without-n", "misspelt-field", "code", "dunder"],
)  # fmt: skip
def test_bad_point_options_are_usage_errors_before_any_work(
    extra: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    assert main([*_module_and_example(tmp_path, monkeypatch), *extra]) == 2
    err = capsys.readouterr().err
    assert "usage: equivariance check" in err
    assert re.search(message, err), err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--example", "mols:nothing"], r"--example: module 'mols' has no attribute 'nothing'"),
        (["--example", "mols:PairPotential"], r"--example mols:PairPotential returned PairPotential; return"),
        (["--example", "mols:molecules", "--transforms", "e3:8", "--inputs", "Positions()", "--outputs",
          "Vectors()"], r"x holds 2 positional arguments .*\n  on the command line: inputs= is --inputs"),
    ],
    ids=["missing", "a-model", "too-few-fields"],
)  # fmt: skip
def test_a_bad_example_is_a_usage_error_that_says_what_to_return(
    argv: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    _page_example(tmp_path, monkeypatch)
    fields = [] if "--inputs" in argv else ["--transforms", "e3:8", *POINT_FIELDS]
    assert main(["check", "mols:PairPotential", *argv, *fields]) == 2
    err = capsys.readouterr().err
    assert err.startswith("equivariance: error:")
    assert re.search(message, err), err


def test_transforms_of_a_grid_rotate_and_flip_it(capsys: pytest.CaptureFixture[str]) -> None:
    grid = ["--input-shape", "2,1,8,8", "--transforms", "Rot90(1), Flip(-1)", "-q"]
    assert main(["check", "torch.nn:Identity", *grid]) == 0
    assert "equivariance check PASSED: Identity, 2 transforms" in capsys.readouterr().out
    conv = [
        "--arg",
        "in_channels=1",
        "--arg",
        "out_channels=2",
        "--arg",
        "kernel_size=3",
        "--arg",
        "padding=1",
    ]
    assert main(["check", "torch.nn:Conv2d", *conv, *grid]) == 1  # a learned kernel is not symmetric
    assert main(["check", "torch.nn:Flatten", *grid, "--invariance"]) == 1
    assert main(["check", "torch.nn:Identity", *grid, "--max-shift", "2"]) == 2
    err = capsys.readouterr().err
    assert "transforms= replaces the shifts, so max_shift cannot be passed with it" in err
    assert "on the command line: transforms= is --transforms" in err
