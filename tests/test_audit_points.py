"""Audits of point clouds, sets and graphs (``inputs=``): every sample's error is its worst over the
elements and the outputs, as ``equivariance_error`` measures it; the verdicts follow the checks; top-1
consistency, checkpoints and loaders work as for grids; the grid's options are refused."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from equivariance import equivariance_error
from equivariance.audit import audit
from equivariance.errors import InvalidArgument
from equivariance.euclidean import E3, SO3
from equivariance.fields import EdgeIndex, Positions, Scalars, Vectors
from equivariance.permutations import Permutations

sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
import point_gallery as gallery

F64 = torch.float64
FIELDS = (Positions(), Scalars())
ELEMENTS = [*E3(6, seed=0), *Permutations(4, n=gallery.POINTS, seed=0)]


def batches(count: int = 3, size: int = 4) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(pos, h, label)`` batches, as a loader of a labelled point-cloud dataset yields them."""
    return [
        (gallery.cloud(seed=i, batch=size), gallery.features(seed=10 + i, batch=size), torch.zeros(size))
        for i in range(count)
    ]


def test_each_sample_gets_its_worst_error_over_the_elements_and_outputs() -> None:
    model, data = gallery.egnn(coordinates_as_features=True).double(), batches()
    result = audit(model, data, transforms=ELEMENTS, inputs=FIELDS, outputs=FIELDS, progress=False)
    expected = []
    for pos, h, _ in data:
        per_element = [
            equivariance_error(model, (pos, h), g, inputs=FIELDS, outputs=FIELDS, reduction="none")
            for g in ELEMENTS
        ]
        expected.append(torch.stack(per_element).amax(0))
    assert result.samples == 12
    assert torch.allclose(result.errors, torch.cat(expected), rtol=1e-9, atol=0)
    assert result.passed_fraction == 0.0  # coordinates fed to an MLP: every sample fails
    assert float(result.errors.min()) > 1e-3
    assert "12 samples x 10 transforms" in str(result)


def test_an_equivariant_model_passes_in_float32_at_the_default_tolerance() -> None:
    model = gallery.egnn()
    data = [(pos.float(), h.float()) for pos, h, _ in batches()]
    result = audit(model, data, transforms=ELEMENTS, inputs=FIELDS, outputs=FIELDS, progress=False)
    assert result.passed_fraction == 1.0  # within rtol or ten times each output's noise floor
    assert result.quantile(1.0) < 1e-4
    assert result.rtol == pytest.approx(1e-4)


def test_a_dataloader_of_labelled_clouds_and_one_field_type() -> None:
    pos = torch.randn(10, 6, 3, dtype=F64)
    loader = DataLoader(TensorDataset(pos, torch.zeros(10)), batch_size=4)  # [pos, label] batches

    def centred(p: torch.Tensor) -> torch.Tensor:
        return p - p.mean(-2, keepdim=True)

    result = audit(centred, loader, transforms=SO3(8, seed=1), inputs=Positions(), outputs=Vectors(),
                   progress=False)  # fmt: skip
    assert result.samples == 10
    assert result.passed_fraction == 1.0
    assert result.quantile(1.0) < 1e-12


def test_top1_consistency_of_a_point_cloud_classifier() -> None:
    data = [(pos,) for pos, _, _ in batches()]
    invariant = lambda p: gallery.pointnet().double()(p - p.mean(-2, keepdim=True)).detach()  # noqa: E731
    options: dict[str, Any] = {"inputs": (Positions(),), "outputs": Scalars(nodes=None), "progress": False}
    kept = audit(
        invariant, data, transforms=Permutations(6, n=gallery.POINTS), classifier=invariant, **options
    )
    assert kept.consistency == 1.0
    assert kept.passed_fraction == 1.0  # a max over the points: permutations change nothing
    first_point = lambda p: p[:, 0, :]  # noqa: E731  (logits: the coordinates of one point)
    turned = audit(invariant, data, transforms=SO3(16, seed=0), classifier=first_point, **options)
    assert turned.consistency is not None
    assert 0.0 <= turned.consistency < 0.5  # the largest coordinate of a point changes as it turns
    assert turned.passed_fraction == 0.0  # PointNet's features are coordinates: not rotation-invariant


def test_graphs_of_torch_geometric() -> None:
    geometric = pytest.importorskip("torch_geometric.data")

    def messages(data: Any) -> torch.Tensor:
        src, dst = data.edge_index
        vectors = (data.pos[src] - data.pos[dst]) * data.x[src, :1]
        return torch.zeros_like(data.pos).index_add(0, dst, vectors)

    torch.manual_seed(0)
    edges = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])
    loader = [
        geometric.Batch.from_data_list([
            geometric.Data(x=torch.randn(5, 2, dtype=F64), pos=torch.randn(5, 3, dtype=F64), edge_index=edges)
            for _ in range(3)
        ])
        for _ in range(2)
    ]  # fmt: skip
    fields = {"x": Scalars(nodes=0), "pos": Positions(nodes=0), "edge_index": EdgeIndex()}
    result = audit(messages, loader, transforms=[*SO3(4), *Permutations(4, n=5)], inputs=fields,
                   outputs=Vectors(nodes=0), progress=False)  # fmt: skip
    assert result.samples == 6  # the graphs
    assert result.passed_fraction == 1.0
    forgotten = audit(messages, loader, transforms=Permutations(4, n=5), inputs={**fields, "edge_index": None},
                      outputs=Vectors(nodes=0), progress=False)  # fmt: skip
    assert forgotten.passed_fraction < 1.0  # the edges left as they were join other nodes


def test_a_checkpoint_resumes_and_refuses_other_elements(tmp_path: Path) -> None:
    model, data, path = (
        gallery.egnn(coordinates_as_features=True).double(),
        batches(4),
        tmp_path / "audit.json",
    )
    options: dict[str, Any] = {"inputs": FIELDS, "outputs": FIELDS, "progress": False}
    first = audit(model, data[:2], transforms=ELEMENTS, checkpoint=path, **options)
    resumed = audit(model, data, transforms=ELEMENTS, checkpoint=path, **options)
    whole = audit(model, data, transforms=ELEMENTS, **options)
    assert torch.equal(resumed.errors[:8], first.errors)
    assert torch.allclose(resumed.errors, whole.errors, rtol=1e-12, atol=0)
    with pytest.raises(InvalidArgument, match=r"written with other settings \(differing: transforms: "):
        audit(model, data, transforms=SO3(3, seed=5), checkpoint=path, **options)
    other = [(pos + 1, h, y) for pos, h, y in data]
    with pytest.raises(InvalidArgument, match=r"batch 0 of the data is not the batch 0"):
        audit(model, other, transforms=ELEMENTS, checkpoint=path, **options)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"inputs": FIELDS, "outputs": FIELDS}, r"inputs= needs the elements to audit: pass transforms="),
        ({"transforms": ELEMENTS, "inputs": FIELDS}, r"needs transforms=, inputs= and outputs="),
        (
            {"transforms": ELEMENTS, "inputs": FIELDS, "outputs": FIELDS, "stride": 2},
            r"stride is an option of tensors on a grid",
        ),
        (
            {"transforms": ELEMENTS, "inputs": (Positions(), Scalars(), None, None), "outputs": FIELDS},
            r"batch 0 of the data has 3 items but inputs= gives 4 field types",
        ),
        (
            {"transforms": ELEMENTS, "inputs": (Positions(), Vectors()), "outputs": FIELDS},
            r"input 'h' \(argument 1\): Vectors\(\) expects a tensor \(\.\.\., N, 3\)",
        ),
    ],
    ids=["no-transforms", "no-outputs", "stride", "short-batch", "bad-field"],
)
def test_mismatches_are_refused_with_the_fix(options: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        audit(gallery.egnn().double(), batches(1), progress=False, **options)


def test_shifts_and_points_are_not_mixed() -> None:
    with pytest.raises(InvalidArgument, match=r"shifts is an option of tensors on a grid"):
        audit(
            gallery.egnn().double(), batches(1), [(1, 0)], transforms=ELEMENTS, inputs=FIELDS, outputs=FIELDS
        )
    clouds = [{"pos": pos, "h": h} for pos, h, _ in batches(1)]
    with pytest.raises(
        InvalidArgument, match=r"(?s)batch 0 of the data is .*dict.*pass transforms=, inputs= and"
    ):
        audit(gallery.egnn().double(), clouds, [(1, 0)], progress=False)  # a grid audit of keyword arguments


def test_an_audit_without_elements_says_what_to_pass() -> None:
    with pytest.raises(InvalidArgument, match=r"audit needs the shifts to audit, .* or for a model of point"):
        audit(torch.nn.Identity(), [torch.randn(2, 1, 8, 8)], progress=False)
