"""Devices, dtypes and layouts: channels_last inputs, half precision, torch.compile and CUDA."""

from __future__ import annotations

import pytest
import torch
from conftest import canvas

from equivariance import check_equivariance
from equivariance.models import MLP, LeNet


def test_channels_last_inputs_and_model() -> None:
    model = LeNet().to(memory_format=torch.channels_last)
    x = canvas(4).to(memory_format=torch.channels_last)
    report = check_equivariance(model, x, max_shift=2, layer="conv4")
    assert report.passed
    reference = check_equivariance(LeNet(), canvas(4), max_shift=2, layer="conv4")
    assert max(r.error for r in report.results) == pytest.approx(
        max(r.error for r in reference.results), abs=1e-5
    )


def test_channels_last_three_channels() -> None:
    conv = torch.nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 20, 20).to(memory_format=torch.channels_last)
    assert check_equivariance(conv, x, max_shift=2).passed


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_passes_with_its_tolerance(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    report = check_equivariance(LeNet().to(dtype), canvas(2).to(dtype), max_shift=1, layer="conv4")
    assert report.passed
    assert report.rtol == {torch.float16: 3e-2, torch.bfloat16: 1e-1}[dtype]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_negative_control(dtype: torch.dtype) -> None:
    report = check_equivariance(MLP(input_size=38).to(dtype), canvas(2).to(dtype), max_shift=1)
    assert not report.passed
    assert max(r.error for r in report.results) > 0.5


def test_compiled_model_with_a_layer_hook() -> None:
    compile_ = getattr(torch, "compile", None)
    if compile_ is None:
        pytest.skip("torch.compile is not available")
    torch._dynamo.reset()
    # the eager backend runs dynamo's graph capture (and its guards on the hooks the check
    # installs) without compiling kernels, which would take minutes on a small CPU runner
    model = compile_(LeNet(), backend="eager")
    x = canvas(2)
    assert check_equivariance(model, x, max_shift=1, layer="conv4").passed
    assert not check_equivariance(compile_(MLP(input_size=38), backend="eager"), x, max_shift=1).passed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda(dtype: torch.dtype) -> None:
    model = LeNet().cuda().to(dtype)
    x = canvas(8).cuda().to(dtype)
    report = check_equivariance(model, x, max_shift=3, layer="conv4")
    assert report.passed
    assert report.device.startswith("cuda")
