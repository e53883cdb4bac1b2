"""Training the seed's LeNet: the loop learns, is deterministic, keeps equivariance; the progress bar.

Fast by construction: a few hundred of the offline digits, one or two epochs.
The accuracy target (97% on the offline digits in under two minutes) is a
script, ``benchmarks/train_digits.py``, not a timed test.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from equivariance import InvalidArgument, check_equivariance
from equivariance._engine import progress as _progress
from equivariance._engine.progress import Progress, format_seconds
from equivariance.datasets import Digits, digits, embed_in_canvas
from equivariance.models import LeNet
from equivariance.training import evaluate, load, save, train


@pytest.fixture(scope="module")
def small() -> tuple[Digits, Digits]:
    train_data, val_data = digits().split(0.8, seed=0)
    return train_data[:256], val_data[:100]


def test_one_epoch_on_a_few_hundred_digits_learns(small: tuple[Digits, Digits]) -> None:
    train_data, val_data = small
    torch.manual_seed(0)
    model = LeNet()
    before_loss, before_accuracy = evaluate(model, val_data)
    result = train(model, train_data, val_data, epochs=2, batch_size=32, progress=False)
    assert len(result.history) == 2
    assert result.history[-1].val_loss < before_loss
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.val_accuracy > before_accuracy
    assert result.val_error == pytest.approx(1 - result.val_accuracy)
    assert result.samples == 256
    assert model.training  # as it was before
    text = str(result)
    assert text.startswith("trained 2 epochs on 256 digits in ")
    assert "epoch  train loss  val loss  val accuracy  seconds" in text


def test_training_is_deterministic_given_the_seed(small: tuple[Digits, Digits]) -> None:
    train_data, _ = small
    weights = []
    for _ in range(2):
        torch.manual_seed(1)
        model = LeNet()
        train(model, train_data[:64], epochs=1, batch_size=16, seed=5, progress=False)
        weights.append(model.conv1.weight.detach().clone())
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=0)


def test_a_trained_lenet_is_still_equivariant(small: tuple[Digits, Digits]) -> None:
    train_data, val_data = small
    torch.manual_seed(0)
    model = LeNet()
    train(model, train_data, epochs=1, batch_size=32, optimizer="sgd", lr=0.05, progress=False)
    assert float(model.conv1.weight.grad.abs().sum()) > 0  # type: ignore[union-attr]
    canvas = embed_in_canvas(val_data.images[:4], size=38)
    report = check_equivariance(model, canvas, max_shift=3, layer="conv4")
    assert report.passed, str(report)


def test_training_restores_the_training_flag_and_accepts_pairs(small: tuple[Digits, Digits]) -> None:
    train_data, _ = small
    model = LeNet().train()
    result = train(
        model, (train_data.images[:32], train_data.labels[:32]), epochs=1, schedule="constant", progress=False
    )
    assert model.training
    assert result.val_accuracy != result.val_accuracy  # NaN without validation data


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = LeNet()
    save(model, tmp_path / "lenet.pt")
    other = load(LeNet(), tmp_path / "lenet.pt")
    for (name, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    with pytest.raises(InvalidArgument, match=r"the weights in .*lenet.pt' do not fit Linear: "):
        load(nn.Linear(2, 2), tmp_path / "lenet.pt")
    with pytest.raises(
        InvalidArgument, match=r"no saved weights at .*missing.pt'; save them first with save\(\)"
    ):
        load(LeNet(), tmp_path / "missing.pt")


def test_the_progress_bar_writes_one_line_per_epoch_off_a_terminal(
    small: tuple[Digits, Digits], capsys: pytest.CaptureFixture[str]
) -> None:
    train_data, _ = small
    train(LeNet(), train_data[:40], epochs=2, batch_size=20, progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("epoch 1/2 |########################| 2/2 [")
    assert " batch/s] loss=" in lines[1]
    train(LeNet(), train_data[:40], epochs=1, batch_size=20, progress=False)
    assert capsys.readouterr().err == ""


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_redraws_in_place_on_a_terminal() -> None:
    out = Terminal()
    with Progress(3, "work", stream=out) as bar:
        for _ in range(3):
            bar.update(loss=1.0)
    text = out.getvalue()
    assert text.startswith("\rwork |")
    assert text.endswith("3/3 [0:00<0:00, " + text.split("3/3 [0:00<0:00, ")[-1])
    assert text.endswith("loss=1\n")
    assert "\n" not in text[:-1]
    assert format_seconds(59.6) == "1:00"
    quiet = Terminal()
    with Progress(3, "off", stream=quiet, enabled=False) as bar:
        bar.update()
    assert quiet.getvalue() == ""


def screen(text: str) -> list[str]:
    """What a terminal shows after ``text``: a carriage return moves back, characters overwrite."""
    lines, row, column = [""], 0, 0
    for char in text:
        if char == "\r":
            column = 0
        elif char == "\n":
            lines.append("")
            row, column = row + 1, 0
        else:
            line = lines[row].ljust(column)
            lines[row] = line[:column] + char + line[column + 1 :]
            column += 1
    return lines


def test_a_shorter_redraw_leaves_no_stray_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(float(t) for t in range(100))
    monkeypatch.setattr(_progress, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    out = Terminal()
    with Progress(2, "work", stream=out) as bar:
        bar.update(loss=0.123456)  # drawn as loss=0.1235
        bar.update(loss=1.0)  # drawn 5 characters shorter
    drawn = out.getvalue().split("\r")
    assert drawn[1].rstrip().endswith("] loss=0.1235")
    last = drawn[-1].rstrip()
    assert re.fullmatch(r"work \|#{24}\| 2/2 \[0:0\d<0:00, 0\.\d it/s\] loss=1", last)
    assert [line.rstrip() for line in screen(out.getvalue())] == [last, ""]
    assert screen("\rabcdef\rxy\n") == ["xycdef", ""]  # the emulator itself: what the bar had left


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 0}, r"epochs must be positive, found 0"),
        ({"batch_size": 2.5}, r"batch_size must be an integer, found 2.5 \(float\)"),
        ({"lr": -1.0}, r"lr must be a finite non-negative number, found -1.0"),
        ({"optimizer": "lbfgs"}, r"optimizer must be 'adam' or 'sgd', found 'lbfgs' \(str\)"),
        ({"schedule": "cosine"}, r"schedule must be 'onecycle' or 'constant', found 'cosine' \(str\)"),
        (
            {"val_data": "x"},
            r"val_data must be Digits or a pair \(images, labels\) of tensors, found 'x' \(str\)",
        ),
    ],
    ids=["epochs", "batch-size", "lr", "optimizer", "schedule", "val-data"],
)
def test_bad_training_arguments(kwargs: dict[str, object], match: str) -> None:
    data = Digits(torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long), "x")
    with pytest.raises(InvalidArgument, match=match):
        train(LeNet(), data, progress=False, **kwargs)  # type: ignore[arg-type]


def test_bad_training_data() -> None:
    with pytest.raises(
        InvalidArgument, match=r"train_data's labels must be int64 class indices, found torch.float32"
    ):
        train(LeNet(), (torch.zeros(4, 1, 28, 28), torch.zeros(4)), progress=False)
    with pytest.raises(
        InvalidArgument, match=r"train_data must hold images \(N, ...\) and labels \(N,\) with N > 0"
    ):
        train(LeNet(), (torch.zeros(4, 1, 28, 28), torch.zeros(3, dtype=torch.long)), progress=False)
    with pytest.raises(InvalidArgument, match=r"model must be a torch.nn.Module, found 'lenet' \(str\)"):
        train("lenet", (torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long)))  # type: ignore[arg-type]
