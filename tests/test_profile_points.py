"""The per-layer profile of several inputs: permutations layer by layer, rotations where fields= names
a layer's field type, and the errors that refuse what the profile cannot read.

Each model of examples/point_gallery.py whose symmetry holds gets every compared row within
tolerance, and its negative control (the same model broken on purpose) a first failure at the layer
that breaks it, worded by the element, never with a grid's advice.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from equivariance import EquivarianceProfile, equivariance_error, profile_equivariance
from equivariance.actions import Action
from equivariance.errors import InvalidArgument
from equivariance.euclidean import SO3, Rotation, Translation
from equivariance.fields import Adjacency, Positions, Scalars, Vectors
from equivariance.permutations import Permutation, Permutations

sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
import point_gallery as gallery

CYCLE = Permutation.cycle(gallery.POINTS)
GRID_WORDS = re.compile(r"circular|p4|stride|shift|Swin|padding|canvas", re.IGNORECASE)
PAIRS = Adjacency(nodes=(1, 2))
EGNN_PAIRS = {f"layers.{i}.{mlp}": PAIRS for i in range(2) for mlp in ("edge", "coord")}
"""The EGNN's messages and coordinate weights, one per pair of points: both axes reorder."""


def h(batch: int = 2) -> torch.Tensor:
    return gallery.features(batch=batch)


def rows(profile: EquivarianceProfile) -> dict[str, str]:
    """Each compared row's verdict."""
    return {row.name: "ok" if row.passed else "FAIL" for row in profile.layers if row.compared}


def no_grid_advice(profile: EquivarianceProfile) -> None:
    text = str(profile) + "".join(row.fix or "" for row in profile.layers)
    assert not GRID_WORDS.search(text), text


# -- permutations, layer by layer -----------------------------------------------------------------


def test_deep_sets_per_point_layers_permute_and_pooled_ones_stay() -> None:
    profile = profile_equivariance(
        gallery.deep_sets().double(), h(), CYCLE, inputs=Scalars(), outputs=Scalars(nodes=None)
    )
    assert profile.passed, profile
    fields = {row.name: row.field for row in profile.layers}
    assert fields == {
        "phi.0": "points on axis 1", "phi.1": "points on axis 1", "phi.2": "points on axis 1",
        "rho.0": "pooled", "rho.1": "pooled", "rho.2": "Scalars(nodes=None) (outputs=)",
    }  # fmt: skip
    assert all(row.error < 1e-12 for row in profile.layers)


def test_deep_sets_with_an_index_embedding_fails_where_it_is_added() -> None:
    profile = profile_equivariance(gallery.deep_sets(indexed=True).double(), h(), CYCLE, inputs=Scalars())
    first = profile.first_failure
    assert first is not None
    assert first.name == "phi.0 (input)"  # h + index, in forward before the first layer
    assert "does not permute with the points" in (first.fix or "")
    assert "before phi.0, in forward code" in (first.fix or "")
    assert set(rows(profile).values()) == {"FAIL"}
    no_grid_advice(profile)


def test_a_transformer_encoder_without_positions_permutes_at_every_layer() -> None:
    profile = profile_equivariance(gallery.transformer().double(), h(), CYCLE, inputs=Scalars())
    assert profile.passed, profile
    assert len(rows(profile)) == 14  # every leaf of two encoder layers that runs
    assert {row.field for row in profile.layers} == {"points on axis 1"}
    assert max(row.error for row in profile.layers) < 1e-12


class LatePositions(nn.Module):
    """Two encoder layers with a learned position embedding (a submodule) added between them."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        make = lambda: nn.TransformerEncoderLayer(4, 2, 8, dropout=0.0, batch_first=True)  # noqa: E731
        self.first, self.second = make(), make()
        self.positions = Embedding()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.second(self.positions(self.first(h)))
        return out


class Embedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(16, 4))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.table[: h.shape[-2]]


def test_a_position_embedding_added_after_the_first_layer_is_named() -> None:
    profile = profile_equivariance(LatePositions().double().eval(), h(), CYCLE, inputs=Scalars())
    first = profile.first_failure
    assert first is not None
    assert first.name == "positions"
    verdicts = list(rows(profile).items())
    before = verdicts[: [name for name, _ in verdicts].index("positions")]
    assert before
    assert all(v == "ok" for _, v in before)  # the first encoder layer permutes
    assert first.fix is not None
    assert "per-node output (positions) does not permute with the points" in first.fix
    assert "mixes nodes by position" in first.fix
    assert "first failure at positions (Embedding)" in profile.summary()
    no_grid_advice(profile)


def test_the_gallerys_transformer_with_positions_fails_before_its_first_layer() -> None:
    profile = profile_equivariance(gallery.transformer(positions=True).double(), h(), CYCLE, inputs=Scalars())
    first = profile.first_failure
    assert first is not None
    assert first.name == "encoder.layers.0.dropout1 (input)"
    assert "positional encoding" in (first.fix or "")
    no_grid_advice(profile)


def test_pointnet_permutes_its_points_and_pools_them() -> None:
    profile = profile_equivariance(gallery.pointnet().double(), gallery.cloud(), CYCLE, inputs=Positions())
    assert profile.passed, profile
    assert [row.field for row in profile.layers] == ["points on axis 1"] * 3 + ["pooled"] * 3


def test_pointnet_that_flattens_its_points_fails_at_the_flatten() -> None:
    net = gallery.pointnet(pool="flatten").double()
    profile = profile_equivariance(net, gallery.cloud(), CYCLE, inputs=Positions())
    first = profile.first_failure
    assert first is not None
    assert first.name == "head.0 (input)"
    assert rows(profile)["point.2"] == "ok"
    assert "the pooled output (the input of head.0) changes when the points are reordered" in (
        first.fix or ""
    )
    assert "between point.2 and head.0" in profile.summary()
    no_grid_advice(profile)


@settings(max_examples=10, deadline=None)
@given(st.permutations(range(gallery.POINTS)), st.integers(0, 3))
def test_each_permutation_of_a_set_model_passes_and_breaks_alike(order: list[int], seed: int) -> None:
    element = Permutation(order)
    if element.is_identity:
        return
    good = profile_equivariance(gallery.deep_sets(seed).double(), h(), element, inputs=Scalars())
    bad = profile_equivariance(gallery.deep_sets(seed, indexed=True).double(), h(), element, inputs=Scalars())
    assert good.passed
    assert not bad.passed


def test_the_output_row_equals_the_checks_error() -> None:
    net, x = gallery.deep_sets(indexed=True).double(), h(4)
    profile = profile_equivariance(net, x, CYCLE, inputs=Scalars(), outputs=Scalars(nodes=None))
    by_check = equivariance_error(
        net, x, CYCLE, inputs=Scalars(), outputs=Scalars(nodes=None), reduction="max"
    )
    assert profile.layers[-1].error == pytest.approx(float(by_check), rel=1e-9)


# -- rotations, by the field types named --------------------------------------------------------------


def egnn_args() -> tuple[torch.Tensor, torch.Tensor]:
    return gallery.cloud(), gallery.features()


EGNN_INPUTS = (Positions(), Scalars())


def test_an_egnn_with_its_layers_named_scalars_passes_a_rotation_and_a_translation() -> None:
    g = Translation([0.5, -1.0, 2.0]) * SO3(1, seed=3)[0]
    profile = profile_equivariance(
        gallery.egnn().double(), egnn_args(), g, inputs=EGNN_INPUTS, fields={"layers": Scalars()},
        outputs=(Positions(), Scalars()),
    )  # fmt: skip
    assert profile.passed, profile
    assert all(row.compared for row in profile.layers)
    assert max(row.error for row in profile.layers) < 1e-12
    assert [row.name for row in profile.layers][-2:] == ["(output[0])", "(output[1])"]


def test_an_egnn_that_feeds_coordinates_to_an_mlp_fails_at_that_mlp() -> None:
    profile = profile_equivariance(
        gallery.egnn(coordinates_as_features=True).double(), egnn_args(), SO3(1, seed=0)[0],
        inputs=EGNN_INPUTS, fields={"layers": Scalars()},
    )  # fmt: skip
    first = profile.first_failure
    assert first is not None
    assert first.name == "layers.0.node.0"  # phi_h sees the raw coordinates; the messages before it hold
    assert all(
        v == "ok" for k, v in rows(profile).items() if k.startswith(("layers.0.edge", "layers.0.coord"))
    )
    assert "the scalar output (layers.0.node.0) moves under rotation" in (first.fix or "")
    no_grid_advice(profile)


def test_a_layer_whose_field_type_is_not_named_is_not_compared() -> None:
    profile = profile_equivariance(
        gallery.egnn().double(), egnn_args(), Rotation.about("z", 30, degrees=True), inputs=EGNN_INPUTS,
        fields={"layers.0.node": Scalars()},
    )  # fmt: skip
    compared = [row.name for row in profile.layers if row.compared]
    assert compared == ["layers.0.node.0", "layers.0.node.1", "layers.0.node.2"]
    skipped = [row for row in profile.layers if not row.compared]
    assert skipped
    assert all(row.note and "field type not named" in row.note for row in skipped)
    assert "not compared: layers.0.edge.0.0, layers.0.edge.0.1, layers.0.edge.0.2 and" in str(profile)
    assert profile.summary().endswith(
        f"every compared layer within rtol 1e-10 ({len(skipped)} of 21 not compared)"
    )


def test_a_layer_that_returns_vectors_is_compared_as_vectors() -> None:
    """``layers=`` the EGNN layers, which return positions first: named Positions, they move and turn."""
    g = Translation([1.0, 2.0, 3.0]) * Rotation.about("y", 40, degrees=True)
    args = egnn_args()
    good = profile_equivariance(gallery.egnn().double(), args, g, inputs=EGNN_INPUTS,
                                layers=["layers.0", "layers.1"], fields={"layers": Positions()})  # fmt: skip
    assert good.passed, good
    as_vectors = profile_equivariance(gallery.egnn().double(), args, g, inputs=EGNN_INPUTS,
                                      layers=["layers.0", "layers.1"], fields={"layers": Vectors()})  # fmt: skip
    assert not as_vectors.passed  # positions move with a translation; vectors do not


def test_the_model_outputs_take_outputs_and_a_layer_returning_one_is_compared_by_it() -> None:
    """The head's Linear returns the model's output: outputs= says how it moves, no row is doubled."""
    net = nn.Sequential(nn.Linear(3, 3, bias=False)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(3) * 2.0)
    profile = profile_equivariance(
        net, gallery.cloud(), SO3(1, seed=1)[0], inputs=Positions(), outputs=Vectors()
    )
    assert [(row.name, row.field) for row in profile.layers] == [("0", "Vectors() (outputs=)")]
    assert profile.passed
    with torch.no_grad():
        net[0].weight.copy_(torch.randn(3, 3))
    assert not profile_equivariance(net, gallery.cloud(), SO3(1, seed=1)[0], inputs=Positions(),
                                    outputs=Vectors()).passed  # fmt: skip


# -- pairs of points ---------------------------------------------------------------------------------


def test_an_egnn_with_its_pairs_named_permutes_at_every_layer() -> None:
    profile = profile_equivariance(gallery.egnn().double(), egnn_args(), CYCLE, inputs=EGNN_INPUTS,
                                   fields=EGNN_PAIRS)  # fmt: skip
    assert profile.passed, profile
    pairs = [row for row in profile.layers if row.field == "Adjacency(nodes=(1, 2))"]
    assert len(pairs) == 14
    broken = profile_equivariance(gallery.egnn(indexed=True).double(), egnn_args(), CYCLE, inputs=EGNN_INPUTS,
                                  fields=EGNN_PAIRS)  # fmt: skip
    assert not broken.passed


def test_pairs_named_as_one_axis_of_points_fail() -> None:
    """A negative control of the naming itself: pairs read as one axis of points do not permute."""
    wrong = {name: Scalars() for name in EGNN_PAIRS}
    profile = profile_equivariance(
        gallery.egnn().double(), egnn_args(), CYCLE, inputs=EGNN_INPUTS, fields=wrong
    )
    assert not profile.passed
    assert profile.first_failure is not None
    assert profile.first_failure.name == "layers.0.edge.0.0"


# -- graphs ----------------------------------------------------------------------------------------


def test_a_graph_convolution_permutes_its_nodes_layer_by_layer() -> None:
    pytest.importorskip("torch_geometric", reason="the graph convolution is torch_geometric's")
    from torch_geometric.data import Batch

    graphs = Batch.from_data_list([gallery.graph(0), gallery.graph(1)])
    g = Permutation.cycle(6)
    profile = profile_equivariance(gallery.graph_convolution().double(), graphs, g, inputs=gallery.GRAPH_FIELDS,
                                   outputs=Scalars(nodes=0))  # fmt: skip
    assert profile.passed, profile
    assert {row.field for row in profile.layers} == {"per node", "Scalars(nodes=0) (outputs=)"}
    assert profile.layers[0].output_shape == (2, 6, 8)  # (graphs, nodes a graph, features)
    broken = profile_equivariance(gallery.graph_convolution(node_ids=True).double(), graphs, g,
                                  inputs=gallery.GRAPH_FIELDS)  # fmt: skip
    assert broken.first_failure is not None
    assert broken.first_failure.name == "conv1.lin"
    no_grid_advice(broken)


# -- layers that return several tensors --------------------------------------------------------------

EGNN_LAYERS = ["layers.0", "layers.1"]
"""The EGNN's layers themselves, each returning ``(pos, h)``."""


def test_each_tensor_a_layer_returns_is_a_row_of_its_own_field_type() -> None:
    g = Translation([1.0, 2.0, 3.0]) * Rotation.about("y", 40, degrees=True)
    profile = profile_equivariance(gallery.egnn().double(), egnn_args(), g, inputs=EGNN_INPUTS, layers=EGNN_LAYERS,
                                   fields={"layers": (Positions(), Scalars())})  # fmt: skip
    assert profile.passed, profile
    assert [(row.name, row.field) for row in profile.layers] == [
        ("layers.0[0]", "Positions()"), ("layers.0[1]", "Scalars()"),
        ("layers.1[0]", "Positions()"), ("layers.1[1]", "Scalars()"),
    ]  # fmt: skip
    assert max(row.error for row in profile.layers) < 1e-12
    # the negative control: the coordinates fed to phi_h break the features only, not the positions
    broken = profile_equivariance(gallery.egnn(coordinates_as_features=True).double(), egnn_args(), g,
                                  inputs=EGNN_INPUTS, layers=EGNN_LAYERS,
                                  fields={"layers": (Positions(), Scalars())})  # fmt: skip
    assert broken["layers.0[0]"].passed
    assert broken.first_failure is not None
    assert broken.first_failure.name == "layers.0[1]"
    assert "at layers.0[1]: " in str(broken)
    no_grid_advice(broken)


class Indexed(nn.Module):
    """Returns ``(pos, h)``; ``broken`` adds each point's index to ``h``: the second tensor alone breaks."""

    def __init__(self, broken: bool = False) -> None:
        super().__init__()
        self.broken = broken

    def forward(self, pos: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.arange(h.shape[-2], dtype=h.dtype)[:, None]
        return 2 * pos, torch.tanh(h) + (index if self.broken else 0)


class Holder(nn.Module):
    def __init__(self, broken: bool = False) -> None:
        super().__init__()
        self.layer = Indexed(broken)

    def forward(self, pos: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out: tuple[torch.Tensor, torch.Tensor] = self.layer(pos, h)
        return out


def test_under_a_permutation_each_tensor_is_read_from_its_shape() -> None:
    good = profile_equivariance(Holder(), egnn_args(), CYCLE, inputs=EGNN_INPUTS)
    assert good.passed, good
    assert [(row.name, row.field) for row in good.layers] == [
        ("layer[0]", "points on axis 1"), ("layer[1]", "points on axis 1")
    ]  # fmt: skip
    broken = profile_equivariance(Holder(broken=True), egnn_args(), CYCLE, inputs=EGNN_INPUTS)
    assert rows(broken) == {"layer[0]": "ok", "layer[1]": "FAIL"}
    assert "the per-node output (layer[1]) does not permute" in (broken.first_failure.fix or "")


def test_the_model_outputs_a_layer_returns_are_compared_by_outputs() -> None:
    g = SO3(1, seed=4)[0]
    profile = profile_equivariance(Holder(broken=True), egnn_args(), g, inputs=EGNN_INPUTS,
                                   outputs=(Vectors(), Scalars()))  # fmt: skip
    assert [(row.name, row.field, row.passed) for row in profile.layers] == [
        ("layer[0]", "Vectors() (outputs=)", True), ("layer[1]", "Scalars() (outputs=)", True)
    ]  # fmt: skip
    wrong = profile_equivariance(Holder(), egnn_args(), g, inputs=EGNN_INPUTS, outputs=(Scalars(), Scalars()))
    assert rows(wrong) == {"layer[0]": "FAIL", "layer[1]": "ok"}  # positions named scalars do not turn


def test_one_field_type_for_a_layer_of_several_tensors_is_its_firsts() -> None:
    profile = profile_equivariance(gallery.egnn().double(), egnn_args(), SO3(1, seed=0)[0], inputs=EGNN_INPUTS,
                                   layers=EGNN_LAYERS, fields={"layers": Positions()})  # fmt: skip
    assert [row.name for row in profile.layers if row.compared] == ["layers.0[0]", "layers.1[0]"]
    assert profile["layers.0[1]"].note == (
        "fields['layers'] names one field type, Positions(), which is the first tensor's of the 2 that "
        "'layers.0' returns; name one for each, e.g. fields={'layers.0': (Positions(), Scalars())}"
    )
    unnamed = profile_equivariance(gallery.egnn().double(), egnn_args(), SO3(1, seed=0)[0], inputs=EGNN_INPUTS,
                                   layers=EGNN_LAYERS, fields={"layers.0": (Positions(), None)})  # fmt: skip
    assert [row.name for row in unnamed.layers if row.compared] == ["layers.0[0]"]
    assert "fields={'layers.1': (Vectors(), Scalars())} (one field type a tensor it returns)" in (
        unnamed["layers.1[1]"].note or ""
    )


class Three(nn.Module):
    """Returns ``(pos, h, None, h)``: items that are not tensors are skipped, but keep their places."""

    def forward(
        self, pos: torch.Tensor, h: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, None, torch.Tensor]:
        return pos, h, None, 2 * h


def test_the_rows_of_a_tuple_keep_the_places_of_its_items() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.three = Three()

        def forward(self, pos: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            return self.three(pos, h)[3]

    g = SO3(1, seed=0)[0]
    one = profile_equivariance(Net(), egnn_args(), g, inputs=EGNN_INPUTS, fields={"three": Vectors()})
    assert [row.name for row in one.layers] == ["three[0]", "three[1]", "three[3]"]
    assert "the first tensor's of the 4 that 'three' returns" in (one["three[1]"].note or "")
    each = profile_equivariance(Net(), egnn_args(), g, inputs=EGNN_INPUTS,
                                fields={"three": (Vectors(), Scalars(), None, Scalars())})  # fmt: skip
    assert each.passed, each
    assert all(row.compared for row in each.layers)
    wrong = profile_equivariance(Net(), egnn_args(), g, inputs=EGNN_INPUTS,
                                 fields={"three": (Scalars(), Scalars(), None, Scalars())})  # fmt: skip
    assert rows(wrong) == {"three[0]": "FAIL", "three[1]": "ok", "three[3]": "ok"}  # positions do turn


def test_a_tuple_of_field_types_that_does_not_fit_the_layer_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=re.escape(
        "fields['layers'] gives a tuple of 1 field type (one a tensor a layer returns), but layer 'layers.0', "
        "which 'layers' holds, returns a tuple of 2 (shape (2, 5, 3), shape (2, 5, 4)); name one field type "
        "(or None) for each item it returns, or give 'layers.0' (or a container of it) its own name"
    )):  # fmt: skip
        profile_equivariance(gallery.egnn().double(), egnn_args(), CYCLE, inputs=EGNN_INPUTS, layers=EGNN_LAYERS,
                             fields={"layers": (Positions(),)})  # fmt: skip
    with pytest.raises(InvalidArgument, match=re.escape(
        "fields['layers.0.node.0'] gives a tuple of 2 field types (one a tensor a layer returns), but layer "
        "'layers.0.node.0' returns one tensor of shape (2, 5, 16)"
    )):  # fmt: skip
        profile_equivariance(gallery.egnn().double(), egnn_args(), CYCLE, inputs=EGNN_INPUTS,
                             fields={"layers.0.node.0": (Scalars(), Scalars())})  # fmt: skip
    with pytest.raises(InvalidArgument, match=re.escape(
        "fields['layers.0'][1] gives tensor 1 of layer 'layers.0' (layers.0[1]) the field type Vectors(), but its "
        "output of shape (2, 5, 4) does not fit it"
    )):  # fmt: skip
        profile_equivariance(gallery.egnn().double(), egnn_args(), SO3(1, seed=0)[0], inputs=EGNN_INPUTS,
                             layers=EGNN_LAYERS, fields={"layers.0": (Positions(), Vectors())})  # fmt: skip
    with pytest.raises(
        InvalidArgument,
        match=re.escape("fields gives 'layers.0'[1] 'scalars' (str), which is not a field type"),
    ):
        profile_equivariance(gallery.egnn().double(), egnn_args(), CYCLE, inputs=EGNN_INPUTS, layers=EGNN_LAYERS,
                             fields={"layers.0": (Positions(), "scalars")})  # fmt: skip


class BatchMean(nn.Module):
    """Returns ``(pos, h less its mean over the batch)``: the second tensor depends on the batch."""

    def forward(self, pos: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return pos, h - h.mean(0, keepdim=True)


class Batched(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = BatchMean()

    def forward(self, pos: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.layer(pos, h)[1]


def test_a_batch_interaction_in_a_second_tensor_runs_two_passes() -> None:
    """The first failure, in the layer's second tensor, is run alone on x[:1]: it differs, so two passes;
    those join the layer's first tensor only, so its second is listed as not compared."""
    profile = profile_equivariance(Batched(), egnn_args(), CYCLE, inputs=EGNN_INPUTS, outputs=Scalars())
    assert profile.separate_passes is not None
    assert "the first failing row, layer[1], gives x[:1] run alone another value" in profile.separate_passes
    assert not profile["layer[1]"].compared
    assert "join a layer's first tensor only" in (profile["layer[1]"].note or "")
    assert profile.passed, profile


# -- the batch -------------------------------------------------------------------------------------


class Centred(nn.Module):
    """Positions less their mean over the batch: equivariant for each batch alone, not for x beside R x."""

    def __init__(self) -> None:
        super().__init__()
        self.centre, self.out = Centre(), nn.Identity()

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(self.centre(pos))
        return out


class Centre(nn.Module):
    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        return pos - pos.mean(0, keepdim=True)


def test_samples_that_interact_run_in_two_passes() -> None:
    fields = {"centre": Vectors(), "out": Vectors()}
    profile = profile_equivariance(Centred(), gallery.cloud(batch=4), SO3(1, seed=0)[0], inputs=Positions(),
                                   fields=fields)  # fmt: skip
    assert profile.separate_passes is not None
    assert "x[:1] run alone" in profile.separate_passes
    assert profile.passed, profile


# -- what the profile refuses ----------------------------------------------------------------------


def test_an_ambiguous_axis_of_points_is_refused_with_the_fields_to_name() -> None:
    with pytest.raises(InvalidArgument, match=r"14 outputs have several: 'layers.0.edge.0.0' \(2, 5, 5, 16\), "
                       r"axes \[1, 2\].*fields=\{'layers.0.edge': Adjacency\(nodes=\(1, 2\)\), 'layers.0.coord'"):  # fmt: skip
        profile_equivariance(gallery.egnn().double(), egnn_args(), CYCLE, inputs=EGNN_INPUTS)


def test_features_as_wide_as_the_points_are_ambiguous() -> None:
    net = nn.Sequential(nn.Linear(4, gallery.POINTS)).double()
    with pytest.raises(InvalidArgument, match=r"1 output has several: '0' \(2, 5, 5\), axes \[1, 2\]"):
        profile_equivariance(net, h(), CYCLE, inputs=Scalars())
    settled = profile_equivariance(net, h(), CYCLE, inputs=Scalars(), fields={"0": Scalars(nodes=1)})
    assert settled.passed


def test_an_unknown_layer_in_fields_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"EGNN has no layer named 'layer'; close names: 'layers'"):
        profile_equivariance(gallery.egnn().double(), egnn_args(), CYCLE, inputs=EGNN_INPUTS,
                             fields={"layer": Scalars()})  # fmt: skip


def test_a_field_type_that_does_not_fit_a_layers_output_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"fields\['layers.0.node'\] gives layer 'layers.0.node.0' the "
                       r"field type Vectors\(\), but its output of shape \(2, 5, 16\) does not fit it"):  # fmt: skip
        profile_equivariance(gallery.egnn().double(), egnn_args(), SO3(1, seed=0)[0], inputs=EGNN_INPUTS,
                             fields={"layers.0.node": Vectors()})  # fmt: skip


def test_fields_that_are_not_field_types_are_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"fields gives 'layers' the class Scalars; pass Scalars\(\)"):
        profile_equivariance(
            gallery.egnn(), egnn_args(), CYCLE, inputs=EGNN_INPUTS, fields={"layers": Scalars}
        )
    with pytest.raises(InvalidArgument, match=r"fields must be a dict from layer names to field types"):
        profile_equivariance(gallery.egnn(), egnn_args(), CYCLE, inputs=EGNN_INPUTS, fields=[Scalars()])  # type: ignore[arg-type]


def test_a_profile_that_compares_nothing_is_refused() -> None:
    with pytest.raises(
        InvalidArgument,
        match=r"no layer's output was compared, so the profile could not fail; the first says: field type "
        r"not named: rotation .* name it in fields=",
    ):
        profile_equivariance(
            gallery.pointnet().double(), gallery.cloud(), SO3(1, seed=0)[0], inputs=Positions()
        )


def test_a_sample_of_elements_is_refused_with_how_to_pick_one() -> None:
    with pytest.raises(
        InvalidArgument, match=r"one group element .* found SO3\(4, seed=0\).*SO3\(1, seed=0\)\[0\]"
    ):
        profile_equivariance(gallery.pointnet(), gallery.cloud().float(), SO3(4, seed=0), inputs=Positions())
    with pytest.raises(InvalidArgument, match=r"found Permutations\(2, seed=0, n=5\)"):
        profile_equivariance(
            gallery.pointnet(), gallery.cloud().float(), Permutations(2, n=5), inputs=Positions()
        )


def test_the_inputs_are_checked_as_a_checks_are() -> None:
    with pytest.raises(
        InvalidArgument, match=r"input 'pos' \(argument 0\): .* permutes 6 points, but Positions"
    ):
        profile_equivariance(
            gallery.pointnet(), gallery.cloud().float(), Permutation.cycle(6), inputs=Positions()
        )
    with pytest.raises(
        InvalidArgument, match=r"x holds 2 positional arguments but inputs= gives 1 field type"
    ):
        profile_equivariance(
            gallery.egnn(), tuple(t.float() for t in egnn_args()), CYCLE, inputs=(Positions(),)
        )
    with pytest.raises(InvalidArgument, match=r"needs inputs=, the field type of each"):
        profile_equivariance(gallery.egnn(), egnn_args(), CYCLE, fields={"layers": Scalars()})
    with pytest.raises(InvalidArgument, match=r"layouts is an option of tensors on a grid"):
        profile_equivariance(
            gallery.egnn(), egnn_args(), CYCLE, inputs=EGNN_INPUTS, layouts={"layers": "tokens"}
        )


def test_outputs_with_up_to_are_refused() -> None:
    with pytest.raises(
        InvalidArgument, match=r"up_to='layers.0' stops the pass before them; name .* in fields="
    ):
        profile_equivariance(gallery.egnn(), egnn_args(), CYCLE, inputs=EGNN_INPUTS, outputs=(Positions(), Scalars()),
                             up_to="layers.0")  # fmt: skip


def test_an_output_field_type_that_does_not_fit_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"outputs gives the output of shape \(2, 5, 4\) the field type "
                       r"Vectors\(\), which does not fit it .*its 3 components last"):  # fmt: skip
        profile_equivariance(gallery.transformer().double(), h(), SO3(1, seed=0)[0], inputs=Scalars(),
                             outputs=Vectors(), fields={"encoder": Scalars()})  # fmt: skip


def test_the_model_is_left_as_it_was() -> None:
    net = gallery.transformer().double().train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x = h()
    before = x.clone()
    profile_equivariance(net, x, CYCLE, inputs=Scalars())
    assert net.training
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert torch.equal(x, before)


def test_the_profile_serialises() -> None:
    profile = profile_equivariance(gallery.deep_sets(indexed=True).double(), h(), CYCLE, inputs=Scalars())
    data = profile.to_dict()
    assert data["first_failure"] == "phi.0 (input)"
    assert data["inputs"].startswith("'h' (argument 0) (2, 5, 4) Scalars()")
    assert data["layers"][0]["field"] == "points on axis 1"


# -- an element of the caller's own on one tensor ------------------------------------------------------


class Swap(Action):
    """Nodes 0 and 1 swapped on the last axis of one tensor: a permutation written in ten lines."""

    def act(self, x: torch.Tensor, grid: object) -> torch.Tensor:
        order = torch.arange(x.shape[-1])
        order[[0, 1]] = order[[1, 0]]
        return x[..., order]

    def inverse(self) -> Action:
        return self


def test_an_element_of_ones_own_that_permutes_nodes_gets_no_advice_of_grids() -> None:
    """Issue 25's wrong message: a failed node permutation was advised a p4 / p4m group convolution."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(2, 4, 1), nn.Conv1d(4, 4, 3, padding=1))  # the second mixes neighbours
    profile = profile_equivariance(net, torch.randn(2, 2, 6), Swap())
    first = profile.first_failure
    assert first is not None
    assert first.name == "1"
    assert rows(profile)["0"] == "ok"
    assert "does not commute with Swap()" in (first.fix or "")
    assert not re.search(r"p4|kernels|circular", str(profile)), str(profile)


class PositionsInForward(LatePositions):
    """The same position table added in forward code between the two layers, not by a submodule."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.second(self.first(h) + self.positions.table[: h.shape[-2]])
        return out


def test_a_position_table_added_in_forward_is_placed_between_the_layers() -> None:
    profile = profile_equivariance(PositionsInForward().double().eval(), h(), CYCLE, inputs=Scalars())
    first = profile.first_failure
    assert first is not None
    assert first.type == "(forward)"
    assert "first failure between first.norm2 and second.dropout1 (in forward" in profile.summary()
    assert all(row.passed for row in profile.layers if row.name.startswith("first."))
    assert "mixes nodes by position" in (first.fix or "")


def test_fixed_copy_is_refused_for_a_profile_of_several_inputs() -> None:
    net = gallery.deep_sets(indexed=True).double()
    profile = profile_equivariance(net, h(), CYCLE, inputs=Scalars())
    with pytest.raises(
        InvalidArgument, match=r"a profile of several inputs names layers that no surgery fixes"
    ):
        profile.fixed_copy(net)


class Flattened(nn.Module):
    """A per-point layer run on the points of all samples flattened, ``(B * N, C)``, as e3nn's are."""

    def __init__(self) -> None:
        super().__init__()
        self.point = nn.Linear(4, 8)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, n, c = h.shape
        return self.point(h.reshape(b * n, c)).reshape(b, n, -1)


def test_a_layer_without_the_batch_axis_first_is_listed_not_compared() -> None:
    profile = profile_equivariance(Flattened().double(), h(), CYCLE, inputs=Scalars())
    point, output = profile.layers
    assert (point.name, point.compared, point.output_shape) == ("point", False, (20, 8))
    assert point.note is not None
    assert point.note.startswith("no batch axis first")
    assert (output.name, output.compared, output.passed) == ("(output)", True, True)
    assert "point     Linear     (20, 8)" in str(profile)
