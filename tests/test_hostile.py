"""The hostile run of issue 12: bad arguments by entry point.

Every call here is one a hostile (or hurried) user made. Each must raise the
library's own `InvalidArgument`, whose message says what was expected, what was
found and how to fix it, never a raw Python or torch error; and the model, its
input and the global RNG must be exactly as they were. Calls that used to fail
with a raw error but are valid (numpy and 0-dim torch scalars where numbers are
expected) must now run, and leave everything as found too.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from equivariance import InvalidArgument, check_equivariance
from equivariance.audit import audit
from equivariance.invariance import consistency, logit_change, prediction_change
from equivariance.linear import as_convolution, impulse_response, nearest_equivariant
from equivariance.shifts import shifts_in_box


def classifier() -> nn.Module:
    torch.manual_seed(2)  # it tells images() apart (a classifier with one prediction warns)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4)
    )


def images() -> torch.Tensor:
    x = torch.zeros(4, 1, 10, 10)
    x[..., 2:8, 2:8] = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    return x


Call = Callable[[nn.Module, torch.Tensor, Path], object]


def audit_with(**options: Any) -> Call:
    def call(model: nn.Module, x: torch.Tensor, folder: Path) -> object:
        arguments: dict[str, Any] = {"layer": "0", "progress": False, **options}
        if arguments.get("checkpoint") == "in-folder":
            arguments["checkpoint"] = folder / "audit.json"
        return audit(
            model,
            arguments.pop("data", [x[:2], x[2:]]),
            arguments.pop("shifts", shifts_in_box(1)),
            **arguments,
        )

    return call


def damaged_checkpoint(model: nn.Module, x: torch.Tensor, folder: Path) -> object:
    path = folder / "audit.json"
    audit(model, [x[:2]], shifts_in_box(1), layer="0", checkpoint=path, progress=False)
    state = json.loads(path.read_text())
    path.write_text(json.dumps({**state, "settings": None}))
    return audit(model, [x[:2], x[2:]], shifts_in_box(1), layer="0", checkpoint=path, progress=False)


BAD: dict[str, tuple[Call, str]] = {
    "audit margin=1.5": (audit_with(margin=1.5), r"margin must be an integer, found 1.5 \(float\)"),
    "audit stride='AUTO'": (audit_with(stride="AUTO"), r"stride must be an integer, found 'AUTO' \(str\)"),
    "audit stride=(1, 1, 1)": (
        audit_with(stride=(1, 1, 1)),
        r"stride \(1, 1, 1\) has 3 entries but there are 2 spatial dims; pass one int for all dims or a tuple of 2",
    ),
    "audit checkpoint=3": (
        audit_with(checkpoint=3),
        r"checkpoint must be a file path \(a str or a pathlib.Path\) or None, found 3 \(int\); pass e.g. "
        r"checkpoint='audit.json'",
    ),
    "audit checkpoint_every=2.0": (
        audit_with(checkpoint_every=np.float64(2.0)),
        r"checkpoint_every must be an integer, found np.float64\(2.0\) \(float64\)|checkpoint_every must be an "
        r"integer, found 2.0 \(float64\)",
    ),
    "audit batch_size=0": (
        audit_with(batch_size=0),
        r"batch_size must be positive, found 0; pass 1 or more, or 'auto'",
    ),
    "audit rtol='1e-3'": (
        audit_with(rtol="1e-3"),
        r"rtol must be a non-negative number, found '1e-3' \(str\)",
    ),
    "audit boundary='reflect'": (
        audit_with(boundary="reflect"),
        r"boundary must be one of 'zeros', 'circular', found 'reflect' \(str\)",
    ),
    "audit a tensor as data": (
        lambda model, x, folder: audit_with(data=x)(model, x, folder),
        r"data is a tensor of shape \(4, 1, 10, 10\), which audit would iterate sample by sample; pass a list of "
        r"batches, e.g. \[x\] for one batch, or TensorDataset\(x\) to batch it with loader_batch_size",
    ),
    "audit a shift as the shift list": (
        audit_with(shifts=(1, 0)),
        r"shifts \(1, 0\) is a tuple of ints, which reads as one shift; pass a list of shifts: \[\(1, 0\)\]",
    ),
    "audit a classifier with 4-D output": (
        lambda model, x, folder: audit_with(classifier=model[0])(model, x, folder),
        r"the classifier returned an output of shape \(2, 3, 10, 10\); top-1 consistency needs logits \(N, "
        r"classes\): pass a classifier that ends in pooling and a linear head, or drop classifier=",
    ),
    "audit a checkpoint with settings null": (
        damaged_checkpoint,
        r"the audit checkpoint .*audit.json is damaged \(its settings must be an object with the keys \[.*\], "
        r"found null\); delete .*audit.json or pass another checkpoint path to start afresh",
    ),
    "audit a missing directory": (
        audit_with(checkpoint=Path("/nonexistent-equivariance-dir/audit.json")),
        r"cannot write the audit checkpoint /nonexistent-equivariance-dir/audit.json: the directory "
        r"/nonexistent-equivariance-dir does not exist; create it first \(checked before any work\)",
    ),
    "audit output=np.int64(0) with a checkpoint": (
        audit_with(output=np.int64(0), layer=None, checkpoint="in-folder"),
        r"output must be an int index, a str key or a callable, found np.int64\(0\) \(int64\)|output must be an "
        r"int index, a str key or a callable, found 0 \(int64\)",
    ),
    "consistency seed=2**70": (
        lambda model, x, folder: consistency(model, x, seed=2**70),
        r"seed must be an integer from -2\*\*63 to 2\*\*64 - 1 \(what a torch.Generator takes\), found "
        r"1180591620717411303424; pass a smaller one, e.g. seed % 2\*\*64",
    ),
    "logit_change seed='0'": (
        lambda model, x, folder: logit_change(model, x, seed="0"),
        r"seed must be an integer, found '0' \(str\)",
    ),
    "check_equivariance a shift as the shift list": (
        lambda model, x, folder: check_equivariance(model[0], x, (1, 0)),
        r"shifts \(1, 0\) is a tuple of ints, which reads as one shift; pass a list of shifts: \[\(1, 0\)\] for "
        r"that shift, or a list of ints, e.g. \[1, 0\], for shifts of a 1-D signal",
    ),
    "as_convolution a ReLU": (
        lambda model, x, folder: as_convolution(nn.ReLU(), (1, 8)),
        r"op is not linear: .* as_convolution is about linear \(or affine\) operators: pass the linear part alone",
    ),
    "impulse_response a conv and ReLU": (
        lambda model, x, folder: impulse_response(nn.Sequential(model[0], model[1]), (1, 10, 10)),
        r"op is not linear: .* impulse_response is about linear \(or affine\) operators",
    ),
    "nearest_equivariant abs": (
        lambda model, x, folder: nearest_equivariant(torch.abs, (1, 8)),
        r"op is not linear: .* nearest_equivariant is about linear \(or affine\) operators",
    ),
}


def unchanged(model: nn.Module, x: torch.Tensor, call: Call, folder: Path) -> object:
    """Run ``call`` and check that the model, the input and the global RNG are as they were."""
    weights, training = copy.deepcopy(model.state_dict()), [m.training for m in model.modules()]
    original, rng = x.clone(), torch.get_rng_state()
    try:
        return call(model, x, folder)
    finally:
        state = model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in weights.items())
        assert [m.training for m in model.modules()] == training
        assert torch.equal(x, original)
        assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_argument_is_a_clear_library_error_and_changes_nothing(name: str, tmp_path: Path) -> None:
    call, message = BAD[name]
    model = classifier()
    with pytest.raises(InvalidArgument, match=message):
        unchanged(model, images(), call, tmp_path)


NUMBERS: dict[str, Call] = {
    "audit stride=np.int64(1)": audit_with(stride=np.int64(1)),
    "audit margin=(np.int64(0), 0)": audit_with(margin=(np.int64(0), 0)),
    "audit rtol=np.float32(1e-3)": audit_with(rtol=np.float32(1e-3), checkpoint="in-folder"),
    "audit atol=torch.tensor(1e-6)": audit_with(atol=torch.tensor(1e-6), checkpoint="in-folder"),
    "audit loader_batch_size, batch_size, checkpoint_every as torch and numpy scalars": audit_with(
        loader_batch_size=torch.tensor(2),
        batch_size=np.int32(3),
        checkpoint_every=np.uint8(1),
        checkpoint="in-folder",
    ),
    "consistency seed=np.int64(7), pairs=torch.tensor(2)": lambda model, x, folder: consistency(
        model, x, seed=np.int64(7), pairs=torch.tensor(2)
    ),
    "prediction_change boundary='zeros'": lambda model, x, folder: prediction_change(
        model, x, boundary="zeros"
    ),
}


@pytest.mark.parametrize("name", list(NUMBERS))
def test_numpy_and_torch_scalars_and_the_zero_boundary_are_accepted(name: str, tmp_path: Path) -> None:
    model = classifier()
    assert unchanged(model, images(), NUMBERS[name], tmp_path) is not None
    for path in tmp_path.glob("audit.json"):  # what a checkpoint stores: plain JSON numbers
        settings = json.loads(path.read_text())["settings"]
        assert all(type(v) in (int, float, type(None)) for v in (settings["rtol"], settings["atol"]))
