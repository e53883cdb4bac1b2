"""The point-cloud gallery's verdicts, pinned with the slow reference (tests/_reference_points.py).

Every model family of examples/point_gallery.py is checked, in float64, for
each symmetry its case names: an error below 1e-10 where the symmetry holds,
above 1e-3 where it is broken. Each case with a symmetry has a negative
control, the same model with that symmetry broken on purpose, which the same
check must reject. On e3nn's network the reference's error for a rotation is
the error computed by hand with e3nn's own Wigner matrices, and its verdict
agrees with e3nn's ``equivariance_error``.

The same verdicts through the library's checks (``inputs=``, ``outputs=``):
each case and control gives the pinned verdict, float32 models that are
equivariant pass at the default tolerance while the broken ones fail, and
Hypothesis holds the batched check's per-output errors against the reference.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest
import torch
from _reference_points import equivariance_errors, split, worst
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from equivariance import EquivarianceReport, check_equivariance, equivariance_error
from equivariance.euclidean import O3, SE3, SO3, Rotation
from equivariance.fields import Irreps, Scalars
from equivariance.permutations import Permutations

sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
import point_gallery as gallery

HOLDS = 1e-10  # float64: rounding only
BROKEN = 1e-3


@functools.cache
def model(name: str, control: int | None = None) -> torch.nn.Module:
    """The case's float64 model (or its negative control), built once per test session."""
    return gallery.CASES[name].model(seed=0, control=control)


def samples(case: gallery.Case, seed: int = 0) -> list[tuple[object, ...]]:
    args = case.inputs(seed)
    if isinstance(args[0], torch.Tensor):
        return split(args)
    return [args]  # a graph is one sample


def points(case: gallery.Case) -> int:
    first = case.inputs(0)[0]
    return int(first.shape[-2]) if isinstance(first, torch.Tensor) else int(first.num_nodes)


def reference_error(case: gallery.Case, model: torch.nn.Module, symmetry: str) -> float:
    elements = gallery.SYMMETRIES[symmetry](points(case))
    return worst(equivariance_errors(model, samples(case), elements, case.fields, case.outputs))


def available(name: str) -> gallery.Case:
    case = gallery.CASES[name]
    if not case.available:
        pytest.skip(f"{case.needs} is not installed (pip install equivariance[{_extra(case.needs)}])")
    return case


def _extra(module: str | None) -> str:
    return {"torch_geometric": "geometric", "egnn_pytorch": "egnn"}.get(module or "", module or "")


VERDICTS = [(name, symmetry) for name, case in gallery.CASES.items() for symmetry in case.verdicts]


@pytest.mark.parametrize(("name", "symmetry"), VERDICTS, ids=[f"{n}-{s}" for n, s in VERDICTS])
def test_each_verdict_of_the_gallery(name: str, symmetry: str) -> None:
    case = available(name)
    error = reference_error(case, model(name), symmetry)
    verdict = case.verdicts[symmetry]
    if verdict.holds:
        assert error < HOLDS, f"{name} should be equivariant to {symmetry} ({verdict.why}): {error:.1e}"
    else:
        assert error > BROKEN, f"{name} should not be equivariant to {symmetry} ({verdict.why}): {error:.1e}"


CONTROLS = [
    (name, i, symmetry)
    for name, case in gallery.CASES.items()
    for i, (_, broken) in enumerate(case.controls)
    for symmetry in broken
]


@pytest.mark.parametrize(
    ("name", "control", "symmetry"), CONTROLS, ids=[f"{n}-{c}-{s}" for n, c, s in CONTROLS]
)
def test_the_negative_controls_are_rejected(name: str, control: int, symmetry: str) -> None:
    case = available(name)
    assert case.verdicts[symmetry].holds  # a control breaks what the model has
    error = reference_error(case, model(name, control), symmetry)
    assert error > BROKEN, f"{name} with {case.controls[control][0]} should break {symmetry}: {error:.1e}"


def test_every_symmetry_a_hand_written_model_has_has_a_negative_control() -> None:
    for name, case in gallery.CASES.items():
        if case.needs is not None and name != "graph convolution":
            continue  # a package's own model: its controls are wrong declarations (below)
        holding = {s for s, v in case.verdicts.items() if v.holds}
        assert holding <= {s for _, broken in case.controls for s in broken}, name


def test_a_package_model_checked_with_a_wrong_declaration_fails() -> None:
    """egnn-pytorch's positions declared as scalars: every rotation then moves them."""
    case = available("egnn-pytorch")
    elements = gallery.SYMMETRIES["rotations"](5)
    table = equivariance_errors(
        model("egnn-pytorch"), samples(case), elements, case.fields, (Scalars(), Scalars())
    )
    assert min(error for row in table for error, _ in row) > BROKEN


def test_energies_stay_and_forces_turn() -> None:
    """What a molecule researcher measures: each output's error, the energy's and the forces'."""
    case = gallery.CASES["EGNN energy and forces"]
    elements = SO3(4, seed=3)

    def errors(network: torch.nn.Module, outputs: object) -> tuple[list[float], list[float]]:
        table = equivariance_errors(network, samples(case), elements, case.fields, outputs, per_output=True)
        cells = [cell for row in table for cell in row]
        return [c[0][0] for c in cells], [c[1][0] for c in cells]  # type: ignore[index]

    energy, forces = errors(model("EGNN energy and forces"), case.outputs)
    assert max(energy) < HOLDS, energy
    assert max(forces) < HOLDS, forces
    # the forces checked as if they did not turn (declared scalars): every rotation moves them
    energy, forces = errors(model("EGNN energy and forces"), (case.outputs[0], Scalars()))
    assert max(energy) < HOLDS
    assert min(forces) > BROKEN
    # the control feeds raw coordinates to the features: energy and forces both break
    energy, forces = errors(model("EGNN energy and forces", control=0), case.outputs)
    assert min(energy) > BROKEN
    assert min(forces) > BROKEN


# -- e3nn ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("declared", ["right", "wrong parity"])
def test_e3nn_reference_error_equals_the_error_by_hand_with_e3nns_wigner_matrices(declared: str) -> None:
    case = available("e3nn network")
    o3 = pytest.importorskip("e3nn.o3")
    network = model("e3nn network")
    out_irreps = gallery.E3NN_OUT if declared == "right" else gallery.E3NN_OUT.replace("1x1e", "1x1o")
    pos, x = case.inputs(0)
    rotation = SO3(1, seed=7)[0] * Rotation.inversion()
    assert isinstance(rotation, Rotation)
    table = equivariance_errors(network, [(pos, x)], [rotation], case.fields, Irreps(out_irreps))
    reference = table[0][0][0]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # e3nn's Wigner matrices are float64 only under this default
    try:
        r = rotation.matrix.expand(2, 3, 3)  # a batch: torch's exponential of one matrix is less exact
        d_in = o3.Irreps(gallery.E3NN_IN).D_from_matrix(r)[0]
        d_out = o3.Irreps(out_irreps).D_from_matrix(r)[0]
    finally:
        torch.set_default_dtype(previous)
    with torch.no_grad():
        out = network(pos @ r[0].T, x @ d_in.T)
        ref = network(pos, x) @ d_out.T
    by_hand = float((out - ref).norm() / ref.norm())
    ours = float(
        equivariance_error(network, (pos, x), rotation, inputs=case.fields, outputs=Irreps(out_irreps))
    )
    if declared == "right":
        assert reference < HOLDS
        assert by_hand < HOLDS
        assert ours < HOLDS
    else:  # the pseudovector output declared a vector: under a reflection all three see it flip, alike
        assert reference > BROKEN
        assert reference == pytest.approx(by_hand, rel=1e-9)
        assert ours == pytest.approx(by_hand, rel=1e-9)


@pytest.mark.parametrize("declared", ["right", "wrong parity"])
def test_e3nn_verdict_agrees_with_e3nns_equivariance_error(declared: str) -> None:
    case = available("e3nn network")
    o3 = pytest.importorskip("e3nn.o3")
    from e3nn.util.test import equivariance_error

    # the negative control declares the pseudovector output 1e a vector (1o): reflections must then fail
    out_irreps = gallery.E3NN_OUT if declared == "right" else gallery.E3NN_OUT.replace("1x1e", "1x1o")
    network = model("e3nn network")
    pos, x = case.inputs(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        theirs = equivariance_error(
            network, [pos, x], irreps_in=["cartesian_points", o3.Irreps(gallery.E3NN_IN)],
            irreps_out=[o3.Irreps(out_irreps)], do_translation=False,
        )  # fmt: skip
    finally:
        torch.set_default_dtype(previous)
    their_worst = max(float(errors.max()) for errors in theirs.values())
    ours = reference_error_with(case, network, out_irreps)
    with torch.no_grad():
        scale = float(network(pos, x).abs().max())  # e3nn's errors are absolute, ours relative
    assert (their_worst < HOLDS * scale) == (ours < HOLDS)
    assert (ours < HOLDS) == (declared == "right"), ours
    # the library's check, on a rotation and the reflections, gives the same verdict
    elements = [SO3(1, seed=2)[0], *gallery.SYMMETRIES["reflections"](5)]
    report = check_equivariance(
        network, (pos, x), transforms=elements, inputs=case.fields, outputs=Irreps(out_irreps)
    )
    assert report.passed == (their_worst < HOLDS * scale), report


def reference_error_with(case: gallery.Case, network: torch.nn.Module, out_irreps: str) -> float:
    elements = [SO3(1, seed=2)[0], *gallery.SYMMETRIES["reflections"](5)]
    return worst(equivariance_errors(network, samples(case), elements, case.fields, Irreps(out_irreps)))


def test_the_optional_cases_name_an_extra_that_installs_their_package() -> None:
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    needs = {case.needs for case in gallery.CASES.values()} - {None}
    assert needs == {"torch_geometric", "egnn_pytorch", "e3nn"}
    for module in needs:
        package = {"egnn_pytorch": "egnn-pytorch"}.get(module, module)
        assert f'{_extra(module)} = ["{package}>=' in pyproject, module


def test_the_docs_page_shows_each_cases_verdicts() -> None:
    page = (Path(__file__).parents[1] / "docs" / "point_clouds.md").read_text()
    rows = {
        cells[0]: cells[1:5]
        for line in page.splitlines()
        if line.startswith("| ") and len(cells := [c.strip() for c in line.strip("|").split("|")]) == 6
    }
    order = ["permutations", "rotations", "reflections", "translations"]
    for name, case in gallery.CASES.items():
        shown = rows[name if name != "graph convolution" else "graph convolution (torch_geometric)"]
        for symmetry, cell in zip(order, shown):
            verdict = case.verdicts.get(symmetry)
            expected = {None: {""}, True: {"equivariant", "invariant"}, False: {"broken"}}
            assert cell in expected[None if verdict is None else verdict.holds], (name, symmetry, cell)


# -- through the library's checks ------------------------------------------------------------------------

TENSOR_VERDICTS = VERDICTS


def check(
    case: gallery.Case, network: torch.nn.Module, symmetry: str, **options: object
) -> EquivarianceReport:
    """The library's check of one symmetry of a case, on the case's own arguments and field types."""
    elements = gallery.SYMMETRIES[symmetry](points(case))
    args = case.inputs(0)
    return check_equivariance(
        network, args, transforms=elements, inputs=case.fields, outputs=case.outputs, **options
    )


@pytest.mark.parametrize(("name", "symmetry"), TENSOR_VERDICTS, ids=[f"{n}-{s}" for n, s in TENSOR_VERDICTS])
def test_each_verdict_of_the_gallery_through_the_check(name: str, symmetry: str) -> None:
    case = available(name)
    report = check(case, model(name), symmetry)
    verdict = case.verdicts[symmetry]
    assert report.passed == verdict.holds, f"{name}, {symmetry} ({verdict.why}):\n{report}"
    if not verdict.holds:
        assert report.hints, report  # a failure says which output breaks it, and how


TENSOR_CONTROLS = CONTROLS


@pytest.mark.parametrize(
    ("name", "control", "symmetry"), TENSOR_CONTROLS, ids=[f"{n}-{c}-{s}" for n, c, s in TENSOR_CONTROLS]
)
def test_the_negative_controls_fail_the_check(name: str, control: int, symmetry: str) -> None:
    case = available(name)
    assert not check(case, model(name, control), symmetry).passed


FLOAT32 = ["EGNN", "EGNN energy and forces", "egnn-pytorch", "e3nn network"]


@pytest.mark.parametrize("name", FLOAT32)
def test_float32_equivariant_models_pass_at_the_default_tolerance(name: str) -> None:
    """A float32 rotation rounds the moved input: the check applies it in float64 and measures the
    floor, so a correct float32 model passes at the default rtol (1e-4), and where its error is below
    ten times that floor, even at a tolerance tighter than float32's rounding."""
    case = available(name)
    network = case.build(seed=0).float()
    args = tuple(a.float() for a in case.inputs(0))
    options = dict(transforms=SO3(16, seed=0), inputs=case.fields, outputs=case.outputs)
    report = check_equivariance(network, args, **options)  # type: ignore[arg-type]
    assert report.passed, report
    assert report.rtol == 1e-4
    assert report.noise_floor > 0


@pytest.mark.parametrize("name", ["coordinates into an MLP", "transformer encoder with positions"])
def test_float32_broken_models_fail_at_the_default_tolerance(name: str) -> None:
    case = gallery.CASES[name]
    network = case.build(seed=0).float()
    args = tuple(a.float() for a in case.inputs(0))
    symmetry = "rotations" if "rotations" in case.verdicts else "permutations"
    elements = gallery.SYMMETRIES[symmetry](points(case)) if symmetry == "permutations" else SO3(16)
    report = check_equivariance(network, args, transforms=elements, inputs=case.fields, outputs=case.outputs)
    assert not report.passed
    assert report.max_error > 1e-2


@settings(max_examples=8)
@given(
    name=st.sampled_from(list(gallery.CASES)),
    symmetry=st.sampled_from(list(gallery.SYMMETRIES)),
    seed=st.integers(0, 2**16),
)
def test_the_checks_errors_equal_the_references(name: str, symmetry: str, seed: int) -> None:
    """Every element's worst error over the samples, each output by its own size: the library's batched
    check against the slow reference, one element and one sample at a time."""
    case = gallery.CASES[name]
    assume(case.available and symmetry in case.verdicts)
    n = points(case)
    elements = {
        "permutations": Permutations(3, n=n, seed=seed),
        "rotations": O3(3, seed=seed),
        "reflections": [Rotation.reflection(SO3(1, seed=seed)[0].matrix[0].tolist())],
        "translations": SE3(2, seed=seed, scale=2.0),
    }[symmetry]
    network = model(name)
    report = check_equivariance(
        network, case.inputs(seed % 7), transforms=elements, inputs=case.fields, outputs=case.outputs
    )
    table = equivariance_errors(network, samples(case, seed % 7), elements, case.fields, case.outputs,
                                per_output=True)  # fmt: skip
    for result, row in zip(report.results, table):
        by_output = [max(cell[p][0] for cell in row) for p in range(len(row[0]))]  # type: ignore[index]
        assert result.parts == pytest.approx(by_output, rel=1e-6, abs=1e-13)
    largest = max(error for row in table for cell in row for error, _ in cell)  # type: ignore[union-attr]
    assert report.passed == (largest < HOLDS)
