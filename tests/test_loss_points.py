"""The equivariance loss of a model of several inputs and outputs (point clouds, molecules, graphs): the
squared error of ``equivariance_error`` averaged, gradients that reach the parameters, training that
lowers it, the model and its inputs left as they were, and clear refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from equivariance import equivariance_error
from equivariance.errors import InvalidArgument
from equivariance.euclidean import E3, SO3, Rotation
from equivariance.fields import EdgeIndex, Positions, Scalars, Vectors
from equivariance.loss import equivariance_loss
from equivariance.permutations import NodePermutations, Permutations

F64 = torch.float64
INPUTS = (Positions(), Scalars())
OUTPUTS = (Scalars(nodes=None), Vectors())


class PairModel(nn.Module):
    """Energy ``(B,)`` and forces ``(B, N, 3)`` from a learned pair weight of each pair's distance and
    features: E(3)- and permutation-equivariant. ``broken``: the pair weight also reads each atom's x
    coordinate through ``leak`` (a coordinate used as a feature), which training can turn down."""

    def __init__(self, broken: bool = False, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.pair = nn.Sequential(nn.Linear(2, 8, dtype=F64), nn.Tanh(), nn.Linear(8, 1, dtype=F64))
        self.leak = nn.Parameter(torch.tensor(1.0, dtype=F64)) if broken else None

    def forward(self, pos: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        distance = torch.cdist(pos, pos).unsqueeze(-1)
        features = torch.cat([distance, h.unsqueeze(2) * h.unsqueeze(1)], -1)
        weight = self.pair(features).squeeze(-1)
        if self.leak is not None:
            weight = weight + self.leak * pos[..., :1]  # each atom's own x, in the weight of its pairs
        energy = weight.sum((-1, -2))
        forces = (weight.unsqueeze(-1) * (pos.unsqueeze(2) - pos.unsqueeze(1))).sum(2)
        return energy, forces


def clouds(n: int = 4, points: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return (
        torch.randn(n, points, 3, dtype=F64, generator=generator),
        torch.randn(n, points, 1, dtype=F64, generator=generator),
    )


@pytest.mark.parametrize("broken", [False, True])
@pytest.mark.parametrize("elements", [SO3(3, seed=0), E3(2, seed=1), Permutations(2, n=5, seed=0)])
def test_the_loss_is_the_mean_squared_error_of_equivariance_error(broken: bool, elements: object) -> None:
    model = PairModel(broken).eval()
    x = clouds()
    loss = equivariance_loss(model, x, transforms=elements, inputs=INPUTS, outputs=OUTPUTS)
    errors = [
        equivariance_error(model, x, g, inputs=INPUTS, outputs=OUTPUTS, reduction="none") ** 2
        for g in elements  # type: ignore[attr-defined]
    ]
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(float(torch.stack(errors).mean()), rel=1e-6, abs=1e-20)
    if broken and not isinstance(elements, Permutations):
        assert loss.item() > 1e-2  # the leaked coordinate moves under rotations and translations
    else:
        assert loss.item() < 1e-20


def test_gradients_reach_the_parameters_and_training_lowers_the_loss() -> None:
    model = PairModel(broken=True).train()
    x = clouds()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = [t.clone() for t in x]
    rotations = SO3(4, seed=0)
    first = equivariance_loss(model, x, transforms=rotations, inputs=INPUTS, outputs=OUTPUTS)
    assert model.training  # its own mode, kept
    assert all(torch.equal(a, b) for a, b in zip(x, inputs))  # the inputs untouched
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # the model too
    first.backward()
    assert model.leak is not None
    assert model.leak.grad is not None
    assert float(model.leak.grad.abs()) > 0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02)
    generator = torch.Generator().manual_seed(0)
    for _ in range(15):  # a fresh draw of rotations each step
        optimizer.zero_grad()
        loss = equivariance_loss(
            model, x, transforms=rotations, samples=4, rng=generator, inputs=INPUTS, outputs=OUTPUTS
        )
        loss.backward()
        optimizer.step()
    last = equivariance_loss(model, x, transforms=rotations, inputs=INPUTS, outputs=OUTPUTS)
    assert last.item() < 0.5 * first.item(), (first.item(), last.item())
    assert abs(model.leak.item()) < 0.9  # the coordinate's weight turned down from 1


def test_samples_draws_fresh_elements_of_the_sample_group_from_rng() -> None:
    model = PairModel(broken=True).eval()
    x = clouds()
    options = {"inputs": INPUTS, "outputs": OUTPUTS}
    drawn = equivariance_loss(
        model, x, transforms=SO3(1, seed=0), samples=3, rng=torch.Generator().manual_seed(5), **options
    )
    rotations = SO3(1, seed=0).draw(3, torch.Generator().manual_seed(5))
    assert all(r not in SO3(1, seed=0) for r in rotations)  # not the sample's own rotation
    expected = equivariance_loss(model, x, transforms=rotations, **options)
    assert drawn.item() == pytest.approx(expected.item(), rel=1e-12)
    again = equivariance_loss(model, x, transforms=SO3(1, seed=0), samples=3, **options)
    assert again.item() != pytest.approx(drawn.item(), rel=1e-6)  # torch's global RNG: another draw
    # from a plain list: picked among its elements
    listed = [Rotation.about("z", 90, degrees=True), Rotation.about("x", 90, degrees=True)]
    picked = equivariance_loss(model, x, transforms=listed, samples=5, rng=torch.Generator(), **options)
    assert picked.item() > 1e-2


def test_graphs_of_different_sizes() -> None:
    data = pytest.importorskip("torch_geometric.data")

    def molecule(atoms: int, seed: int) -> object:
        generator = torch.Generator().manual_seed(seed)
        src, dst = torch.meshgrid(torch.arange(atoms), torch.arange(atoms), indexing="ij")
        keep = src != dst
        return data.Data(
            pos=torch.randn(atoms, 3, generator=generator, dtype=F64),
            edge_index=torch.stack([src[keep], dst[keep]]),
        )

    class Messages(nn.Module):
        """Per-atom forces from a learned weight of each edge's length; ``index`` reads each atom's place
        in its molecule (breaks node permutations)."""

        def __init__(self, index: bool) -> None:
            super().__init__()
            self.weight = nn.Linear(1, 1, dtype=F64)
            self.index = index

        def forward(self, graphs: object) -> torch.Tensor:
            pos, (src, dst) = graphs.pos, graphs.edge_index  # type: ignore[attr-defined]
            offset = pos[src] - pos[dst]
            w = self.weight(offset.norm(dim=-1, keepdim=True))
            if self.index:  # the atom's place in its own molecule
                place = src - graphs.ptr[graphs.batch[src]]  # type: ignore[attr-defined]
                w = w + 0.3 * place.unsqueeze(-1).to(F64)
            return torch.zeros_like(pos).index_add(0, src, w * offset)

    batch = data.Batch.from_data_list([molecule(4, 0), molecule(6, 1)])
    fields = {"pos": Positions(nodes=0), "edge_index": EdgeIndex()}
    elements = [*NodePermutations(2, seed=0), *SO3(2, seed=0)]
    for index in (False, True):
        model = Messages(index)
        loss = equivariance_loss(model, batch, transforms=elements, inputs=fields, outputs=Vectors(nodes=0))
        errors = [
            equivariance_error(model, batch, g, inputs=fields, outputs=Vectors(nodes=0), reduction="none")
            for g in elements
        ]
        assert loss.item() == pytest.approx(float((torch.stack(errors) ** 2).mean()), rel=1e-6, abs=1e-20)
        assert (loss.item() > 1e-3) == index
        given = equivariance_loss(
            model, batch, transforms=elements, reference=model(batch), inputs=fields, outputs=Vectors(nodes=0)
        )
        assert given.item() == pytest.approx(loss.item(), rel=1e-12, abs=1e-30)
        chunked = equivariance_loss(
            model, batch, transforms=elements, batch_size=3, inputs=fields, outputs=Vectors(nodes=0)
        )
        assert chunked.item() == pytest.approx(loss.item(), rel=1e-10, abs=1e-30)
        loss.backward()
        assert model.weight.weight.grad is not None


def test_a_model_that_reads_its_place_in_the_batch_gets_a_larger_loss_unless_chunked_as_x() -> None:
    """The loss runs x and every element's copies in one pass, where a node's index in the whole Batch
    differs from the one it has in x's pass; equivariance_error runs passes laid out as x. The model below
    is rotation-equivariant on the Batch it is given (rotations leave the indices as they are), so its
    error is zero, but its one-pass loss is not; ``batch_size=len(batch)`` gives the error back."""
    data = pytest.importorskip("torch_geometric.data")

    def molecule(seed: int) -> object:
        generator = torch.Generator().manual_seed(seed)
        src, dst = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
        keep = src != dst
        pos = torch.randn(4, 3, generator=generator, dtype=F64)
        return data.Data(pos=pos, edge_index=torch.stack([src[keep], dst[keep]]))

    class GlobalIndex(nn.Module):
        def __init__(self, place: float) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.weight, self.place = nn.Linear(1, 1, dtype=F64), place

        def forward(self, graphs: object) -> torch.Tensor:
            pos, (src, dst) = graphs.pos, graphs.edge_index  # type: ignore[attr-defined]
            offset = pos[src] - pos[dst]
            w = self.weight(offset.norm(dim=-1, keepdim=True)) + self.place * src.unsqueeze(-1).to(F64)
            return torch.zeros_like(pos).index_add(0, src, w * offset)

    batch = data.Batch.from_data_list([molecule(0), molecule(1)])
    options = {"inputs": {"pos": Positions(nodes=0), "edge_index": EdgeIndex()}, "outputs": Vectors(nodes=0)}
    rotations, permutations = list(SO3(3, seed=0)), list(NodePermutations(2, seed=0))
    for place in (0.0, 0.01):  # 0: the control, a model that does not read the index
        model = GlobalIndex(place)
        for elements in (rotations, permutations):
            errors = torch.stack([equivariance_error(model, batch, g, reduction="none", **options)
                                  for g in elements])  # fmt: skip
            mean = float((errors**2).mean())
            one_pass = equivariance_loss(model, batch, transforms=elements, **options).item()
            as_x = equivariance_loss(model, batch, transforms=elements, batch_size=2, **options).item()
            assert as_x == pytest.approx(mean, rel=1e-9, abs=1e-28)
            if place == 0:
                assert one_pass == pytest.approx(mean, rel=1e-9, abs=1e-28)
                assert mean < 1e-28
            else:
                assert one_pass > 10 * mean + 1e-4
                assert (mean < 1e-28) == (elements is rotations)  # a permutation moves the indices


def test_mismatched_options_are_refused_clearly() -> None:
    model, x = PairModel(), clouds()
    with pytest.raises(InvalidArgument, match=r"inputs= says how .* pass outputs= too"):
        equivariance_loss(model, x, transforms=SO3(2), inputs=INPUTS)
    with pytest.raises(InvalidArgument, match=r"inputs= needs the elements to penalize: pass transforms="):
        equivariance_loss(model, x, inputs=INPUTS, outputs=OUTPUTS)
    with pytest.raises(InvalidArgument, match=r"max_shift is an option of tensors on a grid"):
        equivariance_loss(model, x, transforms=SO3(2), max_shift=1, inputs=INPUTS, outputs=OUTPUTS)
    with pytest.raises(InvalidArgument, match=r"shifts, boundary are options of tensors on a grid"):
        equivariance_loss(
            model, x, [(1, 0)], boundary="zeros", transforms=SO3(2), inputs=INPUTS, outputs=OUTPUTS
        )
    with pytest.raises(
        InvalidArgument, match=r"batch_size= runs the copies in chunks .* is not an nn.Module"
    ):
        equivariance_loss(
            lambda pos, h: model(pos, h), x, transforms=SO3(2), batch_size=2, inputs=INPUTS, outputs=OUTPUTS
        )
    with pytest.raises(InvalidArgument, match=r"samples must be positive, found 0"):
        equivariance_loss(model, x, transforms=SO3(2), samples=0, inputs=INPUTS, outputs=OUTPUTS)
    with pytest.raises(InvalidArgument, match=r"rng must be a torch.Generator, found"):
        equivariance_loss(model, x, transforms=SO3(2), samples=2, rng=0, inputs=INPUTS, outputs=OUTPUTS)  # type: ignore[arg-type]
    with pytest.raises(
        InvalidArgument,
        match=r"is the identity, a penalty that is always zero; pass at least one nonzero rotation",
    ):
        equivariance_loss(model, x, transforms=[Rotation.identity()], inputs=INPUTS, outputs=OUTPUTS)
    with pytest.raises(InvalidArgument, match=r"outputs= gives 1 field type but the model returned a tuple"):
        equivariance_loss(model, x, transforms=SO3(2), inputs=INPUTS, outputs=(Vectors(),))
    with pytest.raises(InvalidArgument, match=r"input 'h'.*"):
        equivariance_loss(model, x, transforms=SO3(2), inputs=(Positions(), Vectors()), outputs=OUTPUTS)


def test_transforms_names_the_elements_of_a_grid_too() -> None:
    from equivariance import Flip, Rot90

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, dtype=F64), nn.Flatten(), nn.Linear(108, 4, dtype=F64))
    x = torch.randn(2, 1, 6, 6, dtype=F64)
    given = equivariance_loss(net, x, transforms=[Rot90(1), Flip(-1)])
    assert given.item() == pytest.approx(equivariance_loss(net, x, [Rot90(1), Flip(-1)]).item(), rel=1e-12)
    assert given.item() > 1e-2
    with pytest.raises(
        InvalidArgument, match=r"pass either shifts= or transforms= \(the elements to penalize\)"
    ):
        equivariance_loss(net, x, [(1, 0)], transforms=[Rot90(1)])
    with pytest.raises(
        InvalidArgument,
        match=r"transforms must hold Rot90, Flip or other actions .*found \(1, 0\) \(tuple\); shifts go in shifts=",
    ):
        equivariance_loss(net, x, transforms=[(1, 0)])


def test_a_reference_the_training_step_computed_is_used_with_its_graph() -> None:
    model = PairModel(broken=True).eval()
    x = clouds()
    rotations = SO3(3, seed=0)
    energy, forces = model(*x)
    given = equivariance_loss(
        model, x, transforms=rotations, reference=(energy, forces), inputs=INPUTS, outputs=OUTPUTS
    )
    one_pass = equivariance_loss(model, x, transforms=rotations, inputs=INPUTS, outputs=OUTPUTS)
    assert given.item() == pytest.approx(one_pass.item(), rel=1e-12)
    task = energy.square().mean()  # the task loss shares f(x): one backward through both
    (task + given).backward()
    assert model.leak is not None
    assert model.leak.grad is not None
    with pytest.raises(
        InvalidArgument, match=r"outputs= gives 2 field types but reference= returned a tuple of 1 items"
    ):
        equivariance_loss(model, x, transforms=rotations, reference=(energy,), inputs=INPUTS, outputs=OUTPUTS)
    with pytest.raises(
        InvalidArgument, match=r"reference= returned output\[0\] of shape \(2,\) for a batch of 4"
    ):
        equivariance_loss(
            model, x, transforms=rotations, reference=(energy[:2], forces), inputs=INPUTS, outputs=OUTPUTS
        )


@pytest.mark.parametrize("given", [False, True])
def test_chunks_give_the_one_pass_value_and_gradient(given: bool) -> None:
    x = clouds()
    rotations = E3(3, seed=2)
    found = []
    for batch_size in (None, 5):
        model = PairModel(broken=True).eval()
        reference = model(*x) if given else None
        loss = equivariance_loss(
            model, x, transforms=rotations, batch_size=batch_size, reference=reference, inputs=INPUTS,
            outputs=OUTPUTS,
        )  # fmt: skip
        loss.backward()
        found.append((loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (one, grads), (chunked, chunked_grads) = found
    assert chunked == pytest.approx(one, rel=1e-10)
    assert len(grads) == len(chunked_grads) == len(list(PairModel(broken=True).parameters()))
    for a, b in zip(grads, chunked_grads):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
