"""The training monitor: what it measures, when, what it logs, and that training goes on exactly as without it."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from equivariance import InvalidArgument, invariance_error
from equivariance.euclidean import SO3
from equivariance.monitor import MEASURES, EquivarianceMonitor, MonitorRecord


def classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.3), nn.MaxPool2d(2),
        nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    )  # fmt: skip


def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(32, 1, 12, 12, generator=generator), torch.randint(0, 3, (32,), generator=generator)


def train(model: nn.Module, monitor: EquivarianceMonitor | None, steps: int = 6) -> nn.Module:
    """A plain loop: dropout and shuffling draw from the global RNG, BatchNorm updates its statistics."""
    x, y = data()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.manual_seed(5)
    model.train()
    for _ in range(steps):
        batch = torch.randperm(32)[:8]
        loss = F.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        if monitor is not None:
            monitor.step()  # between backward and the optimizer's step: the gradients must survive it
        optimizer.step()
    return model


@pytest.mark.parametrize("measure", ["lie_derivative", "check_invariance", "logit_change"])
def test_training_with_a_monitor_gives_the_same_weights_as_without(measure: str) -> None:
    plain = train(classifier(), None)
    model = classifier()
    options = {"max_shift": 1} if measure == "check_invariance" else {}
    monitor = EquivarianceMonitor(model, data()[0][:4], measure, every=2, **options)
    watched = train(model, monitor)
    assert len(monitor.history) == 3
    for (name, a), b in zip(plain.state_dict().items(), watched.state_dict().values()):
        assert torch.equal(a, b), name  # parameters and BatchNorm statistics, bit for bit


def test_a_measurement_leaves_flags_buffers_grads_and_rng_as_they_were() -> None:
    model = classifier().train()
    model[3].eval()  # a mixed state, kept as it is
    x, y = data()
    F.cross_entropy(model(x[:8]), y[:8]).backward()
    grads = [(p.grad, p.grad.clone()) for p in model.parameters()]
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    flags = [m.training for m in model.modules()]
    rng = torch.random.get_rng_state()
    monitor = EquivarianceMonitor(model, x[:4], "check_invariance", max_shift=1)
    record = monitor.measure()
    assert record.value > 0
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(v, buffers[k]) for k, v in model.named_buffers())
    assert all(p.grad is g and torch.equal(p.grad, c) for p, (g, c) in zip(model.parameters(), grads))
    assert torch.equal(torch.random.get_rng_state(), rng)


def test_a_measurement_is_one_batched_check_on_the_model_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    model = classifier().eval()
    calls: list[int] = []
    model.register_forward_hook(lambda _m, inputs, _out: calls.append(len(inputs[0])))
    monkeypatch.setattr(copy, "deepcopy", lambda *a, **k: pytest.fail("the monitor copied the model"))
    x = data()[0][:4]
    EquivarianceMonitor(model, x, "lie_derivative").measure()
    assert calls == [4]  # one forward pass (with a Jacobian-vector product)
    calls.clear()
    EquivarianceMonitor(model, x, "invariance_error", shift=(1, 0)).measure()
    assert len(calls) <= 2
    assert sum(calls) <= 2 * len(x)


def test_every_kth_step_is_measured_logged_and_recorded() -> None:
    model = classifier()
    logged: list[tuple[str, float, int]] = []
    monitor = EquivarianceMonitor(
        model, data()[0][:4], "invariance_error", shift=(0, 1), every=3, log=lambda *a: logged.append(a)
    )
    records = [monitor.step(epoch=0) for _ in range(7)]
    assert [r is not None for r in records] == [False, False, True, False, False, True, False]
    assert [(name, step) for name, _, step in logged] == [("equivariance/invariance_error", 3)] * 1 + [
        ("equivariance/invariance_error", 6)
    ]
    assert monitor.steps_measured == [3, 6]
    assert monitor.values == [value for _, value, _ in logged]
    assert monitor.history[0].epoch == 0
    assert monitor.history[0].to_dict()["step"] == 3
    assert monitor.values[0] == float(invariance_error(model, data()[0][:4], (0, 1)))
    assert "equivariance/invariance_error on a batch of (4, 1, 12, 12), every 3 steps" in str(monitor)


@pytest.mark.filterwarnings("ignore:.* is trivial:")  # an untrained classifier: one class for all
@pytest.mark.parametrize("name", sorted(MEASURES))
def test_every_measure_by_name_gives_a_number(name: str) -> None:
    options = {"shift": (1, 0)} if name in ("equivariance_error", "invariance_error") else {}
    if name == "check_equivariance":
        options = {"max_shift": 1, "layer": "5"}
    if name == "equivariance_error":
        options["layer"] = "5"
    record = EquivarianceMonitor(classifier(), data()[0][:6], name, **options).measure(step=10)
    assert isinstance(record, MonitorRecord)
    assert record.step == 10
    assert record.value >= 0


def test_a_callable_measures_too_and_its_name_is_logged() -> None:
    def mean_logit(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        assert not model.training
        assert not torch.is_grad_enabled()
        return model(x).mean()

    monitor = EquivarianceMonitor(classifier().train(), data()[0][:4], mean_logit)
    assert monitor.name == "equivariance/mean_logit"
    assert isinstance(monitor.measure().value, float)


@pytest.mark.parametrize(
    ("arguments", "options", "match"),
    [
        (
            (classifier(), data()[0], "psnr"),
            {},
            r"measure must be one of 'lie_derivative', 'equivariance_error', .* found 'psnr'",
        ),
        ((classifier(), data()[0]), {"every": 0}, r"every must be positive, found 0; pass every=1 or more"),
        (
            (classifier(), torch.rand(4, 4)),
            {},
            r"x must be a batch \(N, C, \*spatial\), found \(4, 4\); pass a fixed batch",
        ),
        ((lambda x: x, data()[0]), {}, r"the monitor watches an nn.Module, found <function"),
        (
            (classifier(), data()[0]),
            {"log": "stdout"},
            r"log must be callable as log\(name, value, step\), found 'stdout'",
        ),
    ],
    ids=["measure", "every", "x", "model", "log"],
)
def test_bad_arguments_are_refused(
    arguments: tuple[object, ...], options: dict[str, object], match: str
) -> None:
    with pytest.raises(InvalidArgument, match=match):
        EquivarianceMonitor(*arguments, **options)  # type: ignore[arg-type]


def test_a_measurement_that_is_not_one_number_is_refused() -> None:
    monitor = EquivarianceMonitor(classifier(), data()[0][:4], "lie_derivative", reduction="none")
    with pytest.raises(
        InvalidArgument, match=r"the measurement returned a tensor of shape \(4,\); a monitor logs one number"
    ):
        monitor.measure()


def test_a_measurement_that_writes_to_the_gradients_is_caught() -> None:
    def backward(model: nn.Module, x: torch.Tensor) -> float:
        with torch.enable_grad():
            model(x).sum().backward()
        return 0.0

    model = classifier()
    model(data()[0][:4]).sum().backward()
    with pytest.raises(
        InvalidArgument, match=r"the monitor's measurement wrote to a parameter's gradient in place"
    ):
        EquivarianceMonitor(model, data()[0][:4], backward).measure()


def test_viz_draws_the_curves() -> None:
    pytest.importorskip("matplotlib")
    from equivariance.viz import monitor_curve

    monitors = {}
    for label in ("a", "b"):
        monitor = EquivarianceMonitor(classifier(), data()[0][:4])
        for _ in range(3):
            monitor.step()
        monitors[label] = monitor
    ax = monitor_curve(monitors)
    assert [line.get_label() for line in ax.get_lines()] == ["a", "b"]
    assert ax.get_ylabel() == "equivariance/lie_derivative"
    assert ax.get_yscale() == "log"
    with pytest.raises(InvalidArgument, match=r"monitor_curve draws a monitor's records; the curve has none"):
        monitor_curve(EquivarianceMonitor(classifier(), data()[0][:4]))


# -- a model of several inputs (issue 25) ---------------------------------------------------------------


def test_a_point_model_is_watched_with_its_field_types() -> None:
    from equivariance.fields import Positions, Scalars, Vectors
    from equivariance.generators import Rotation3D

    class Leaky(nn.Module):
        """Energy and forces of pairs, with each atom's x coordinate leaking into its pair weights."""

        def __init__(self) -> None:
            super().__init__()
            self.pair = nn.Linear(1, 1)
            self.leak = nn.Parameter(torch.tensor(0.5))

        def forward(self, pos: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            distance = (pos.unsqueeze(2) - pos.unsqueeze(1)).square().sum(-1, keepdim=True)  # forward-mode AD
            weight = self.pair(distance).squeeze(-1) + self.leak * pos[..., :1]
            forces = (weight.unsqueeze(-1) * (pos.unsqueeze(2) - pos.unsqueeze(1))).sum(2)
            return (weight * (h * h.transpose(1, 2))).sum((-1, -2)), forces

    torch.manual_seed(0)
    model = Leaky().train()
    pos, h = torch.randn(4, 5, 3), torch.randn(4, 5, 1)
    logged: list[tuple[str, float, int]] = []
    monitor = EquivarianceMonitor(
        model, (pos, h), generator=Rotation3D("z"), inputs=(Positions(), Scalars()),
        outputs=(Scalars(nodes=None), Vectors()), log=lambda n, v, s: logged.append((n, v, s)),
    )  # fmt: skip
    pos.add_(1.0)  # the monitor kept its own copy
    first = monitor.step()
    assert first is not None
    assert first.value > 1e-3  # the leaked coordinate turns with z-rotations
    assert logged == [("equivariance/lie_derivative", first.value, 1)]
    assert model.training
    with torch.no_grad():
        model.leak.zero_()
    second = monitor.step()
    assert second is not None
    assert second.value < 1e-5  # an equivariant model now
    assert "((4, 5, 3), (4, 5, 1))" in str(monitor)
    check = EquivarianceMonitor(
        model, (pos, h), "check_equivariance", transforms=SO3(4, seed=0), inputs=(Positions(), Scalars()),
        outputs=(Scalars(nodes=None), Vectors()),
    )  # fmt: skip
    assert check.measure().value < 1e-5


def test_a_point_model_that_calls_cdist_is_watched_by_its_lie_derivative() -> None:
    from equivariance.fields import Positions, Scalars
    from equivariance.generators import Rotation3D

    class Pairs(nn.Module):
        """An energy of pair distances by torch.cdist (no forward-mode formula in torch), plus a leak."""

        def __init__(self) -> None:
            super().__init__()
            self.leak = nn.Parameter(torch.tensor(0.5))

        def forward(self, pos: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            energy = (torch.exp(-torch.cdist(pos, pos)) @ h).sum((-1, -2))
            return energy + self.leak * pos[..., 0].sum(-1)

    torch.manual_seed(0)
    model, pos, h = Pairs(), torch.randn(4, 5, 3), torch.randn(4, 5, 1)
    monitor = EquivarianceMonitor(
        model, (pos, h), generator=Rotation3D("z"), inputs=(Positions(), Scalars()),
        outputs=Scalars(nodes=None),
    )  # fmt: skip
    first = monitor.step()
    assert first is not None
    assert first.value > 1e-2  # the leaked x coordinate turns about z
    with torch.no_grad():
        model.leak.zero_()
    second = monitor.step()
    assert second is not None
    assert second.value < 1e-5


def test_several_inputs_with_mismatched_options_are_refused_clearly() -> None:
    from equivariance.fields import Positions, Scalars

    model = nn.Linear(3, 3)
    pos, h = torch.randn(4, 5, 3), torch.randn(4, 5, 1)
    with pytest.raises(
        InvalidArgument, match=r"x holds a model's several inputs .* pass inputs= \(and outputs=\)"
    ):
        EquivarianceMonitor(model, (pos, h))
    with pytest.raises(
        InvalidArgument,
        match=r"measure 'consistency' takes one tensor on a grid, but x holds a model's several inputs .*; "
        r"pass one of 'lie_derivative', 'equivariance_error'",
    ):
        EquivarianceMonitor(model, (pos, h), "consistency", inputs=(Positions(), Scalars()))
