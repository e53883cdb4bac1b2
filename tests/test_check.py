"""check_* / assert_*: the report, the verdict, tolerances, batching and the hints."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import canvas
from torch import nn

from equivariance import (
    EquivarianceError,
    EquivarianceReport,
    InvalidArgument,
    Shift,
    assert_equivariant,
    assert_invariant,
    check_equivariance,
    check_invariance,
    equivariance_error,
    multiples_of,
    profile_equivariance,
    shifts_in_box,
)
from equivariance.models import MLP, LeNet


@pytest.fixture(scope="module")
def lenet_report() -> EquivarianceReport:
    torch.manual_seed(0)
    return check_equivariance(LeNet(), canvas(batch=8), max_shift=5, layer="conv4")


@pytest.fixture(scope="module")
def mlp_report() -> EquivarianceReport:
    torch.manual_seed(0)
    return check_equivariance(MLP(input_size=38), canvas(batch=8), max_shift=5)


def test_lenet_passes_the_issue_example(lenet_report: EquivarianceReport) -> None:
    report = lenet_report
    assert report.passed
    assert len(report.elements) == 121
    assert set(report.elements) == set(shifts_in_box(5, ndim=2))
    assert report.max_error <= report.rtol
    assert report.subject == "LeNet.conv4"
    assert report.input_shape == (8, 1, 38, 38)
    assert report.output_shape == (8, 5, 22, 22)
    assert (report.dtype, report.device, report.boundary) == ("float32", "cpu", "zeros")
    assert report.tolerance_source == "float32 default"
    assert report.hints == ()


def test_mlp_fails_every_nonzero_shift(mlp_report: EquivarianceReport) -> None:
    report = mlp_report
    assert not report.passed
    assert len(report.failures) == 120
    assert all(r.error > 0.5 for r in report.results if not r.element.is_identity)
    (identity,) = [r for r in report.results if r.element.is_identity]
    assert identity.passed
    assert report.worst_element == max(report.results, key=lambda r: r.error).element
    assert any("dense" in hint.lower() for hint in report.hints)


def test_report_numbers_agree_with_equivariance_error(mlp_report: EquivarianceReport) -> None:
    torch.manual_seed(0)
    model, x = MLP(input_size=38), canvas(batch=8)
    for result in mlp_report.results[:5]:
        single = equivariance_error(model, x, result.element, reduction="max")
        assert result.error == pytest.approx(float(single), rel=1e-5)
    assert mlp_report.mean_error == pytest.approx(sum(mlp_report.errors) / 121)
    assert mlp_report.max_error == max(mlp_report.errors)


def test_str_is_a_table_worst_first(mlp_report: EquivarianceReport) -> None:
    text = str(mlp_report)
    lines = text.splitlines()
    assert lines[0].startswith("equivariance check FAILED: MLP, 121 shifts, 120 failed; max error")
    assert "tolerance rtol=1e-04, atol=1e-06 (float32 default); noise floor" in text
    rows = [line for line in lines if line.rstrip().endswith(("FAIL", "ok"))]
    errors = [float(line.split()[-2]) for line in rows]
    assert errors == sorted(errors, reverse=True)
    assert str(mlp_report.worst_element) in rows[0]
    assert "... 113 more shifts, 112 failed" in text
    assert "hint:" in text


def test_to_dict_is_json_serializable(mlp_report: EquivarianceReport) -> None:
    data = json.loads(json.dumps(mlp_report.to_dict()))
    assert data["passed"] is False
    assert data["failed"] == 120
    assert len(data["results"]) == 121
    assert data["results"][0]["element"] == [-5, -5]
    assert data["worst_element"] == list(mlp_report.worst_element)
    assert data["rtol"] == mlp_report.rtol
    assert data["kind"] == "equivariance"


def test_batching_does_not_change_the_numbers() -> None:
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 14 * 14, 3 * 14 * 14))
    model = nn.Sequential(model, nn.Unflatten(1, (3, 14, 14)))
    x = torch.randn(3, 1, 16, 16)
    reports = [check_equivariance(model, x, max_shift=1, batch_size=b) for b in (None, 1, 2, 5, 27)]
    for report in reports[1:]:
        assert report.errors == pytest.approx(reports[0].errors, rel=1e-5, abs=1e-6)  # identity: noise
    assert [r.batch_size for r in reports] == [reports[0].batch_size, 1, 2, 5, 27]


def test_noise_floor_sees_batch_dependent_numerics() -> None:
    def batch_dependent(x: torch.Tensor) -> torch.Tensor:
        return x * (1 + 1e-3 * (len(x) > 4))  # a kernel that changes with the batch size

    x = torch.randn(2, 1, 16)
    report = check_equivariance(batch_dependent, x, max_shift=1, batch_size=8)
    assert report.noise_floor == pytest.approx(1e-3, rel=1e-3)
    assert not report.passed
    assert any("identity shift alone measures" in hint for hint in report.hints)
    assert check_equivariance(batch_dependent, x, max_shift=1, batch_size=2).noise_floor == 0


def test_tolerances_by_dtype_and_from_the_caller() -> None:
    conv = nn.Conv1d(1, 2, 3)
    x = torch.randn(2, 1, 20)
    assert check_equivariance(conv, x).rtol == 1e-4
    report64 = check_equivariance(conv.double(), x.double())
    assert (report64.rtol, report64.tolerance_source) == (1e-10, "float64 default")
    given = check_equivariance(conv.float(), x, rtol=1e-3, atol=0)
    assert (given.rtol, given.atol, given.tolerance_source) == (1e-3, 0.0, "caller")
    half = check_equivariance(conv.to(torch.bfloat16), x.to(torch.bfloat16), rtol=None)
    assert half.rtol == 1e-1
    assert half.passed
    with pytest.raises(InvalidArgument, match=r"rtol must be a finite non-negative number, found -1.0"):
        check_equivariance(conv.float(), x, rtol=-1.0)


def test_a_loose_tolerance_passes_and_a_tight_one_fails() -> None:
    model = nn.Sequential(nn.Conv1d(1, 1, 3, padding=1), nn.Tanh())  # zero padding: border error only
    x = torch.randn(2, 1, 32)
    failed = check_equivariance(model, x, [Shift(1)], rtol=1e-6)
    assert not failed.passed
    assert check_equivariance(model, x, [Shift(1)], rtol=10 * failed.max_error).passed


def test_default_shifts_follow_the_stride() -> None:
    conv = nn.Conv2d(1, 2, 2, stride=2)
    x = torch.randn(2, 1, 20, 20)
    report = check_equivariance(conv, x, stride=2)
    assert report.passed
    assert set(report.elements) == set(multiples_of(2, max_shift=4, ndim=2))
    assert report.output_action == "shift / 2"
    assert len(check_equivariance(conv, x, stride=2, max_shift=2).elements) == 9


def test_a_check_that_cannot_fail_is_refused() -> None:
    conv = nn.Conv1d(1, 1, 3)
    x = torch.randn(1, 1, 16)
    with pytest.raises(InvalidArgument, match=r"only the identity \(0,\), a check that cannot fail"):
        check_equivariance(conv, x, stride=2, max_shift=1)
    with pytest.raises(InvalidArgument, match="only the identity"):
        check_equivariance(conv, x, [(0,)])
    with pytest.raises(InvalidArgument, match=r"pass either shifts= .* or max_shift="):
        check_equivariance(conv, x, [(1,)], max_shift=2)


def test_assert_equivariant_raises_with_the_report() -> None:
    x = canvas(batch=2)
    with pytest.raises(EquivarianceError) as info:
        assert_equivariant(MLP(input_size=38), x, max_shift=1)
    assert isinstance(info.value, AssertionError)
    message = str(info.value)
    assert "equivariance check FAILED: MLP, 9 shifts, 8 failed" in message
    assert "rtol 1e-04, float32" in message
    assert info.value.report is not None
    assert str(info.value.report.worst_element) in message
    report = assert_equivariant(LeNet(), x, max_shift=1, layer="conv4")
    assert report.passed


def test_the_hint_of_a_failed_layer_check_profiles_up_to_that_layer() -> None:
    class Pinned(nn.Module):  # adds a fixed pattern: position-dependent, not equivariant
        def forward(self, y: torch.Tensor) -> torch.Tensor:
            return y + torch.linspace(0, 1, y.shape[-1])

    model = nn.Sequential(nn.Conv2d(1, 2, 3), Pinned(), nn.Flatten(), nn.Linear(2 * 36 * 36, 3))
    x = canvas(batch=2)
    with pytest.raises(EquivarianceError) as info:
        assert_equivariant(model, x, max_shift=1, layer="1")
    hint = str(info.value).splitlines()[-1]
    assert "equivariance.profile_equivariance(model, x, shift=" in hint
    assert ", up_to='1') gives the error of every layer" in hint
    # the hint's call runs and names the culprit
    worst = info.value.report.worst_element if info.value.report else None
    assert profile_equivariance(model, x, worst, up_to="1").first_failure.name == "1"  # type: ignore[arg-type,union-attr]


def test_check_and_assert_invariant() -> None:
    pool = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular"), nn.AdaptiveMaxPool2d(1), nn.Flatten()
    )
    x = torch.randn(3, 1, 12, 12)
    report = assert_invariant(pool, x, shifts=multiples_of(1, 3), boundary="circular")
    assert report.kind == "invariance"
    assert report.output_action == "none (invariance)"
    assert report.output_shape == (3, 4)
    logits = check_invariance(LeNet(), canvas(batch=2, size=28, content=20))
    assert not logits.passed
    with pytest.raises(EquivarianceError, match="invariance check FAILED: LeNet"):
        assert_invariant(LeNet(), canvas(batch=2, size=28, content=20))


# -- hints -----------------------------------------------------------------------------------------


def test_hint_for_a_stride_pattern() -> None:
    # Downsample by 2, then upsample back: exact for even shifts, wrong for odd ones.
    model = nn.Sequential(nn.Conv2d(1, 4, 2, stride=2), nn.ReLU(), nn.Upsample(scale_factor=2))
    x = torch.randn(2, 1, 24, 24)
    report = check_equivariance(model, x, max_shift=2)
    assert {r.element for r in report.results if r.passed} == set(multiples_of(2, 2))
    assert any("errors only at shifts that 2 does not divide" in h for h in report.hints)
    assert any("followed by upsampling" in h and "multiples_of(2" in h for h in report.hints)


def test_hint_for_a_subsampled_output() -> None:
    report = check_equivariance(nn.Conv2d(1, 2, 2, stride=2), torch.randn(2, 1, 20, 20))
    assert not report.passed
    (hint,) = report.hints
    assert hint.startswith(
        "the output (10, 10) is 2 times smaller than the input (20, 20), so the model subsamples"
    )
    assert "pass stride='auto' to measure the stride" in hint


def test_a_strided_output_that_also_reads_as_channels_last_is_told_the_stride_first() -> None:
    """Issue 21 item 15: a (2, 8, 8, 8) output of a 17x17 input reads as channels last on the same 8x8
    grid, which says nothing the channels-first reading does not: the sizes name the stride first,
    and the layout comes after, as the weaker reading."""
    torch.manual_seed(0)
    report = check_equivariance(nn.Conv2d(3, 8, 3, stride=2), torch.rand(2, 3, 17, 17))
    assert not report.passed
    stride, layout = report.hints
    assert stride.startswith("the output (8, 8) is 2.1 times smaller than the input (17, 17), so the model")
    assert "pass layout='channels_last'" in layout


def test_an_output_that_reads_on_no_grid_channels_first_is_told_its_layout_alone() -> None:
    """The negative control: channels last, 6 channels on a 12x12 grid; read channels first it is a
    12x6 grid no one stride makes from 12x12, so the layout is the whole story and no stride is hinted."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3, padding=1, padding_mode="circular")

    def model(t: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = conv(t).permute(0, 2, 3, 1)
        return out

    x = torch.rand(2, 3, 12, 12)
    report = check_equivariance(model, x, boundary="circular")
    assert not report.passed
    (hint,) = report.hints
    assert "pass layout='channels_last'" in hint
    assert check_equivariance(model, x, boundary="circular", layout="channels_last").passed


def test_a_wrong_explicit_stride_is_named() -> None:
    net = nn.Sequential(*(nn.Conv2d(1, 1, 3, stride=2, padding=1) for _ in range(3)))
    x = torch.zeros(2, 1, 64, 64)
    x[..., 16:48, 16:48] = torch.rand(2, 1, 32, 32)
    report = check_equivariance(net, x, stride=4, max_shift=8)
    assert not report.passed
    assert report.hints[0].startswith(
        "stride=4 was given, but the output (8, 8) is 8 times smaller than the input (64, 64), so the "
        "model subsamples by more"
    )
    right = check_equivariance(net, x, stride=8, max_shift=8)
    assert not any("was given" in h for h in right.hints)  # negative control: the right stride


def test_valid_convolutions_before_a_stride_do_not_get_the_size_ratio_as_a_stride() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 5, 3), nn.Conv2d(5, 5, 3), nn.Conv2d(5, 5, 3), nn.Conv2d(5, 5, 3, stride=2)
    )
    x = torch.zeros(2, 3, 24, 24)
    x[..., 4:20, 4:20] = torch.rand(2, 3, 16, 16)
    report = check_equivariance(net, x)  # output 8x8: a ratio of 3, a stride of 2
    assert not any("stride=3" in h for h in report.hints)
    assert any("pass stride='auto'" in h for h in report.hints)
    assert check_equivariance(net, x, stride="auto").output_action == "shift / 2 (inferred)"


def test_hint_for_a_boundary_effect_suggests_a_margin_that_works() -> None:
    same = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1))
    x = torch.randn(2, 1, 24, 24)
    report = check_equivariance(same, x, max_shift=2)
    assert not report.passed
    (hint,) = [h for h in report.hints if "boundary effect" in h]
    assert "pass margin=2" in hint
    assert check_equivariance(same, x, max_shift=2, margin=2).passed


def test_hint_for_circular_boundary_on_a_valid_convolution() -> None:
    report = check_equivariance(nn.Conv2d(1, 2, 5), torch.randn(2, 1, 16, 16), boundary="circular")
    assert not report.passed
    assert any("only circularly padded models" in h for h in report.hints)


def test_tolerance_follows_an_output_less_precise_than_x() -> None:
    conv = nn.Conv1d(1, 2, 3)

    def half_head(t: torch.Tensor) -> torch.Tensor:
        return conv(t).to(torch.bfloat16)

    report = check_equivariance(half_head, torch.randn(2, 1, 20))
    assert report.dtype == "float32"
    assert (report.rtol, report.tolerance_source) == (1e-1, "bfloat16 default")


def test_numpy_and_torch_scalars_as_tolerances() -> None:
    import numpy as np

    conv = nn.Conv1d(1, 2, 3)
    x = torch.randn(2, 1, 20)
    assert check_equivariance(conv, x, rtol=np.float32(1e-3)).rtol == pytest.approx(1e-3)
    assert check_equivariance(conv, x, atol=torch.tensor(1e-5)).atol == pytest.approx(1e-5)


def test_a_huge_max_shift_is_refused_before_any_work() -> None:
    with pytest.raises(
        InvalidArgument,
        match=r"max_shift 1000 is as large as the signal or larger \(spatial size \(10, 10\)\); pass max_shift below 10",
    ):
        check_equivariance(nn.Conv2d(1, 1, 3), torch.randn(1, 1, 10, 10), max_shift=1000)


def test_default_box_fits_small_inputs() -> None:
    report = check_equivariance(nn.Conv1d(1, 1, 1), torch.randn(1, 1, 2))
    assert set(report.elements) == {Shift(-1), Shift(0), Shift(1)}


def test_summary_of_a_single_shift() -> None:
    report = check_equivariance(nn.Conv1d(1, 1, 3), torch.randn(1, 1, 9), [(1,)])
    assert report.summary().startswith("equivariance check PASSED: Conv1d, 1 shift;")


def test_hint_for_batch_statistics() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False))
    report = check_equivariance(model, torch.randn(2, 1, 12, 12), max_shift=1)
    assert not report.passed
    assert report.noise_floor > report.rtol
    assert any("depends on the batch" in h and "track_running_stats=False" in h for h in report.hints)
    assert not any("Dense layers" in h for h in report.hints)
