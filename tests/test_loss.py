"""The equivariance loss: the squared metric averaged, gradients that flow (chunked or not), the model's
own mode, the input untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from equivariance import Flip, Rot90, equivariance_error, invariance_error
from equivariance.errors import InvalidArgument
from equivariance.fractional import FractionalShift
from equivariance.loss import equivariance_loss

F64 = torch.float64


class Positional(nn.Module):
    """A small CNN with a coordinate channel: a non-equivariant part that training can learn to ignore."""

    def __init__(self, classes: int = 3, pooled: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(2, 6, 3, padding=1, padding_mode="circular", dtype=F64)
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1, dtype=F64)
        self.head = nn.Linear(4, classes, dtype=F64)
        self.pooled = pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-1, 1, x.shape[-1], dtype=x.dtype).expand(len(x), 1, *x.shape[2:])
        h = self.conv2(torch.tanh(self.conv1(torch.cat([x, ramp], dim=1))))
        return self.head(h.mean(dim=(-2, -1))) if self.pooled else h


def batch(n: int = 4, size: int = 10) -> torch.Tensor:
    return torch.randn(n, 1, size, size, dtype=F64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    ("pooled", "boundary", "elements"),
    [
        (False, "zeros", [(0, 2), (-1, 3), (2, 0)]),
        (False, "circular", [(0, 2), (-1, 3)]),
        (True, "circular", [(0, 2), (-1, 3)]),
        (False, "circular", [Rot90(1), Flip(-1)]),
        (False, "circular", [FractionalShift(0.0, 0.5)]),
    ],
    ids=["map-zeros", "map-circular", "logits", "transforms", "sub-pixel"],
)
def test_in_eval_mode_it_is_the_mean_squared_metric(
    pooled: bool, boundary: str, elements: list[object]
) -> None:
    model, x = Positional(pooled=pooled).eval(), batch()
    measure = invariance_error if pooled else equivariance_error
    expected = torch.stack(
        [measure(model, x, e, boundary=boundary, reduction="none") ** 2 for e in elements]  # type: ignore[operator]
    ).mean()
    loss = equivariance_loss(model, x, elements, boundary=boundary)  # type: ignore[arg-type]
    assert float(expected) > 1e-5  # the positional channel breaks the symmetry
    assert loss.item() == pytest.approx(float(expected), rel=1e-9)


def test_a_strided_map_is_compared_with_the_reference_moved_by_the_shift_over_the_stride() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 3, 3, stride=2, padding=1, padding_mode="circular", dtype=F64)
    x = batch(size=12)
    assert equivariance_loss(conv, x, [(2, -4)], stride=2).item() < 1e-25
    assert equivariance_loss(conv, x, samples=3, stride=2, max_shift=4).item() < 1e-25  # multiples of 2
    assert equivariance_loss(conv, x, [(1, 0)], stride=1).item() > 0.1  # the wrong output action fails


def test_gradients_flow_and_chunks_accumulate_the_same_gradients() -> None:
    x = batch(5)
    shifts = [(0, 2), (1, -3), (3, 3)]
    grads = []
    values = []
    for size in (None, 4, 7):  # 15 copies: chunks across rows, one pass, and within a row
        model = Positional(pooled=False)
        loss = equivariance_loss(model, x, shifts, boundary="zeros", batch_size=size)
        assert loss.requires_grad
        loss.backward()
        values.append(loss.item())
        assert model.head.weight.grad is None  # the head is not used for a map
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == 4
    assert min(float(g.abs().max()) for g in grads[0]) > 1e-4
    for value, found in zip(values[1:], grads[1:]):
        assert value == pytest.approx(values[0], rel=1e-12)
        assert all(torch.allclose(a, b, rtol=1e-9, atol=1e-14) for a, b in zip(found, grads[0]))


@pytest.mark.parametrize("size", [None, 5], ids=["one-pass", "chunked"])
def test_a_reference_the_step_computed_saves_a_pass_and_keeps_its_graph(size: int | None) -> None:
    x, shifts = batch(5), [(0, 2), (1, -3)]
    model = Positional()
    plain = model(x).square().mean() + equivariance_loss(model, x, shifts, batch_size=size)
    plain.backward()
    expected = [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]
    model.zero_grad()
    calls = []
    handle = model.conv1.register_forward_hook(lambda _m, args, _out: calls.append(len(args[0])))
    logits = model(x)
    penalty = equivariance_loss(model, x, shifts, batch_size=size, reference=logits)
    handle.remove()
    assert sum(calls) == 5 + 10  # the step's own pass and the copies: x is not run again
    step = logits.square().mean() + penalty  # the task loss's graph is still there
    assert step.item() == pytest.approx(plain.item(), rel=1e-12)
    step.backward()
    got = [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]
    assert all(torch.allclose(a, b, rtol=1e-9, atol=1e-14) for a, b in zip(got, expected))


def test_training_on_the_penalty_alone_lowers_it() -> None:
    model, x = Positional(pooled=False), batch(4, size=8)
    shifts = [(0, 3), (2, -2)]
    before = equivariance_loss(model, x, shifts).item()
    for _ in range(8):  # plain gradient descent
        model.zero_grad()
        equivariance_loss(model, x, shifts).backward()
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= 0.5 * p.grad
    assert before > 0.5
    assert equivariance_loss(model, x, shifts).item() < before / 5


def test_it_runs_in_the_models_own_mode_and_never_changes_the_input() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.ReLU(inplace=True),  # writes to its input: the copies and x.clone() take it, never x
        nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular", dtype=F64), nn.BatchNorm2d(4, dtype=F64),
        nn.Dropout(0.5),
    )  # fmt: skip
    x = batch()
    kept = x.clone()
    stats = model[2].running_mean.clone()
    first = equivariance_loss(model, x, [(0, 1)])
    second = equivariance_loss(model, x, [(0, 1)])
    first.backward()
    assert torch.equal(x, kept)
    assert model.training  # the caller's mode, not eval
    assert first.item() != second.item()  # dropout draws in train mode
    assert not torch.equal(model[2].running_mean, stats)  # a training pass updates the statistics
    model.eval()
    assert equivariance_loss(model, x, [(0, 1)]).item() < 1e-25  # circular shifts commute with it all


def test_random_shifts_come_from_the_rng_given_or_the_global_one() -> None:
    model, x = Positional(), batch()

    def draw(seed: int) -> float:
        return equivariance_loss(
            model, x, samples=2, max_shift=3, rng=torch.Generator().manual_seed(seed)
        ).item()

    state = torch.random.get_rng_state()
    assert draw(0) == draw(0)
    assert len({draw(seed) for seed in range(6)}) > 1
    assert torch.equal(torch.random.get_rng_state(), state)  # rng= leaves the global RNG alone
    equivariance_loss(model, x, samples=2)
    assert not torch.equal(torch.random.get_rng_state(), state)  # like dropout, it draws from it


def test_under_no_grad_the_chunks_give_the_value_alone() -> None:
    model, x = Positional(), batch()
    with torch.no_grad():
        chunked = equivariance_loss(model, x, [(0, 1), (1, 1)], batch_size=3)
    assert not chunked.requires_grad
    assert float(chunked) == pytest.approx(equivariance_loss(model, x, [(0, 1), (1, 1)]).item(), rel=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shifts": [(0, 1)], "samples": 2}, "pass either shifts= .* or samples= .*, not both"),
        ({"samples": 0}, "samples must be positive, found 0"),
        ({"shifts": (0, 1)}, r"shifts \(0, 1\) is one shift, not a list of them; pass shifts=\[\(0, 1\)\]"),
        ({"shifts": []}, "shifts must be a non-empty list"),
        ({"shifts": [(1, 0)], "stride": 2}, r"shift \(1, 0\) is not a multiple of the stride \(2, 2\)"),
        ({"shifts": [(0, 1, 2)]}, "has 3 dims but x of shape"),
        ({"max_shift": 1, "stride": 2}, r"max_shift \(1, 1\) holds no nonzero multiple of the stride"),
        ({"boundary": "reflect"}, "boundary must be one of 'zeros', 'circular'"),
        ({"rng": 3}, r"rng must be a torch.Generator, found 3 \(int\)"),
        ({"batch_size": 0}, "batch_size must be positive"),
        (
            {"reference": torch.zeros(3, 3, dtype=F64)},
            r"reference of shape \(3, 3\) is not an output for x of batch 4",
        ),
        ({"reference": [1.0]}, "reference must be the model's floating-point output for x"),
    ],
    ids=[
        "both",
        "samples",
        "one-shift",
        "empty",
        "stride",
        "dims",
        "box",
        "boundary",
        "rng",
        "batch",
        "reference-batch",
        "reference-type",
    ],
)
def test_bad_arguments_are_refused_with_a_fix(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        equivariance_loss(Positional(), batch(), **kwargs)  # type: ignore[arg-type]


def test_chunks_need_a_module_whose_parameters_take_the_gradient() -> None:
    with pytest.raises(InvalidArgument, match=r"is not an nn\.Module; pass the module, or drop batch_size="):
        equivariance_loss(lambda v: v * 2, batch(), [(0, 1)], batch_size=2)


def test_chunks_are_refused_where_batch_statistics_would_change_the_value() -> None:
    """Issue 21, item 2: chunked, a BatchNorm in train mode normalizes each chunk by its own statistics
    (0.005 where one pass gives 0.0) and updates its running statistics once per chunk: refused, before
    any forward pass, with the reason; in eval mode (running statistics), and with a per-sample
    normalization, chunks give the one-pass value."""
    torch.manual_seed(0)

    def conv() -> nn.Conv2d:
        return nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular", dtype=F64)

    model = nn.Sequential(conv(), nn.BatchNorm2d(4, dtype=F64), conv())
    x = torch.randn(4, 4, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(2))
    assert equivariance_loss(model, x, [(0, 1)]).item() < 1e-25  # one pass: exact
    tracked = int(model[1].num_batches_tracked)
    with pytest.raises(
        InvalidArgument,
        match=r"^batch_size=1 runs the 4 copies in 4 chunks, but BatchNorm2d '1' normalizes with the statistics "
        r"of the batch it is given and updates its running statistics at every pass \(train mode\).*Drop "
        r"batch_size= to run the copies in one pass, compute the penalty in eval mode",
    ):
        equivariance_loss(model, x, [(0, 1)], batch_size=1)
    assert int(model[1].num_batches_tracked) == tracked  # refused before any pass
    no_stats = nn.Sequential(conv(), nn.BatchNorm2d(4, track_running_stats=False, dtype=F64)).eval()
    with pytest.raises(InvalidArgument, match=r"also in eval mode \(it has no running statistics\)"):
        equivariance_loss(no_stats, x, [(0, 1)], batch_size=2)
    model.eval()
    assert equivariance_loss(model, x, [(0, 1)], batch_size=1).item() == pytest.approx(
        equivariance_loss(model, x, [(0, 1)]).item(), abs=1e-25
    )
    per_sample = nn.Sequential(conv(), nn.GroupNorm(2, 4, dtype=F64), conv()).train()
    chunked = equivariance_loss(per_sample, x, [(0, 1), (2, 1)], batch_size=3).item()
    assert chunked == pytest.approx(equivariance_loss(per_sample, x, [(0, 1), (2, 1)]).item(), abs=1e-25)
