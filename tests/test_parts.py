"""Checks of several inputs and outputs (equivariance._engine.parts): the call, its field types, the
batched copies, one error per output, the noise floor of elements that round, and the messages."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from equivariance import (
    InvalidArgument,
    assert_equivariant,
    assert_invariant,
    check_equivariance,
    check_invariance,
    equivariance_error,
    invariance_error,
)
from equivariance.errors import EquivarianceError
from equivariance.euclidean import E3, SO3, Rotation, Translation
from equivariance.fields import EdgeIndex, Positions, Pseudovectors, Scalars, Vectors
from equivariance.permutations import NodePermutations, Permutation, Permutations


class Centred(nn.Module):
    """Per point: its offset from the centroid, scaled by an invariant of the cloud; and the invariant.

    Returns ``(energy (B,), forces (B, N, 3))``: E(3)- and permutation-equivariant.
    ``raw=True`` adds the raw coordinates to the energy (breaks rotations and translations).
    """

    def __init__(self, raw: bool = False) -> None:
        super().__init__()
        self.raw = raw
        self.weight = nn.Parameter(torch.tensor([0.7, -0.3]))

    def forward(self, pos: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        offset = pos - pos.mean(-2, keepdim=True)
        spread = offset.square().sum((-1, -2))
        energy = self.weight[0] * spread + self.weight[1] * h.sum((-1, -2))
        if self.raw:
            energy = energy + pos[..., 0, 0]
        forces = offset * (1 + h.mean(-1, keepdim=True))
        return energy, forces


def cloud(batch: int = 3, points: int = 5, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    pos = torch.randn(batch, points, 3, generator=generator, dtype=dtype)
    h = torch.randn(batch, points, 2, generator=generator, dtype=dtype)
    return pos, h


FIELDS = (Positions(), Scalars())
OUTPUTS = (Scalars(nodes=None), Vectors())


def test_a_model_of_positions_and_features_passes_and_each_output_has_its_row() -> None:
    report = check_equivariance(
        Centred().double(), cloud(), transforms=E3(16, seed=0), inputs=FIELDS, outputs=OUTPUTS
    )
    assert report.passed, report
    assert [p.name for p in report.parts] == ["output[0]", "output[1]"]
    assert [p.field for p in report.parts] == ["Scalars(nodes=None)", "Vectors()"]
    assert [p.shape for p in report.parts] == [(3,), (3, 5, 3)]
    assert all(len(r.parts) == 2 for r in report.results)
    assert report.drawn == "E3(16, seed=0)"
    text = str(report)
    assert "E3(16, seed=0); errors over the 16 transforms: min" in text
    assert "inputs 'pos' (argument 0) (3, 5, 3) Positions(), 'h' (argument 1) (3, 5, 2) Scalars()" in text
    json.dumps(report.to_dict())


def test_the_negative_control_fails_on_the_energy_alone_and_the_hint_names_it() -> None:
    report = check_equivariance(
        Centred(raw=True).double(), cloud(), transforms=SO3(8, seed=1), inputs=FIELDS, outputs=OUTPUTS
    )
    assert not report.passed
    energy, forces = report.parts
    assert not energy.passed
    assert energy.error > 1e-3
    assert forces.passed
    assert forces.error < 1e-12
    assert report.hints[0].startswith(
        "the scalar output (output[0]) moves under rotation: an input coordinate is used as a feature"
    )


def test_a_small_energy_is_not_drowned_by_large_forces() -> None:
    """The energy's error relative to its own size: 1e-3 of it fails, though forces are a million times larger."""

    class Loud(nn.Module):
        def forward(self, pos: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            energy = pos.square().sum((-1, -2)) * (1 + 1e-3 * pos[..., 0, 0].tanh())
            return energy, 1e6 * pos

    report = check_equivariance(Loud(), cloud(), transforms=SO3(4), inputs=FIELDS, outputs=OUTPUTS)
    assert not report.parts[0].passed
    assert report.parts[0].error > 1e-5
    assert report.parts[1].passed


def test_keyword_arguments_and_dict_outputs() -> None:
    class Named(nn.Module):
        def forward(self, *, pos: torch.Tensor, h: torch.Tensor) -> dict[str, torch.Tensor]:
            energy, forces = Centred().double()(pos, h)
            return {"energy": energy, "forces": forces}

    pos, h = cloud()
    report = check_equivariance(
        Named(), {"pos": pos, "h": h}, transforms=SO3(4), inputs={"pos": Positions(), "h": Scalars()},
        outputs={"energy": Scalars(nodes=None), "forces": Vectors()},
    )  # fmt: skip
    assert report.passed
    assert [p.name for p in report.parts] == ["output['energy']", "output['forces']"]


def test_a_single_tensor_with_a_field_type() -> None:
    pos, _ = cloud()
    centred = lambda p: p - p.mean(-2, keepdim=True)  # noqa: E731
    assert check_equivariance(centred, pos, transforms=SO3(8), inputs=Positions(), outputs=Vectors()).passed
    report = check_equivariance(centred, pos, transforms=SO3(8), inputs=Positions(), outputs=Scalars())
    assert not report.passed
    assert report.parts[0].name == "the output"
    assert report.hints[0].startswith("the scalar output moves under rotation")


def test_every_element_runs_through_the_one_runner_in_batched_passes() -> None:
    """64 rotations of 3 clouds: one pass of f(x), then (floor rows + 64) * 3 copies in a few chunks."""
    model = Centred().double()
    batches: list[int] = []
    model.register_forward_pre_hook(lambda _m, args: batches.append(len(args[0])))
    acted: list[int] = []
    original = Rotation.act

    def counted(self: Rotation, x: torch.Tensor, where: object) -> torch.Tensor:
        acted.append(len(x))
        return original(self, x, where)

    rotations = SO3(64, seed=0)
    try:
        Rotation.act = counted  # type: ignore[method-assign]
        report = check_equivariance(
            model, cloud(), transforms=rotations, inputs=FIELDS, outputs=OUTPUTS, batch_size=48
        )
    finally:
        Rotation.act = original  # type: ignore[method-assign]
    rows = 1 + 2 + 64  # the identity, two round trips, the rotations
    assert report.passed
    assert batches[0] == 3
    assert sum(batches[1:]) == rows * 3
    assert max(batches[1:]) == 48
    assert len(batches) == 1 + -(-rows * 3 // 48)
    # the rotations act on the copies by one einsum a chunk: never once per rotation and sample
    assert len(acted) < 2 * len(rotations) + 64


def test_the_noise_floor_sends_one_item_a_row_as_on_a_grid() -> None:
    """The floor's rows (the identity, two round trips) send one item each, not a row of every sample
    (as the grid path sends the identity for one sample): counted by the model itself."""
    model = Centred()
    seen: list[int] = []
    model.register_forward_pre_hook(lambda _m, args: seen.append(len(args[0])))
    pos, h = cloud(batch=6, dtype=torch.float32)
    report = check_equivariance(model, (pos, h), transforms=E3(32, seed=0), inputs=FIELDS, outputs=OUTPUTS)
    assert report.passed, report
    assert seen[0] == 6  # f(x)
    assert sum(seen[1:]) == 32 * 6 + 3  # the elements' copies, and 3 floor items (not 3 * 6)
    assert all(p.noise_floor > 0 for p in report.parts)  # one sample a round trip still shows rounding
    seen.clear()
    check_equivariance(model, (pos, h), transforms=Permutations(8, n=5), inputs=FIELDS, outputs=OUTPUTS)
    assert sum(seen[1:]) == 8 * 6 + 1  # exact elements: the identity's one item only


def test_a_batch_dependent_model_fails_with_the_one_item_floor() -> None:
    """A model that normalises over the batch is not rescued by its floor: the floor's items run in a
    chunk of other content than f(x)'s, so its error shows, and so do the elements'."""

    def across_batch(pos: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        offset = pos - pos.mean(-2, keepdim=True)
        return offset * h.mean((-1, -2))[:, None, None] / h.mean((-1, -2)).abs().sum()

    report = check_equivariance(
        across_batch, cloud(batch=6, dtype=torch.float32), transforms=SO3(16, seed=0), inputs=FIELDS,
        outputs=Vectors(),
    )  # fmt: skip
    assert not report.passed, report
    assert report.parts[0].noise_floor > 0.1  # measured and shown, but not credited: it is no rounding
    assert "the output depends on the batch it is computed in" in report.hints[0]


def test_a_float32_model_passes_at_the_default_tolerance_and_its_floor_is_measured() -> None:
    model = Centred()
    report = check_equivariance(
        model, cloud(dtype=torch.float32), transforms=E3(32, seed=0), inputs=FIELDS, outputs=OUTPUTS
    )
    assert report.passed, report
    assert report.rtol == 1e-4
    assert all(p.noise_floor > 0 for p in report.parts)  # a float32 rotation rounds: the floor shows it
    # at a tolerance below what rounding gives, the floor (10x) still lets the correct model pass
    tight = check_equivariance(
        model, cloud(dtype=torch.float32), transforms=E3(32, seed=0), inputs=FIELDS, outputs=OUTPUTS, rtol=1e-9
    )  # fmt: skip
    assert tight.passed
    assert tight.max_error > 1e-9
    broken = check_equivariance(
        Centred(raw=True), cloud(dtype=torch.float32), transforms=E3(32, seed=0), inputs=FIELDS,
        outputs=OUTPUTS,
    )  # fmt: skip
    assert not broken.passed


def test_permutations_are_exact_and_their_floor_is_the_batched_path_alone() -> None:
    pos, h = cloud(dtype=torch.float32)
    report = check_equivariance(
        Centred(), (pos, h), transforms=Permutations(8, n=5), inputs=FIELDS, outputs=OUTPUTS
    )
    assert report.passed
    assert len(report.results) == 8  # no round trip rows: a permutation does not round


def test_invariance_and_the_errors() -> None:
    pos, h = cloud()
    summed = lambda pos, h: (pos - pos.mean(-2, keepdim=True)).norm(dim=-1).sum(-1)  # noqa: E731
    assert check_invariance(summed, (pos, h), transforms=E3(8), inputs=FIELDS).passed
    assert assert_invariant(summed, (pos, h), transforms=Permutations(8, n=5), inputs=FIELDS).passed
    first = lambda pos, h: pos[..., 0, :].norm(dim=-1)  # noqa: E731
    with pytest.raises(EquivarianceError, match="the pooled output changes when the points are reordered"):
        assert_invariant(first, (pos, h), transforms=Permutations(8, n=5), inputs=FIELDS)
    g = SO3(1, seed=3)[0]
    errors = equivariance_error(
        Centred(raw=True).double(), (pos, h), g, inputs=FIELDS, outputs=OUTPUTS, reduction="none"
    )
    assert errors.shape == (3,)
    assert bool((errors > 1e-3).all())
    # the error of a sample is the larger of its outputs' relative errors, computed by hand
    energy, _forces = Centred(raw=True).double()(pos, h)
    moved_energy, _ = Centred(raw=True).double()(pos @ g.matrix.T, h)
    by_hand = ((moved_energy - energy).abs() / energy.abs()).detach()
    assert torch.allclose(errors, by_hand, rtol=1e-9)
    assert float(invariance_error(summed, (pos, h), g, inputs=FIELDS)) < 1e-12
    assert_equivariant(Centred().double(), (pos, h), transforms=SO3(4), inputs=FIELDS, outputs=OUTPUTS)


def test_the_inputs_are_left_as_they_were() -> None:
    pos, h = cloud()
    before = (pos.clone(), h.clone())

    def writes(pos: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        pos.mul_(2)
        return pos - pos.mean(-2, keepdim=True)

    check_equivariance(writes, (pos, h), transforms=SO3(4), inputs=FIELDS, outputs=Vectors())
    assert torch.equal(pos, before[0])
    assert torch.equal(h, before[1])


def test_a_forgotten_input_is_caught_and_named() -> None:
    """Edge vectors given beside the positions: left alone (None), every rotation breaks the check."""

    def messages(pos: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        return (edges * edges.norm(dim=-1, keepdim=True)).sum(-2) + 0 * pos

    pos, _ = cloud()
    edges = pos[..., :, None, :] - pos[..., None, :, :]  # (B, N, N, 3)
    right = check_equivariance(
        messages, (pos, edges), transforms=SO3(8), inputs=(Positions(), Vectors(nodes=None)),
        outputs=Vectors(),
    )  # fmt: skip
    assert right.passed
    assert right.max_error < 1e-13
    forgotten = check_equivariance(
        messages, (pos, edges), transforms=SO3(8), inputs=(Positions(), None), outputs=Vectors()
    )
    assert not forgotten.passed
    assert forgotten.max_error > 1e-2
    assert any(
        "input 'edges' (argument 1) is left alone (field type None): an input the elements should move"
        in hint
        for hint in forgotten.hints
    ), forgotten.hints


def test_a_reflection_of_a_pseudovector_declared_a_vector_is_named() -> None:
    def cross(pos: torch.Tensor) -> torch.Tensor:
        return torch.linalg.cross(pos, pos.roll(1, -2), dim=-1)

    pos, _ = cloud()
    checks = dict(transforms=[Rotation.inversion()], inputs=Positions())
    assert check_equivariance(cross, pos, outputs=Pseudovectors(), **checks).passed  # type: ignore[arg-type]
    report = check_equivariance(cross, pos, outputs=Vectors(), **checks)  # type: ignore[arg-type]
    assert not report.passed
    assert "does not follow the reflections: if it is axial" in report.hints[0]


# -- messages ------------------------------------------------------------------------------------------

MESSAGES = [
    (
        dict(inputs=(Positions(),)),
        r"x holds 2 positional arguments but inputs= gives 1 field type \(an argument with no field type\); "
        r"pass one field type per argument, None for one that no element moves",
    ),
    (
        dict(inputs=(Positions(), Scalars(), Scalars())),
        r"x holds 2 positional arguments but inputs= gives 3 field types \(an action for an argument that "
        r"is not there\)",
    ),
    (
        dict(inputs=(Vectors(), Vectors())),
        r"input 'h' \(argument 1\): Vectors\(\) expects a tensor \(\.\.\., N, 3\) with its 3 components last, "
        r"found shape \(3, 5, 2\); pass the 3 components on the last axis, or Scalars\(\) for features",
    ),
    (
        dict(inputs=(Positions(), Scalars()), outputs=None),
        r"inputs= says how the elements move the model's arguments; pass outputs= too, the field type of "
        r"each output",
    ),
    (
        dict(inputs=(Positions(), Scalars()), outputs=(Scalars(), Vectors())),
        r"output output\[0\] of shape \(3,\): Scalars\(\) expects a tensor \(\.\.\., N, C\) but found shape "
        r"\(3,\), which has no axis -2 of points; pass nodes= the axis of the points, or nodes=None",
    ),
    (
        dict(inputs=(Positions(), Scalars()), outputs=(Vectors(),)),
        r"outputs= gives 1 field type but the model returned a tuple of 2 items; pass one field type per "
        r"output",
    ),
    (
        dict(inputs=(Positions(), Scalars()), transforms=Permutations(2, n=7)),
        r"input 'pos' \(argument 0\): Permutation\(.*\) permutes 7 points, but Positions\(\) of shape "
        r"\(3, 5, 3\) has 5 on its axis of points",
    ),
    (
        dict(inputs=(Positions(), Scalars()), transforms=None),
        r"inputs= needs the elements to check: pass transforms=, e.g. transforms=SO3\(64, seed=0\)",
    ),
    (
        dict(inputs=(Positions(), Scalars()), max_shift=2),
        r"max_shift is an option of tensors on a grid, which a measurement of several inputs and outputs "
        r"\(inputs=, outputs=\) does not take; drop it, and pass the elements as transforms=",
    ),
    (
        dict(inputs=(Positions(nodes=0), Scalars())),
        r"input 'pos' \(argument 0\) has its points on axis 0 \(Positions\(nodes=0\)\), but axis 0 of every "
        r"argument is the batch of samples; add a batch axis",
    ),
    (
        dict(inputs=(Positions, Scalars())),
        r"inputs gives 'pos' \(argument 0\) the class Positions; pass Positions\(\)",
    ),
    (
        dict(inputs=(Positions(), Scalars()), transforms=[Translation([1.0, 0.0])]),
        r"input 'pos' \(argument 0\): Positions\(\) expects a tensor \(\.\.\., N, 2\) with its 2 components",
    ),
]


@pytest.mark.parametrize(("options", "message"), MESSAGES, ids=[m[:40] for _, m in MESSAGES])
def test_mismatches_are_named_with_the_fix(options: dict[str, object], message: str) -> None:
    given = {"transforms": SO3(2), "outputs": OUTPUTS, **options}
    with pytest.raises(InvalidArgument, match=message):
        check_equivariance(Centred().double(), cloud(), **given)  # type: ignore[arg-type]


def test_dict_mismatches_are_named() -> None:
    pos, h = cloud()
    model = lambda pos, h: pos  # noqa: E731
    with pytest.raises(InvalidArgument, match=r"inputs= gives a field type to 'x', which x does not have "
                       r"\(it has 'pos', 'h'\); give field types only to the model's arguments"):  # fmt: skip
        check_equivariance(model, {"pos": pos, "h": h}, transforms=SO3(2),
                           inputs={"pos": Positions(), "x": Scalars()}, outputs=Vectors())  # fmt: skip
    with pytest.raises(InvalidArgument, match=r"the tensor 'h' of x has no field type in inputs=; give each "
                       r"one, None to leave it alone, e.g. \{'h': None\}"):  # fmt: skip
        check_equivariance(model, {"pos": pos, "h": h}, transforms=SO3(2), inputs={"pos": Positions()},
                           outputs=Vectors())  # fmt: skip


def test_a_tuple_without_field_types_and_a_point_element_on_a_grid_are_refused() -> None:
    pos, h = cloud()
    with pytest.raises(InvalidArgument, match=r"x holds 2 positional arguments \('pos' \(argument 0\), 'h' "
                       r"\(argument 1\)\); pass inputs= a tuple of as many field types"):  # fmt: skip
        check_invariance(lambda pos, h: pos.sum(-2), (pos, h), transforms=SO3(2))
    with pytest.raises(InvalidArgument, match=r"acts on tensors of points by their field type, not on a "
                       r"grid; pass inputs= the field type of x"):  # fmt: skip
        check_equivariance(lambda p: p, pos, transforms=SO3(2))
    with pytest.raises(InvalidArgument, match=r"the tensors of x must share their first axis, the batch of "
                       r"samples, found 'pos' \(argument 0\) 3, 'h' \(argument 1\) 2"):  # fmt: skip
        check_invariance(lambda pos, h: pos.sum(-2), (pos, h[:2]), transforms=SO3(2), inputs=FIELDS)
    with pytest.raises(InvalidArgument, match=r"the model raised RuntimeError on 'pos' \(argument 0\) of "
                       r"shape \(3, 5, 3\), 'h' \(argument 1\) of shape \(3, 5, 2\) \(torch.float64, cpu\)"):  # fmt: skip
        check_invariance(lambda pos, h: pos @ h, (pos, h), transforms=SO3(2), inputs=FIELDS)


def test_a_model_that_ignores_its_inputs_is_vacuous() -> None:
    pos, h = cloud()
    report = check_invariance(lambda pos, h: torch.ones(len(pos)), (pos, h), transforms=SO3(2), inputs=FIELDS)
    assert report.within_tolerance
    assert not report.passed
    assert report.vacuous is not None
    assert "does not respond to the input" in report.vacuous


def test_one_permutation_of_a_transformer_through_the_error() -> None:
    layer = nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0, batch_first=True).double().eval()
    h = torch.randn(2, 6, 4, dtype=torch.float64)
    g = Permutation.cycle(6)
    assert float(equivariance_error(layer, h, g, inputs=Scalars(), outputs=Scalars())) < 1e-12


# -- torch_geometric graphs ----------------------------------------------------------------------------


def ring(nodes: int = 6, seed: int = 0) -> object:
    data = pytest.importorskip("torch_geometric.data")
    generator = torch.Generator().manual_seed(seed)
    edges = [(i, (i + 1) % nodes) for i in range(nodes)]
    edge_index = torch.tensor(edges + [(j, i) for i, j in edges]).T.contiguous()
    pos = torch.randn(nodes, 3, generator=generator, dtype=torch.float64)
    x = torch.randn(nodes, 2, generator=generator, dtype=torch.float64)
    return data.Data(x=x, pos=pos, edge_index=edge_index)


GRAPH = {"x": Scalars(nodes=0), "pos": Positions(nodes=0), "edge_index": EdgeIndex()}


def messages(data: object) -> torch.Tensor:
    """Per node: the sum over its neighbours of the edge vectors times the neighbour's features."""
    src, dst = data.edge_index  # type: ignore[attr-defined]
    vectors = (data.pos[src] - data.pos[dst]) * data.x[src, :1]  # type: ignore[attr-defined]
    return torch.zeros_like(data.pos).index_add(0, dst, vectors)  # type: ignore[attr-defined]


def test_a_graph_is_checked_with_a_field_type_per_attribute() -> None:
    graph = ring()
    report = check_equivariance(
        messages, graph, transforms=[*Permutations(4, n=6), *E3(4)], inputs=GRAPH, outputs=Vectors(nodes=0)
    )
    assert report.passed, report
    assert "'edge_index' (2, 12) EdgeIndex() of 1 graph" in report.inputs
    # the edges left alone: a permutation then joins other nodes
    broken = check_equivariance(
        messages, graph, transforms=Permutations(4, n=6), inputs={**GRAPH, "edge_index": None},
        outputs=Vectors(nodes=0),
    )  # fmt: skip
    assert not broken.passed
    assert "input 'edge_index' is left alone (field type None)" in " ".join(broken.hints)


def test_a_batch_of_graphs_is_one_sample_a_graph() -> None:
    data = pytest.importorskip("torch_geometric.data")
    batch = data.Batch.from_data_list([ring(seed=0), ring(seed=1), ring(seed=2)])
    report = check_equivariance(
        messages, batch, transforms=SO3(8), inputs=GRAPH, outputs=Vectors(nodes=0), batch_size=5
    )
    assert report.passed
    assert report.parts[0].shape == (3, 6, 3)  # three graphs of six nodes
    pooled = lambda d: torch.zeros(d.num_graphs, 2, dtype=d.x.dtype).index_add(0, d.batch, d.x)  # noqa: E731
    assert check_invariance(pooled, batch, transforms=Permutations(4, n=6), inputs=GRAPH).passed


# -- a Batch of graphs of different sizes: molecules of 5, 9 and 12 atoms ---------------------------------


def molecule(atoms: int, seed: int) -> object:
    """A molecule: positions, atom types and every pair of atoms as an edge."""
    data = pytest.importorskip("torch_geometric.data")
    generator = torch.Generator().manual_seed(seed)
    src, dst = torch.meshgrid(torch.arange(atoms), torch.arange(atoms), indexing="ij")
    keep = src != dst
    return data.Data(
        pos=torch.randn(atoms, 3, generator=generator, dtype=torch.float64),
        z=torch.randint(0, 4, (atoms,), generator=generator),
        edge_index=torch.stack([src[keep], dst[keep]]),
    )


def molecules(dtype: torch.dtype = torch.float64) -> object:
    data = pytest.importorskip("torch_geometric.data")
    batch = data.Batch.from_data_list([molecule(5, 0), molecule(9, 1), molecule(12, 2)])
    batch.pos = batch.pos.to(dtype)
    return batch


MOLECULE = {"pos": Positions(nodes=0), "z": Scalars(nodes=0), "edge_index": EdgeIndex()}
ENERGY_FORCES = (Scalars(nodes=None), Vectors(nodes=0))


class PairPotential(nn.Module):
    """Energy per molecule (a sum over its edges of a pair term of the atom types and the distance) and
    forces per atom (minus its gradient). ``index_feature`` adds each atom's index in the whole Batch to
    its pair weight (a global node index used as a feature: breaks permutations); ``neighbour`` adds the
    position of the next atom in the Batch to each atom's force, across graph boundaries at the ends."""

    def __init__(self, index_feature: bool = False, neighbour: bool = False) -> None:
        super().__init__()
        self.index_feature, self.neighbour = index_feature, neighbour
        self.embed = nn.Embedding(4, 6)

    def forward(self, data: object) -> tuple[torch.Tensor, torch.Tensor]:
        z, batch = data.z, data.batch  # type: ignore[attr-defined]
        with torch.enable_grad():
            pos = data.pos.detach().requires_grad_()  # type: ignore[attr-defined]
            src, dst = data.edge_index  # type: ignore[attr-defined]
            weight = (self.embed(z[src]) * self.embed(z[dst])).sum(-1).to(pos.dtype)
            if self.index_feature:
                weight = weight + 0.1 * src.to(pos.dtype)
            pair = weight * torch.exp(-(pos[src] - pos[dst]).norm(dim=-1))
            energy = torch.zeros(int(batch.max()) + 1, dtype=pos.dtype).index_add(0, batch[src], pair)
            (grad,) = torch.autograd.grad(energy.sum(), pos)
        forces = -grad
        if self.neighbour:
            forces = forces + 0.1 * torch.roll(pos.detach(), 1, 0)
        return energy.detach(), forces


def test_molecules_of_different_sizes_in_one_batch_turn_and_permute_graph_by_graph() -> None:
    batch = molecules()
    model = PairPotential().double()
    elements = [*E3(16, seed=0), *NodePermutations(16, seed=0)]
    report = check_equivariance(model, batch, transforms=elements, inputs=MOLECULE, outputs=ENERGY_FORCES)
    assert report.passed, report
    assert [p.shape for p in report.parts] == [(3,), (3, 12, 3)]  # forces one row a molecule, padded
    assert report.max_error < 1e-12  # float64: the padding adds nothing, the references are exact
    assert "3 graphs of 5 to 12 nodes" in report.inputs
    # each molecule's own error: per graph
    errors = equivariance_error(
        model, batch, SO3(1, seed=3)[0], inputs=MOLECULE, outputs=ENERGY_FORCES, reduction="none"
    )
    assert errors.shape == (3,)
    assert float(errors.max()) < 1e-12
    # float32 at the default tolerance: the floor shows the rounding, the check passes
    single = check_equivariance(
        PairPotential(), molecules(torch.float32), transforms=elements, inputs=MOLECULE, outputs=ENERGY_FORCES
    )  # fmt: skip
    assert single.passed, single
    assert single.parts[1].noise_floor > 0
    # invariance: a per-node output compared graph by graph, a pooled one as it is
    atoms = lambda data: data.z.to(torch.float64)[:, None] * 1.0  # noqa: E731
    energy = lambda data: model(data)[0]  # noqa: E731
    assert check_invariance(energy, batch, transforms=NodePermutations(8), inputs=MOLECULE).passed
    assert check_invariance(atoms, batch, transforms=E3(8), inputs=MOLECULE).passed
    assert not check_invariance(atoms, batch, transforms=NodePermutations(8), inputs=MOLECULE).passed


def test_a_permutation_of_a_batch_never_mixes_its_graphs() -> None:
    """Each atom drawn halfway to its own molecule's centroid: equivariant under a permutation within
    each graph, not under one across graphs (the centroids would change); a position output, whose
    padding a translation must not move."""
    batch = molecules()

    def centred(data: object) -> torch.Tensor:
        pos, index = data.pos, data.batch  # type: ignore[attr-defined]
        sums = torch.zeros(int(index.max()) + 1, 3, dtype=pos.dtype).index_add(0, index, pos)
        counts = torch.bincount(index).to(pos.dtype)[:, None]
        centroid = (sums / counts)[index]
        return centroid + 0.5 * (pos - centroid)  # a position: moves with a translation

    report = check_equivariance(
        centred, batch, transforms=[*NodePermutations(8, seed=1), *E3(8, seed=1)], inputs=MOLECULE,
        outputs=Positions(nodes=0),
    )  # fmt: skip
    assert report.passed, report


@pytest.mark.parametrize(
    ("broken", "hint"),
    [
        ({"index_feature": True}, "the pooled output (output[0]) changes when the points are reordered"),
        ({"neighbour": True}, "the per-node output (output[1]) does not permute with the points"),
    ],
)
def test_a_model_that_reads_node_order_across_a_batch_fails_under_permutation(
    broken: dict[str, bool], hint: str
) -> None:
    """Negative controls: a global node index used as a feature, or a force that reads the next atom in
    the Batch (across graph boundaries)."""
    model = PairPotential(**broken).double()
    report = check_equivariance(
        model, molecules(), transforms=NodePermutations(16, seed=0), inputs=MOLECULE, outputs=ENERGY_FORCES
    )  # fmt: skip
    assert not report.passed
    assert any(hint in h for h in report.hints), report.hints


def test_a_few_bad_graphs_among_a_batch_are_named() -> None:
    """Errors tiny for most molecules and large for one: the worst graph and the count are reported."""

    def nine_atoms_break(data: object) -> torch.Tensor:
        pos, index = data.pos, data.batch  # type: ignore[attr-defined]
        counts = torch.bincount(index)
        centroid = torch.zeros(len(counts), 3, dtype=pos.dtype).index_add(0, index, pos) / counts[:, None]
        bad = (counts[index] == 9).to(pos.dtype)[:, None]  # the molecule of 9 atoms reads a raw coordinate
        return pos - centroid[index] + bad * pos[:, :1]

    report = check_equivariance(
        nine_atoms_break, molecules(), transforms=SO3(8), inputs=MOLECULE, outputs=Vectors(nodes=0)
    )
    (part,) = report.parts
    assert not part.passed
    assert (part.failed_samples, part.samples, part.sample) == (1, 3, 1)


def test_a_permutation_of_a_fixed_size_on_graphs_of_several_sizes_is_told_the_fix() -> None:
    with pytest.raises(InvalidArgument, match=r"Permutation\(\[4, 0, 1, 3, 2\]\) permutes .* "
                       r"\(graph 1 of x has 9 nodes; the graphs of x have 5, 9 and 12\): to permute the nodes of "
                       r"graphs of different sizes, pass NodePermutations\(16, seed=0\)"):  # fmt: skip
        check_equivariance(PairPotential().double(), molecules(), transforms=Permutations(4, n=5),
                           inputs=MOLECULE, outputs=ENERGY_FORCES)  # fmt: skip


def test_graph_mismatches_are_named() -> None:
    graph = ring()
    with pytest.raises(InvalidArgument, match=r"x's tensors 'pos' have no field type; give each one \(None "
                       r"to leave it alone\)"):  # fmt: skip
        check_equivariance(messages, graph, transforms=SO3(2), inputs={"x": Scalars(nodes=0),
                           "edge_index": EdgeIndex()}, outputs=Vectors(nodes=0))  # fmt: skip
    with pytest.raises(InvalidArgument, match=r"x is a torch_geometric Data, so inputs must be a dict of "
                       r"field types by attribute"):  # fmt: skip
        check_equivariance(messages, graph, transforms=SO3(2), inputs=Scalars(), outputs=Vectors(nodes=0))
    with pytest.raises(InvalidArgument, match=r"x.x: Vectors\(nodes=0\) expects a tensor"):
        check_equivariance(messages, graph, transforms=SO3(2), inputs={**GRAPH, "x": Vectors(nodes=0)},
                           outputs=Vectors(nodes=0))  # fmt: skip


def test_a_few_bad_samples_among_many_are_counted() -> None:
    """Errors tiny for most inputs and large for a few: the report counts the samples that fail."""

    def sometimes(pos: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        offsets = pos - pos.mean(-2, keepdim=True)
        odd = (h[:, :1, :1] > 1.0).to(pos.dtype)  # a few clouds add their first coordinate everywhere
        return offsets + odd * pos[..., :1]

    pos, h = cloud(batch=16)
    bad = int((h[:, 0, 0] > 1.0).sum())
    assert 0 < bad < 8
    report = check_equivariance(sometimes, (pos, h), transforms=SO3(4), inputs=FIELDS, outputs=Vectors())
    (part,) = report.parts
    assert not part.passed
    assert (part.failed_samples, part.samples) == (bad, 16)
    assert f"FAIL ({bad} of 16 samples), sample " in str(report)


# -- one refusal of a value that is not a field type, one rule for acting on each input ----------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            dict(inputs=(Positions(), "scalars")),
            r"inputs gives 'h' \(argument 1\) 'scalars' \(str\), which is not a field type; pass one of "
            r"equivariance\.fields \(Positions\(\), Scalars\(\), Vectors\(\), \.\.\.\) or None$",
        ),
        (
            dict(outputs=(Scalars(nodes=None), Vectors)),
            r"outputs gives output 1 the class Vectors; pass Vectors\(\)",
        ),
        (
            dict(outputs=(Scalars(nodes=None), 3)),
            r"outputs gives output 1 3 \(int\), which is not a field type",
        ),
    ],
)
def test_a_value_that_is_not_a_field_type_is_refused_wherever_it_is_given(
    options: dict[str, object], message: str
) -> None:
    given = {"transforms": SO3(2), "inputs": FIELDS, "outputs": OUTPUTS, **options}
    with pytest.raises(InvalidArgument, match=message):
        check_equivariance(Centred().double(), cloud(), **given)  # type: ignore[arg-type]
    # None is a field type's absence where one may be left alone: the same call with None runs
    left_alone = (
        {**given, "inputs": (Positions(), None)}
        if "inputs" in options
        else {**given, "outputs": (Scalars(nodes=None), None)}
    )
    check_equivariance(Centred().double(), cloud(), **left_alone)  # type: ignore[arg-type]


class Breaking(Rotation):
    """A rotation whose action raises a plain error on features, or returns the wrong shape."""

    def __init__(self, how: str) -> None:
        super().__init__(Rotation.about("z", 0.5)._matrix)
        self.how = how

    def act(self, x: torch.Tensor, where: object) -> torch.Tensor:
        if isinstance(where, Scalars) and self.how == "raises":
            raise ValueError("no features here")
        if isinstance(where, Scalars) and self.how == "shape":
            return x[..., :1]
        return super().act(x, where)

    @classmethod
    def batched(cls, x: torch.Tensor, elements: object, grid: object) -> None:
        return None  # its own act, one element at a time

    def __repr__(self) -> str:
        return f"Breaking({self.how!r})"


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("raises", r"Breaking\('raises'\) cannot act on input 'h' \(argument 1\) of field type Scalars\(\) "
         r"\(ValueError: no features here\); check points with the elements"),
        ("shape", r"Breaking\('shape'\) must keep the shape of input 'h' \(argument 1\), \(1, 5, 2\) for one "
         r"sample, found tensor"),
    ],
)  # fmt: skip
def test_an_element_that_fails_on_one_input_is_named_with_that_input(how: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        check_equivariance(
            Centred().double(), cloud(), transforms=[Breaking(how)], inputs=FIELDS, outputs=OUTPUTS
        )
    check_equivariance(
        Centred().double(), cloud(), transforms=[Breaking("nothing")], inputs=FIELDS, outputs=OUTPUTS
    )
