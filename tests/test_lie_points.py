"""The Lie derivative of point clouds, sets and graphs: the generators are the derivatives of the group
elements, the derivative is that of the group action (a central difference in float64), zero on exactly
equivariant models and clearly not on broken ones, in step with the checks, and mismatches are refused."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from equivariance import check_equivariance, equivariance_error
from equivariance.errors import InvalidArgument
from equivariance.euclidean import SO3, Rotation, Translation
from equivariance.fields import (
    EdgeIndex,
    Field,
    Irreps,
    Positions,
    Pseudoscalars,
    Pseudovectors,
    Scalars,
    Vectors,
)
from equivariance.generators import (
    PointGenerator,
    Rotation2D,
    Rotation3D,
    Translation2D,
    Translation3D,
)
from equivariance.generators import Translation as GridTranslation
from equivariance.lie import lie_derivative, lie_derivative_error, profile_lie_derivative

sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
import point_gallery as gallery

F64 = torch.float64
STEP = 1e-4  # central differences: truncation about STEP**2, rounding about 1e-16 / STEP
EGNN_FIELDS = (Positions(), Scalars())


def egnn(**options: bool) -> torch.nn.Module:
    return gallery.egnn(**options).double()


def cloud(batch: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    return gallery.cloud(batch=batch), gallery.features(batch=batch)


def element_of(generator: PointGenerator, t: float) -> Any:
    """The element ``exp(t A)`` of ``euclidean`` whose derivative at 0 the generator is."""
    if isinstance(generator, Rotation3D):
        return Rotation(torch.linalg.matrix_exp(t * generator.matrix))
    if isinstance(generator, Rotation2D):
        return Rotation.planar(t)
    return Translation(t * generator.velocity)


def group_derivative(
    model: Callable[..., Any],
    args: Sequence[torch.Tensor],
    generator: PointGenerator,
    inputs: Sequence[Field],
    outputs: Sequence[Field | None],
) -> list[torch.Tensor]:
    """``d/dt g_t⁻¹ f(g_t x)`` at 0 by a central difference, output by output (None: unmoved)."""

    def pulled_back(t: float) -> list[torch.Tensor]:
        g = element_of(generator, t)
        moved = model(*[g.act(a, f) for a, f in zip(args, inputs)])
        moved = moved if isinstance(moved, tuple) else (moved,)
        return [y if f is None else g.inverse().act(y, f) for y, f in zip(moved, outputs)]

    with torch.no_grad():
        return [(a - b) / (2 * STEP) for a, b in zip(pulled_back(STEP), pulled_back(-STEP))]


# -- the generators --------------------------------------------------------------------------------

FIELDS = [Positions(), Vectors(), Pseudovectors(), Scalars(), Pseudoscalars()]
GENERATORS_3D = [Rotation3D("x"), Rotation3D("y"), Rotation3D("z"), Rotation3D([1.0, -2.0, 0.5]),
                 Translation3D("z"), Translation3D([0.5, 1.0, -1.0])]  # fmt: skip


@pytest.mark.parametrize("generator", GENERATORS_3D, ids=repr)
@pytest.mark.parametrize("field", FIELDS, ids=repr)
def test_each_generator_is_the_derivative_of_its_elements_action(
    generator: PointGenerator, field: Field
) -> None:
    x = torch.randn(2, 5, 3 if field.components else 4, dtype=F64)
    plus, minus = element_of(generator, STEP).act(x, field), element_of(generator, -STEP).act(x, field)
    expected = (plus - minus) / (2 * STEP)
    assert torch.allclose(generator.apply(x, field), expected, atol=1e-7)


def test_the_named_axes_turn_as_the_named_rotations() -> None:
    p = torch.randn(4, 3, dtype=F64)
    for axis in "xyz":
        step = Rotation.about(axis, STEP).act(p, Positions()) - Rotation.about(axis, -STEP).act(
            p, Positions()
        )
        assert torch.allclose(Rotation3D(axis).apply(p, Positions()), step / (2 * STEP), atol=1e-7)
    assert Rotation3D("z") == Rotation3D([0.0, 0.0, 2.0])
    assert Rotation3D("z") != Rotation3D("x")
    assert repr(Rotation3D([0.0, 0.0, 2.0])) == "Rotation3D('z')"
    assert len({Rotation3D("z"), Rotation3D([0, 0, 1]), Translation3D("z")}) == 2


def test_the_planar_generators_move_2d_points() -> None:
    p = torch.randn(3, 6, 2, dtype=F64)
    step = Rotation.planar(STEP).act(p, Vectors()) - Rotation.planar(-STEP).act(p, Vectors())
    assert torch.allclose(Rotation2D().apply(p, Vectors()), step / (2 * STEP), atol=1e-7)
    moved = Translation2D([1.0, -3.0]).apply(p, Positions())
    assert torch.equal(moved, torch.tensor([1.0, -3.0], dtype=F64).expand_as(p))
    assert torch.equal(Translation2D("y").apply(p, Vectors()), torch.zeros_like(p))


def test_the_irreps_algebra_is_the_derivative_of_e3nns_wigner_matrices() -> None:
    pytest.importorskip("e3nn")
    irreps = Irreps("2x0e + 1x1o + 1x1e + 1x2e + 1x3o")
    x = torch.randn(2, 4, irreps.dim, dtype=F64)
    for generator in (Rotation3D("x"), Rotation3D("y"), Rotation3D([0.3, -1.0, 2.0])):
        g = element_of(generator, STEP)
        expected = (g.act(x, irreps) - g.inverse().act(x, irreps)) / (2 * STEP)
        assert torch.allclose(generator.apply(x, irreps), expected, atol=1e-7)
    about_z = Rotation3D("z").matrix
    assert torch.equal(Irreps("1o").algebra(about_z), about_z)  # l = 1 is x, y, z: the matrix itself
    assert torch.equal(Translation3D("x").apply(x, irreps), torch.zeros_like(x))


def test_a_float32_tensor_gets_a_float32_tangent() -> None:
    p = torch.randn(2, 5, 3)
    assert Rotation3D("x").apply(p, Positions()).dtype == torch.float32


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Rotation3D("w"), r"axis must be 'x' 'y' 'z' or a nonzero vector of 3"),
        (lambda: Rotation3D([0.0, 0.0, 0.0]), r"nonzero vector of 3 finite numbers, found"),
        (lambda: Translation3D([1.0, 2.0]), r"Translation3D's direction must be .* vector of 3"),
        (lambda: Translation2D("z"), r"Translation2D's direction must be 'x' 'y' or"),
    ],
)
def test_bad_generators_are_refused(make: Callable[[], object], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        make()


# -- the Lie derivative of models of points --------------------------------------------------------


@pytest.mark.parametrize("generator", [*GENERATORS_3D[:4], Translation3D("y")], ids=repr)
def test_an_egnn_has_a_zero_lie_derivative_for_every_generator(generator: PointGenerator) -> None:
    pos, h = cloud()
    derivative = lie_derivative(egnn(), (pos, h), generator, inputs=EGNN_FIELDS, outputs=EGNN_FIELDS)
    assert isinstance(derivative, tuple)
    assert len(derivative) == 2
    assert derivative[0].shape == pos.shape
    assert derivative[1].shape == h.shape
    assert max(float(d.abs().max()) for d in derivative) < 1e-12
    errors = lie_derivative_error(egnn(), (pos, h), generator, inputs=EGNN_FIELDS, outputs=EGNN_FIELDS,
                                  reduction="none")  # fmt: skip
    assert errors.shape == (3,)
    assert float(errors.max()) < 1e-12


@pytest.mark.parametrize("generator", [Rotation3D("x"), Rotation3D([1.0, -2.0, 0.5]), Translation3D("z")],
                         ids=repr)  # fmt: skip
def test_the_derivative_is_the_derivative_of_the_group_action(generator: PointGenerator) -> None:
    broken, (pos, h) = egnn(coordinates_as_features=True), cloud()
    derivative = lie_derivative(broken, (pos, h), generator, inputs=EGNN_FIELDS, outputs=EGNN_FIELDS)
    expected = group_derivative(broken, (pos, h), generator, EGNN_FIELDS, EGNN_FIELDS)
    scale = max(float(e.abs().max()) for e in expected)
    assert scale > 1e-2  # coordinates fed to an MLP: clearly not equivariant
    for got, want in zip(derivative, expected):
        assert float((got - want).abs().max()) < 1e-6 * scale


def test_an_invariant_output_compared_unmoved() -> None:
    broken, (pos, h) = egnn(coordinates_as_features=True), cloud()
    energy = lambda p, f: broken(p, f)[1].sum((-1, -2))  # noqa: E731
    derivative = lie_derivative(energy, (pos, h), Rotation3D("y"), inputs=EGNN_FIELDS,
                                outputs=Scalars(nodes=None))  # fmt: skip
    (expected,) = group_derivative(energy, (pos, h), Rotation3D("y"), EGNN_FIELDS, [None])
    assert derivative.shape == (3,)
    assert torch.allclose(derivative, expected, rtol=1e-6, atol=1e-9)
    assert float(expected.abs().max()) > 1e-2
    same = lie_derivative(energy, (pos, h), Rotation3D("y"), inputs=EGNN_FIELDS, invariant=True)
    assert torch.equal(same, derivative)


def test_the_error_agrees_with_the_check_and_is_the_limit_of_equivariance_error() -> None:
    pos, h = cloud()
    kept, broken = egnn(), egnn(coordinates_as_features=True)
    options: dict[str, Any] = {"inputs": EGNN_FIELDS, "outputs": EGNN_FIELDS}
    assert check_equivariance(kept, (pos, h), transforms=SO3(8, seed=0), **options).passed
    assert not check_equivariance(broken, (pos, h), transforms=SO3(8, seed=0), **options).passed
    assert float(lie_derivative_error(kept, (pos, h), Rotation3D("x"), **options)) < 1e-12
    lie = lie_derivative_error(broken, (pos, h), Rotation3D("x"), reduction="none", **options)
    t = 1e-6
    finite = equivariance_error(broken, (pos, h), Rotation.about("x", t), reduction="none", **options) / t
    assert float(lie.min()) > 1e-2
    assert torch.allclose(lie, finite, rtol=1e-4)  # the same relative rule, differentiated


def test_outputs_as_a_dict_and_keyword_inputs() -> None:
    inner, (pos, h) = egnn(coordinates_as_features=True), cloud()

    def model(*, pos: torch.Tensor, h: torch.Tensor) -> dict[str, torch.Tensor]:
        moved, features = inner(pos, h)
        return {"pos": moved, "h": features}

    inputs = {"pos": Positions(), "h": Scalars()}
    derivative = lie_derivative(model, {"pos": pos, "h": h}, Rotation3D("z"), inputs=inputs,
                                outputs={"h": Scalars(), "pos": Positions()})  # fmt: skip
    assert isinstance(derivative, dict)
    assert list(derivative) == ["h", "pos"]
    tupled = lie_derivative(inner, (pos, h), Rotation3D("z"), inputs=EGNN_FIELDS, outputs=EGNN_FIELDS)
    assert torch.equal(derivative["pos"], tupled[0])
    assert torch.equal(derivative["h"], tupled[1])


def test_chunks_give_the_same_derivative_and_the_inputs_and_model_are_left_as_they_were() -> None:
    model, (pos, h) = egnn(coordinates_as_features=True), cloud(5)
    model.train()
    before = (pos.clone(), h.clone(), {k: v.clone() for k, v in model.state_dict().items()})
    whole = lie_derivative(model, (pos, h), Rotation3D("x"), inputs=EGNN_FIELDS, outputs=EGNN_FIELDS)
    chunked = lie_derivative(model, (pos, h), Rotation3D("x"), inputs=EGNN_FIELDS, outputs=EGNN_FIELDS,
                             batch_size=2)  # fmt: skip
    for a, b in zip(whole, chunked):
        assert torch.allclose(a, b, rtol=0, atol=1e-14)
    assert torch.equal(pos, before[0])
    assert torch.equal(h, before[1])
    assert model.training
    assert all(torch.equal(v, before[2][k]) for k, v in model.state_dict().items())


def test_a_planar_point_set() -> None:
    def centred_turn(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Offsets from the centroid (vectors) and their lengths summed (a scalar)."""
        offsets = p - p.mean(-2, keepdim=True)
        return offsets, offsets.norm(dim=-1).sum(-1)

    p = torch.randn(4, 7, 2, dtype=F64)
    fields = (Vectors(), Scalars(nodes=None))
    for generator in (Rotation2D(), Translation2D("x")):
        errors = lie_derivative_error(centred_turn, p, generator, inputs=Positions(), outputs=fields,
                                      reduction="max")  # fmt: skip
        assert float(errors) < 1e-12
    assert float(lie_derivative_error(lambda p: p[..., 0], p, Rotation2D(), inputs=Positions(),
                                      outputs=Scalars())) > 0.1  # fmt: skip


def test_e3nn_features_by_their_irreps() -> None:
    o3 = pytest.importorskip("e3nn.o3")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(F64)  # an e3nn model checked in float64 is built in float64
    try:
        torch.manual_seed(0)
        product = o3.FullyConnectedTensorProduct(
            "2x0e + 1x1o", "1x0e + 1x1o + 1x2e", "1x0e + 1x1o + 1x1e + 1x2e"
        )
    finally:
        torch.set_default_dtype(previous)

    def network(pos: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        offsets = pos - pos.mean(-2, keepdim=True)
        return product(x, o3.spherical_harmonics("1x0e + 1x1o + 1x2e", offsets, normalize=True))

    pos, x = gallery.cloud(), torch.randn(2, gallery.POINTS, 5, dtype=F64)
    inputs = (Positions(), Irreps("2x0e + 1x1o"))
    for generator in (Rotation3D("x"), Rotation3D([0.3, -1.0, 2.0]), Translation3D("y")):
        error = lie_derivative_error(network, (pos, x), generator, inputs=inputs,
                                     outputs=Irreps("1x0e + 1x1o + 1x1e + 1x2e"), reduction="max")  # fmt: skip
        assert float(error) < 1e-12
    misdeclared = Irreps("1x0e + 1x2e + 1x1o + 1x1e")  # the same dims, in the wrong order
    assert float(lie_derivative_error(network, (pos, x), Rotation3D("x"), inputs=inputs,
                                      outputs=misdeclared)) > 0.1  # fmt: skip


def test_graphs_of_torch_geometric() -> None:
    geometric = pytest.importorskip("torch_geometric.data")

    def messages(data: Any) -> torch.Tensor:
        src, dst = data.edge_index
        vectors = (data.pos[src] - data.pos[dst]) * data.x[src, :1]
        return torch.zeros_like(data.pos).index_add(0, dst, vectors)

    torch.manual_seed(0)
    edges = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])
    graphs = [geometric.Data(x=torch.randn(5, 2, dtype=F64), pos=torch.randn(5, 3, dtype=F64), edge_index=edges)
              for _ in range(3)]  # fmt: skip
    batch = geometric.Batch.from_data_list(graphs)
    inputs = {"x": Scalars(nodes=0), "pos": Positions(nodes=0), "edge_index": EdgeIndex()}
    derivative = lie_derivative(messages, batch, Rotation3D("z"), inputs=inputs, outputs=Vectors(nodes=0))
    assert derivative.shape == (15, 3)
    assert float(derivative.abs().max()) < 1e-12
    wrong = lie_derivative_error(messages, batch, Rotation3D("z"), inputs=inputs, outputs=Scalars(nodes=0),
                                 reduction="none")  # fmt: skip
    assert wrong.shape == (3,)
    assert float(wrong.min()) > 0.1
    total = lambda data: data.pos.sum(0, keepdim=True)  # noqa: E731
    moved = lie_derivative(total, graphs[0], Translation3D("z"), inputs=inputs, invariant=True)
    assert moved.tolist() == [[0.0, 0.0, 5.0]]  # five points, each moved along z


def test_float32_models_have_a_small_derivative() -> None:
    model = gallery.egnn()
    pos, h = (t.float() for t in cloud())
    error = lie_derivative_error(model, (pos, h), Rotation3D("x"), inputs=EGNN_FIELDS, outputs=EGNN_FIELDS)
    assert error.dtype == F64
    assert float(error) < 1e-5
    broken = gallery.egnn(coordinates_as_features=True)
    assert float(lie_derivative_error(broken, (pos, h), Rotation3D("x"), inputs=EGNN_FIELDS,
                                      outputs=EGNN_FIELDS)) > 1e-2  # fmt: skip


# -- mismatches --------------------------------------------------------------------------------------


class Spins(Field):
    """A field type of the user's own, which the generators do not know."""


def lie(x: Any, generator: Any, **options: Any) -> Any:
    model = options.pop("model", lambda p, f: (p, f))
    return lie_derivative(model, x, generator, **options)


POS, H = torch.randn(2, 5, 3, dtype=F64), torch.randn(2, 5, 4, dtype=F64)


@pytest.mark.parametrize(
    ("x", "generator", "options", "match"),
    [
        (
            (POS, H),
            GridTranslation(0, 1),
            {"inputs": EGNN_FIELDS, "outputs": EGNN_FIELDS},
            r"generator Translation\(0\.0, 1\.0\) moves the samples of a grid, but x holds tensors of points",
        ),
        (
            (POS, H),
            "translation",
            {"inputs": EGNN_FIELDS, "outputs": EGNN_FIELDS},
            r"'translation' moves the samples of a grid.*Rotation3D\('z'\)",
        ),
        (
            POS,
            Rotation3D("z"),
            {"model": lambda p: p},
            r"Rotation3D\('z'\) moves tensors of points by their field type; pass inputs=",
        ),
        (
            (POS, H),
            Rotation3D("z"),
            {"inputs": (Positions(), Spins()), "outputs": EGNN_FIELDS},
            r"input 'f' \(argument 1\): Rotation3D\('z'\) does not act on Spins\(\).*subclass PointGenerator",
        ),
        (
            (POS, H),
            Rotation2D(),
            {"inputs": EGNN_FIELDS, "outputs": EGNN_FIELDS},
            r"input 'p' \(argument 0\): Positions\(\) expects a tensor \(\.\.\., N, 2\) with its 2 components",
        ),
        (
            (POS, H),
            Translation3D("x"),
            {"inputs": (Vectors(), Scalars()), "outputs": EGNN_FIELDS},
            r"Translation3D\(\[1\.0, 0\.0, 0\.0\]\) moves none of the inputs .*Positions\(\)",
        ),
        ((POS, H), Rotation3D("z"), {"inputs": EGNN_FIELDS}, r"pass outputs= too.*or invariant=True"),
        (
            (POS, H),
            Rotation3D("z"),
            {"inputs": EGNN_FIELDS, "outputs": EGNN_FIELDS, "invariant": True},
            r"pass either outputs= .* or invariant=True",
        ),
        (
            (POS, H),
            Rotation3D("z"),
            {"inputs": EGNN_FIELDS, "outputs": EGNN_FIELDS, "stride": 2},
            r"stride is an option of tensors on a grid",
        ),
        (
            (POS, H),
            Rotation3D("z"),
            {"inputs": EGNN_FIELDS, "outputs": (Positions(), Spins())},
            r"output output\[1\]: Rotation3D\('z'\) does not act on Spins\(\)",
        ),
        (
            (POS, H),
            Rotation3D("z"),
            {"inputs": (Positions(),), "outputs": EGNN_FIELDS},
            r"x holds 2 positional arguments but inputs= gives 1 field type",
        ),
    ],
    ids=[
        "grid-generator",
        "grid-name",
        "no-inputs",
        "unknown-field",
        "2d-on-3d",
        "nothing-moves",
        "no-outputs",
        "both",
        "stride",
        "unknown-output",
        "count",
    ],
)
def test_mismatches_are_refused_with_the_fix(
    x: Any, generator: Any, options: dict[str, Any], match: str
) -> None:
    with pytest.raises(InvalidArgument, match=match):
        lie(x, generator, **options)


def test_irreps_under_a_planar_generator_are_refused() -> None:
    pytest.importorskip("e3nn")
    with pytest.raises(InvalidArgument, match=r"representations of O\(3\), and Rotation2D\(\) acts in 2-D"):
        lie(torch.randn(2, 5, 3, dtype=F64), Rotation2D(), model=lambda f: f, inputs=Irreps("1o"),
            outputs=Irreps("1o"))  # fmt: skip


def test_a_model_that_cuts_the_derivative_is_refused() -> None:
    forces = gallery.energy_and_forces().double()  # detaches the positions to take forces by autograd
    with pytest.raises(InvalidArgument, match=r"depends on x through a tensor whose derivative it drops"):
        lie_derivative(
            forces, cloud(), Rotation3D("x"), inputs=EGNN_FIELDS, outputs=(Scalars(nodes=None), Vectors())
        )


def test_an_output_that_no_derivative_reaches_suggests_the_finite_difference_of_points() -> None:
    def counts(pos: torch.Tensor) -> torch.Tensor:  # an integer op: the derivative stops at argmax
        return pos.argmax(-1).double().sum(-1)

    with pytest.raises(
        InvalidArgument, match=r"no derivative reaches it.*equivariance_error\(model, x, Rotation\.about"
    ):
        lie_derivative(counts, POS, Rotation3D("x"), inputs=Positions(), outputs=Scalars(nodes=None))


def test_an_op_without_a_forward_derivative_suggests_the_finite_difference_of_points() -> None:
    def nearest(pos: torch.Tensor) -> torch.Tensor:  # index_reduce has no forward-mode formula in torch
        index = torch.zeros(pos.shape[1], dtype=torch.long)
        return pos.new_zeros(len(pos), 1, 3).index_reduce(1, index, pos, "amax").sum((-1, -2))

    with pytest.raises(
        InvalidArgument, match=r"no forward-mode derivative.*equivariance_error\(model, x, Rotation"
    ):
        lie_derivative(nearest, POS, Rotation3D("x"), inputs=Positions(), outputs=Scalars(nodes=None))


def test_the_layer_profile_refuses_points_and_says_what_to_use() -> None:
    with pytest.raises(
        InvalidArgument, match=r"profile_lie_derivative .* grid.*lie_derivative_error\(.*layer="
    ):
        profile_lie_derivative(egnn(), (POS, H), Rotation3D("z"))  # type: ignore[arg-type]


def test_a_named_layer_measured_with_the_field_types_of_its_outputs() -> None:
    model, (pos, h) = egnn(coordinates_as_features=True), cloud()
    whole = lie_derivative(
        model.layers[0], (pos, h), Rotation3D("x"), inputs=EGNN_FIELDS, outputs=EGNN_FIELDS
    )
    first = lie_derivative(model, (pos, h), Rotation3D("x"), inputs=EGNN_FIELDS, outputs=EGNN_FIELDS,
                           layer="layers.0")  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(whole, first))
    assert float(lie_derivative_error(egnn(), (pos, h), Rotation3D("x"), inputs=EGNN_FIELDS,
                                      outputs=EGNN_FIELDS, layer="layers.0")) < 1e-12  # fmt: skip


# -- distances: torch.cdist and torch.pdist, which have no forward-mode formula in torch -------------


class PairModel(torch.nn.Module):
    """Energy and forces from ``torch.cdist(pos, pos, p)`` (zeros on its diagonal, used as they are):
    invariant and equivariant for p=2 under rotations and translations; ``leak`` also feeds the
    coordinates to the energy's MLP, which breaks both."""

    def __init__(self, p: float = 2.0, leak: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.p, self.leak = p, leak
        self.mlp = torch.nn.Sequential(torch.nn.Linear(7 if leak else 4, 16), torch.nn.Tanh(),
                                       torch.nn.Linear(16, 1)).double()  # fmt: skip

    def forward(self, pos: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        distance = torch.cdist(pos, pos, p=self.p)
        mixed = torch.exp(-distance) @ h  # each atom's features, weighted by closeness
        features = torch.cat([mixed, pos], -1) if self.leak else mixed
        energy = self.mlp(features).sum((-1, -2)) + 0.1 * distance.sum((-1, -2))
        forces = (torch.exp(-distance).unsqueeze(-1) * (pos.unsqueeze(-2) - pos.unsqueeze(-3))).sum(-2)
        return energy, forces


PAIR_OUTPUTS = (Scalars(nodes=None), Vectors())


@pytest.mark.parametrize(
    ("p", "leak", "generator"),
    [(2.0, True, Rotation3D("x")), (2.0, True, Rotation3D([1.0, -2.0, 0.5])), (2.0, True, Translation3D("z")),
     (1.0, False, Rotation3D("y")), (3.0, False, Rotation3D("z")), (float("inf"), False, Rotation3D("x"))],
)  # fmt: skip
def test_the_derivative_through_cdist_is_the_derivative_of_the_group_action(
    p: float, leak: bool, generator: PointGenerator
) -> None:
    model, (pos, h) = PairModel(p, leak), cloud()
    derivative = lie_derivative(model, (pos, h), generator, inputs=EGNN_FIELDS, outputs=PAIR_OUTPUTS)
    expected = group_derivative(model, (pos, h), generator, EGNN_FIELDS, [None, Vectors()])
    scale = max(float(e.abs().max()) for e in expected)
    assert scale > 1e-2  # broken (leak) or not a Euclidean distance (p != 2): clearly nonzero
    for got, want in zip(derivative, expected):
        assert bool(torch.isfinite(got).all())  # a zero distance has slope zero, not nan
        assert float((got - want).abs().max()) < 1e-6 * scale


@pytest.mark.parametrize("generator", [Rotation3D("x"), Rotation3D([1.0, -2.0, 0.5]), Translation3D("y")],
                         ids=repr)  # fmt: skip
def test_a_model_of_euclidean_distances_has_a_zero_derivative_and_a_leak_does_not(
    generator: PointGenerator,
) -> None:
    pos, h = cloud()
    options = {"inputs": EGNN_FIELDS, "outputs": PAIR_OUTPUTS}
    assert float(lie_derivative_error(PairModel(), (pos, h), generator, **options)) < 1e-10
    assert float(lie_derivative_error(PairModel(leak=True), (pos, h), generator, **options)) > 1e-2


def test_the_rule_is_found_once_a_run_and_chunks_agree() -> None:
    """The first pass runs without the rule (it costs every op a Python call), fails at cdist and runs
    again with it; the later chunks use it from the start."""
    model, (pos, h), calls = PairModel(leak=True), cloud(), []

    def counted(p: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(len(p))
        return model(p, f)

    options: dict[str, Any] = {"inputs": EGNN_FIELDS, "outputs": PAIR_OUTPUTS}
    whole = lie_derivative(counted, (pos, h), Rotation3D("x"), **options)
    assert calls == [3, 3]
    calls.clear()
    chunked = lie_derivative(counted, (pos, h), Rotation3D("x"), batch_size=1, **options)
    assert calls == [1, 1, 1, 1]
    assert all(torch.allclose(a, b, rtol=1e-12, atol=1e-14) for a, b in zip(whole, chunked))


def test_pdist_too() -> None:
    pos = torch.randn(5, 3, dtype=F64)

    def spread(p: torch.Tensor) -> torch.Tensor:  # one cloud a sample: pdist takes a (N, 3) matrix
        return torch.stack([torch.pdist(c).square().sum() + c[:, 0].sum() for c in p])

    derivative = lie_derivative(spread, pos[None], Rotation3D("z"), inputs=Positions(),
                                outputs=Scalars(nodes=None))  # fmt: skip
    (expected,) = group_derivative(spread, (pos[None],), Rotation3D("z"), [Positions()], [None])
    assert float(expected.abs().max()) > 1e-2
    assert torch.allclose(derivative, expected, rtol=1e-6, atol=1e-9)


def test_the_distance_rule_leaves_torch_as_it_was() -> None:
    """The rule lives only while the library differentiates: afterwards, torch.cdist still has no
    forward-mode formula, under dual tensors or torch.func.jvp, and no mode is left on torch's stack."""
    pos, h = cloud()
    lie_derivative(PairModel(), (pos, h), Rotation3D("x"), inputs=EGNN_FIELDS, outputs=PAIR_OUTPUTS)
    assert torch._C._len_torch_function_stack() == 0
    assert torch.cdist is torch.functional.cdist
    with pytest.raises(RuntimeError, match=r"forward AD with _(cdist_forward|euclidean_dist)"):
        torch.func.jvp(lambda p: torch.cdist(p, p), (pos,), (torch.ones_like(pos),))
    with pytest.raises(RuntimeError, match=r"forward AD with _pdist_forward"):
        torch.func.jvp(torch.pdist, (pos[0],), (torch.ones_like(pos[0]),))


def test_a_distance_of_no_slope_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"torch\.cdist with p=0\.5; .* p = 0 or p >= 1"):
        lie_derivative(PairModel(p=0.5), cloud(), Rotation3D("x"), inputs=EGNN_FIELDS, outputs=PAIR_OUTPUTS)


# -- laws ----------------------------------------------------------------------------------------------

unit_axes = st.lists(st.floats(-1.0, 1.0), min_size=3, max_size=3).filter(
    lambda v: sum(c * c for c in v) > 0.01
)


@settings(max_examples=10, deadline=None)
@given(unit_axes)
def test_the_derivative_is_linear_in_the_axis(axis: list[float]) -> None:
    broken, (pos, h) = egnn(coordinates_as_features=True), cloud(2)
    n = torch.tensor(axis, dtype=F64) / torch.tensor(axis, dtype=F64).norm()
    along = lie_derivative(broken, (pos, h), Rotation3D(axis), inputs=EGNN_FIELDS, outputs=EGNN_FIELDS)
    parts = [lie_derivative(broken, (pos, h), Rotation3D(e), inputs=EGNN_FIELDS, outputs=EGNN_FIELDS)
             for e in "xyz"]  # fmt: skip
    for i, got in enumerate(along):
        expected = sum(float(c) * p[i] for c, p in zip(n, parts))
        assert torch.allclose(got, expected, rtol=0, atol=1e-12 * max(1.0, float(got.abs().max())))


@settings(max_examples=20, deadline=None)
@given(unit_axes, unit_axes)
def test_the_irreps_algebra_keeps_the_commutator(a: list[float], b: list[float]) -> None:
    pytest.importorskip("e3nn")
    irreps = Irreps("1x0e + 1x1o + 2x2e + 1x3o")
    x, y = Rotation3D(a).matrix, Rotation3D(b).matrix
    dx, dy = irreps.algebra(x), irreps.algebra(y)
    assert torch.allclose(dx @ dy - dy @ dx, irreps.algebra(x @ y - y @ x), atol=1e-12)


class Dilation(PointGenerator):
    """A generator of the user's own: positions scale by ``e^t``. Its ``apply`` writes in place, which the
    library's private copy makes harmless."""

    def moves(self, field: Field) -> bool:
        return isinstance(field, Positions)

    def apply(self, h: torch.Tensor, field: Field) -> torch.Tensor:
        return h.mul_(1.0) if self.moves(field) else torch.zeros_like(h)


def test_a_generator_of_ones_own_that_writes_in_place() -> None:
    pos = torch.randn(3, 5, 3, dtype=F64)
    given = pos.clone()
    norms = lambda p: p.norm(dim=-1, keepdim=True)  # noqa: E731
    derivative = lie_derivative(norms, pos, Dilation(), inputs=Positions(), outputs=Scalars())
    assert torch.allclose(derivative, norms(given), rtol=1e-14)  # d/dt |e^t p| = |p| at t = 0
    assert torch.equal(pos, given)


def test_the_absolute_form_is_the_norm_of_the_largest_output() -> None:
    broken, (pos, h) = egnn(coordinates_as_features=True), cloud()
    derivative = lie_derivative(broken, (pos, h), Rotation3D("y"), inputs=EGNN_FIELDS, outputs=EGNN_FIELDS)
    absolute = lie_derivative_error(broken, (pos, h), Rotation3D("y"), inputs=EGNN_FIELDS, outputs=EGNN_FIELDS,
                                    relative=False, reduction="none")  # fmt: skip
    norms = torch.stack([d.flatten(1).norm(dim=1) for d in derivative]).amax(0)
    assert torch.allclose(absolute, norms, rtol=1e-12)
    relative = lie_derivative_error(broken, (pos, h), Rotation3D("y"), inputs=EGNN_FIELDS, outputs=EGNN_FIELDS,
                                    reduction="max")  # fmt: skip
    with torch.no_grad():
        bases = broken(pos, h)
    sizes = [d.flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1) for d, b in zip(derivative, bases)]
    assert float(relative) == pytest.approx(float(torch.stack(sizes).amax()), rel=1e-12)
