"""The public strategies: what they draw, how they shrink, and how they refuse bad options.

The model families are checked against the library: every conv stack passes
a check with its own stride and boundary, every dense network fails one
(the negative control that shows the positive one can fail).
"""

from __future__ import annotations

import math
import sys

import pytest
import torch
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample
from torch import nn

from equivariance import InvalidArgument, Shift, check_equivariance
from equivariance.euclidean import Rotation
from equivariance.fields import Adjacency, EdgeIndex, Irreps, Positions, Pseudoscalars, Scalars, Vectors
from equivariance.permutations import NodePermutation, Permutation
from equivariance.strategies import (
    ConvStack,
    DenseNet,
    Graph,
    conv_stacks,
    graph_batches,
    graphs,
    images,
    mlps,
    node_permutations,
    permutations,
    point_clouds,
    rotations,
    shifts,
    signals,
    translations,
)

REPLAY = settings(database=None, derandomize=True, max_examples=200)


# -- shifts --------------------------------------------------------------------------------------


@given(st.data(), st.integers(1, 3), st.integers(0, 6), st.integers(1, 3), st.booleans())
def test_shifts_respect_their_box(
    data: st.DataObject, ndim: int, max_shift: int, multiple_of: int, nonzero: bool
) -> None:
    if nonzero and max_shift < multiple_of:
        max_shift = multiple_of
    shift = data.draw(shifts(ndim=ndim, max_shift=max_shift, multiple_of=multiple_of, nonzero=nonzero))
    assert isinstance(shift, Shift)
    assert shift.ndim == ndim
    assert all(abs(o) <= max_shift for o in shift)
    assert shift.divisible_by(multiple_of)
    assert not (nonzero and shift.is_identity)


@given(shifts(ndim=2, max_shift=(1, 6), multiple_of=(1, 3)))
def test_shifts_take_one_bound_and_step_per_dim(shift: Shift) -> None:
    assert abs(shift[0]) <= 1
    assert shift[1] in (-6, -3, 0, 3, 6)


@given(shifts(ndim=st.integers(1, 3), max_shift=st.integers(0, 2)))
def test_shifts_options_may_be_strategies(shift: Shift) -> None:
    assert 1 <= shift.ndim <= 3
    assert max(map(abs, shift)) <= 2


def test_shifts_shrink_toward_the_smallest_nonzero_shift() -> None:
    smallest = find(shifts(ndim=2, max_shift=5), lambda s: not s.is_identity, settings=REPLAY)
    assert sorted(map(abs, smallest)) == [0, 1]
    assert find(shifts(ndim=1, multiple_of=2, max_shift=8, nonzero=True), bool, settings=REPLAY) == Shift(2)


# -- signals -------------------------------------------------------------------------------------


@given(
    signals(ndim=st.integers(1, 3), batch=(1, 3), channels=(1, 2), size=(3, 9), min_value=-2.0, max_value=0.5)
)
def test_signals_respect_shape_and_value_bounds(x: torch.Tensor) -> None:
    assert 3 <= x.dim() <= 5
    assert 1 <= x.shape[0] <= 3
    assert 1 <= x.shape[1] <= 2
    assert all(3 <= n <= 9 for n in x.shape[2:])
    assert x.dtype == torch.float32
    assert bool(torch.isfinite(x).all())
    assert -2.0 <= float(x.min()) <= float(x.max()) <= 0.5


@given(images(size=(7, 15), border=3, dtype=torch.float64))
def test_images_with_a_border_are_content_on_a_zero_canvas(x: torch.Tensor) -> None:
    assert x.dim() == 4
    assert x.dtype == torch.float64
    inner = x[..., 3:-3, 3:-3]
    assert float(x.abs().sum()) == pytest.approx(float(inner.abs().sum()))
    assert bool((inner != 0).any())


@given(images(size=st.just((5, 11)), batch=2, channels=1))
def test_a_strategy_of_shapes_gives_the_whole_spatial_shape(x: torch.Tensor) -> None:
    assert x.shape == (2, 1, 5, 11)


@given(signals(ndim=2, size=(5, 9), border=st.sampled_from([None, 1, 2]), max_value=st.floats(0, 4)))
def test_value_and_border_options_may_be_strategies(x: torch.Tensor) -> None:
    assert float(x.max()) <= 4
    if bool((x[..., 0, :] != 0).any()):  # content up to the edge: no border was drawn
        assert bool((x[..., :, 0] != 0).any())


@given(signals(dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float64])))
def test_signals_take_any_floating_dtype(x: torch.Tensor) -> None:
    assert x.dtype in (torch.float16, torch.bfloat16, torch.float64)


def test_signals_are_finite_unless_nan_and_infinity_are_asked_for() -> None:
    def special(x: torch.Tensor) -> bool:
        return not bool(torch.isfinite(x).all())

    with_nan = find(signals(allow_nan=True), lambda x: bool(x.isnan().any()), settings=REPLAY)
    assert int(with_nan.isnan().sum()) == 1
    with_inf = find(signals(allow_infinity=True), lambda x: bool(x.isinf().any()), settings=REPLAY)
    assert int(with_inf.isinf().sum()) == 1
    with pytest.raises(NoSuchExample):
        find(signals(), special, settings=settings(REPLAY, max_examples=50))


def test_signals_shrink_toward_small_tensors() -> None:
    smallest = find(signals(ndim=2), lambda x: True, settings=REPLAY)
    assert smallest.shape == (1, 1, 4, 4)


# -- conv stacks ---------------------------------------------------------------------------------


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_every_conv_stack_passes_a_check_with_its_stride_and_boundary(data: st.DataObject) -> None:
    stack = data.draw(
        conv_stacks(ndim=st.integers(1, 3), strides=(1, 2), depth=(1, 2), dilations=(1, 2)), label="stack"
    )
    x = data.draw(stack.inputs(), label="x")
    out = stack.model(x)
    assert out.shape[:2] == (x.shape[0], stack.out_channels)
    bound = tuple((n - 1) * s for n, s in zip(out.shape[2:], stack.stride))  # output shifts that fit
    shift = data.draw(stack.shifts(max_shift=bound, nonzero=True), label="shift")
    report = check_equivariance(stack.model, x, [shift], stride=stack.stride, boundary=stack.boundary)
    # within tolerance also where it could not fail (a ReLU never positive: report.vacuous, not a pass)
    assert report.within_tolerance, str(report)


@given(conv_stacks(padding="circular", strides=(1, 2), depth=(1, 3), ndim=2, dilations=(1, 2)))
def test_circular_stacks_keep_the_size_up_to_the_stride(stack: ConvStack) -> None:
    size = stack.input_size(3)
    assert size % stack.stride[0] == 0
    x = torch.zeros(1, stack.in_channels, size, size)
    assert stack.model(x).shape[-2:] == (size // stack.stride[0],) * 2


@given(conv_stacks(padding="valid", ndim=1, dilations=(1, 3), strides=(1, 2)), st.integers(1, 5))
def test_valid_stacks_know_their_minimum_and_input_sizes(stack: ConvStack, out: int) -> None:
    assert stack.model(torch.zeros(1, stack.in_channels, stack.min_size)).shape[-1] == 1
    assert stack.model(torch.zeros(1, stack.in_channels, stack.input_size(out))).shape[-1] == out


@given(conv_stacks(depth=(2, 4), channels=3, kernel_sizes=3, strides=2, padding="valid"))
def test_conv_stacks_follow_their_options(stack: ConvStack) -> None:
    convs = [m for m in stack.model if isinstance(m, nn.Conv2d)]
    assert 2 <= len(convs) <= 4
    assert all(c.kernel_size == (3, 3) and c.stride == (2, 2) and c.padding == (0, 0) for c in convs)
    assert all(c.in_channels == 3 and c.out_channels == 3 for c in convs)
    assert stack.stride == (2 ** len(convs),) * 2
    assert stack.boundary == "zeros"


def test_conv_stacks_shrink_toward_one_small_layer() -> None:
    stack = find(conv_stacks(), lambda s: True, settings=REPLAY)
    (conv, _) = stack.model
    assert (stack.in_channels, stack.out_channels, stack.stride, conv.kernel_size) == (1, 1, (1, 1), (1, 1))


def test_conv_stacks_replay_exactly_and_leave_the_global_rng_alone() -> None:
    state = torch.get_rng_state()
    first = find(conv_stacks(channels=3, kernel_sizes=3), lambda s: True, settings=REPLAY)
    second = find(conv_stacks(channels=3, kernel_sizes=3), lambda s: True, settings=REPLAY)
    assert torch.equal(torch.get_rng_state(), state)
    for (name, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), name


# -- dense networks ------------------------------------------------------------------------------


@given(st.data())
def test_every_dense_network_fails_a_check_of_a_nonzero_shift(data: st.DataObject) -> None:
    net = data.draw(mlps(ndim=st.integers(1, 3), size=(2, 5)), label="net")
    assert isinstance(net, DenseNet)
    x = data.draw(net.inputs(), label="x")
    assert net.model(x).shape == (x.shape[0], net.out_channels, *x.shape[2:])
    # At most half of each dim, so that at least half the output is compared, and failing by 100x the
    # tolerance: a shift that leaves one or two elements to compare met a dense network's output there
    # within 1e3 * rtol in about 1 of 1,000 draws; over 2,000 draws with this bound the least was 681x.
    bound = tuple(n // 2 for n in net.input_size)
    shift = data.draw(shifts(ndim=net.ndim, max_shift=bound).filter(lambda s: not s.is_identity))
    report = check_equivariance(net.model, x, [shift])
    assert not report.passed
    assert report.max_error > 100 * report.rtol


def test_mlps_shrink_toward_one_small_hidden_layer() -> None:
    net = find(mlps(), lambda n: True, settings=REPLAY)
    linears = [m for m in net.model if isinstance(m, nn.Linear)]
    assert len(linears) == 2
    assert net.input_size == (2, 2)
    assert linears[0].out_features == 4


# -- refused options -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: shifts(ndim=0), r"ndim must be at least 1, found 0"),
        (lambda: shifts(max_shift=-1), r"max_shift must be at least 0, found -1"),
        (lambda: shifts(max_shift=1.5), r"max_shift must be an int, found 1.5 \(float\)"),
        (lambda: shifts(multiple_of=0), r"multiple_of must be at least 1, found 0"),
        (
            lambda: shifts(ndim=2, max_shift=(1, 2, 3)),
            r"max_shift \(1, 2, 3\) has 3 entries but the shifts have 2 dims",
        ),
        (
            lambda: shifts(max_shift=1, multiple_of=2, nonzero=True),
            r"no nonzero shift has offsets within max_shift 1 that are multiples of 2; raise max_shift to at least 2",
        ),
        (lambda: shifts(nonzero="yes"), r"nonzero must be True or False, found 'yes' \(str\)"),
        (lambda: signals(batch=0), r"batch must be at least 1, found 0"),
        (lambda: signals(ndim=4), r"ndim must be at most 3, found 4"),
        (lambda: signals(size=(8, 4)), r"size range \(8, 4\) is empty: min > max; pass \(4, 8\)"),
        (lambda: signals(size=(1, 2, 3)), r"size must be an int, a \(min, max\) pair or a strategy"),
        (
            lambda: signals(size=6, border=3),
            r"size must be at least 7 \(twice the border 3, plus one\), found 6",
        ),
        (
            lambda: signals(dtype=torch.int64),
            r"dtype must be a floating-point torch.dtype, found torch.int64",
        ),
        (lambda: signals(min_value=1.0, max_value=0.0), r"min_value 1.0 is above max_value 0.0; swap them"),
        (
            lambda: signals(max_value=math.inf),
            r"max_value must be a finite number, found inf .*allow_infinity=True",
        ),
        (lambda: signals(device="tpu9"), r"device 'tpu9' is not a device torch knows"),
        (lambda: conv_stacks(padding="same"), r"padding must be 'valid' or 'circular', found 'same' \(str\)"),
        (lambda: conv_stacks(padding=()), r"padding is empty"),
        (lambda: conv_stacks(depth=0), r"depth must be at least 1, found 0"),
        (lambda: conv_stacks(strides=(0, 2)), r"strides's min must be at least 1, found 0"),
        (lambda: conv_stacks(kernel_sizes="3"), r"kernel_sizes must be an int, found '3' \(str\)"),
        (lambda: mlps(hidden=0), r"hidden must be at least 1, found 0"),
    ],
    ids=lambda v: "" if callable(v) else v[:40],
)
def test_bad_options_are_refused_when_the_strategy_is_built(make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument, match=message):
        make()


def test_bad_values_drawn_from_a_strategy_are_refused_when_drawn() -> None:
    with pytest.raises(InvalidArgument, match=r"depth must be at least 1, found 0"):
        find(conv_stacks(depth=st.just(0)), lambda s: True, settings=REPLAY)
    with pytest.raises(InvalidArgument, match=r"spatial size \(4, 4\) leaves nothing inside a border of 2"):
        find(images(size=4, border=st.just(2)), lambda x: True, settings=REPLAY)
    with pytest.raises(InvalidArgument, match=r"min_value 2.0 is above max_value 1.0; swap them"):
        find(signals(min_value=st.just(2.0)), lambda x: True, settings=REPLAY)
    with pytest.raises(InvalidArgument, match=r"size \(3,\) has 1 entries but there are 2 spatial dims"):
        find(images(size=st.just((3,))), lambda x: True, settings=REPLAY)


def test_stack_inputs_refuse_a_size_of_their_own() -> None:
    stack = find(conv_stacks(), lambda s: True, settings=REPLAY)
    with pytest.raises(InvalidArgument, match=r"the stack sets size, ndim and channels of its inputs"):
        stack.inputs(size=8)


# -- point clouds, sets and graphs ---------------------------------------------------------------


@given(rotations(group=st.sampled_from(["SO2", "O2", "SO3", "O3"])))
def test_rotations_are_orthogonal_of_their_group(r: Rotation) -> None:
    m = r.matrix
    assert (m @ m.T - torch.eye(r.dim, dtype=torch.float64)).abs().max() < 1e-12
    assert r.det in (1, -1)


def test_rotations_shrink_to_the_identity_and_draw_reflections_only_in_o_groups() -> None:
    assert find(rotations(), lambda r: True, settings=REPLAY).is_identity
    assert find(rotations(group="SO2"), lambda r: True, settings=REPLAY).is_identity
    assert find(rotations(group="O3"), lambda r: r.det < 0, settings=REPLAY) == Rotation.inversion()
    with pytest.raises(NoSuchExample):
        find(rotations(group="SO3"), lambda r: r.det < 0, settings=settings(REPLAY, max_examples=100))
    turned = find(rotations(), lambda r: float(r.matrix.trace()) < 0, settings=REPLAY)  # a large angle
    assert turned.det == 1


def test_permutations_and_translations_shrink_toward_the_simplest() -> None:
    assert find(permutations(n=(3, 6)), lambda p: True, settings=REPLAY) == Permutation.identity(3)
    assert find(permutations(n=4), lambda p: not p.is_identity, settings=REPLAY).indices in {
        (0, 1, 3, 2), (1, 0, 2, 3), (0, 2, 1, 3)
    }  # fmt: skip
    assert find(translations(dim=2), lambda t: True, settings=REPLAY).is_identity
    assert (
        find(translations(scale=0.5), lambda t: not t.is_identity, settings=REPLAY).vector.abs().max() <= 0.5
    )


@given(
    point_clouds(fields=(Positions(), Scalars(), Vectors(nodes=-3), Pseudoscalars(nodes=None), Adjacency()))
)
def test_point_clouds_have_one_batch_and_one_number_of_points(cloud: tuple[torch.Tensor, ...]) -> None:
    pos, h, v, s, a = cloud
    b, n = pos.shape[:2]
    assert pos.shape == (b, n, 3)
    assert h.shape[:2] == (b, n)
    assert v.shape[:2] == (b, n)
    assert v.shape[-1] == 3
    assert s.shape[0] == b
    assert a.shape == (b, n, n)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert pos.abs().max() <= 1
    assert all(t.dtype == torch.float32 for t in cloud)


def test_point_clouds_shrink_to_one_point_and_take_their_options() -> None:
    smallest = find(point_clouds(fields=Positions()), lambda x: True, settings=REPLAY)
    assert smallest.shape == (1, 1, 3)
    planar = find(
        point_clouds(batch=None, points=4, dim=2, dtype=torch.float64, scale=5.0),
        lambda x: True,
        settings=REPLAY,
    )
    assert planar.shape == (4, 2)
    assert planar.dtype == torch.float64


def test_point_clouds_of_e3nn_irreps() -> None:
    pytest.importorskip("e3nn", reason="e3nn is not installed (pip install equivariance[e3nn])")
    x = find(point_clouds(fields=Irreps("2x0e + 1x2e"), points=3), lambda x: True, settings=REPLAY)
    assert x.shape == (1, 3, 7)


@given(graphs(nodes=(1, 6)))
def test_graphs_index_their_nodes(g: Graph) -> None:
    assert g.edge_index.shape[0] == 2
    assert g.edge_index.dtype == torch.long
    if g.edge_index.numel():
        assert int(g.edge_index.min()) >= 0
        assert int(g.edge_index.max()) < g.num_nodes
    assert not bool((g.edge_index[0] == g.edge_index[1]).any())  # no self loops unless asked
    assert len({tuple(e) for e in g.edge_index.T.tolist()}) == g.edge_index.shape[1]  # no edge twice


@given(graphs(nodes=5, edges=3, undirected=True, self_loops=True))
def test_undirected_graphs_hold_each_edge_both_ways(g: Graph) -> None:
    a = g.adjacency()
    assert torch.equal(a, a.T)
    pairs = {tuple(sorted(e)) for e in g.edge_index.T.tolist()}
    assert len(pairs) == 3


def test_graphs_shrink_to_one_node_without_edges() -> None:
    g = find(graphs(), lambda g: True, settings=REPLAY)
    assert g.num_nodes == 1
    assert g.edge_index.shape == (2, 0)
    assert find(
        graphs(nodes=3), lambda g: g.edge_index.shape[1] > 0, settings=REPLAY
    ).edge_index.tolist() == [[0], [1]]


def test_point_strategy_messages() -> None:
    with pytest.raises(
        InvalidArgument, match=r"group must be one of 'SO2', 'O2', 'SO3', 'O3', found 'SE3' \(str\)"
    ):
        rotations(group="SE3")
    with pytest.raises(
        InvalidArgument,
        match=r"point_clouds draws tensors of Scalars, Vectors, Positions, Irreps and the like, found EdgeIndex\(\) \(EdgeIndex\); draw edges with graphs\(\)",
    ):
        point_clouds(fields=EdgeIndex())
    with pytest.raises(
        InvalidArgument,
        match=r"point_clouds draws points on axis -2 \(or -3 for several vectors a point\), found Scalars\(nodes=0\); move the axis of the drawn tensor yourself",
    ):
        point_clouds(fields=Scalars(nodes=0))
    with pytest.raises(
        InvalidArgument,
        match=r"fields must be a field type or a non-empty sequence of them, found \[\] \(list\); pass e.g. fields=\(Positions\(\), Scalars\(\)\)",
    ):
        point_clouds(fields=[])
    with pytest.raises(InvalidArgument, match=r"dim must be at most 3, found 4"):
        point_clouds(dim=4)
    with pytest.raises(InvalidArgument, match=r"scale must be positive, found -1.0"):
        translations(scale=-1.0)
    with pytest.raises(
        InvalidArgument,
        match=r"a graph of 2 nodes has at most 1 such edges, asked for 2; draw more nodes or fewer edges",
    ):
        find(graphs(nodes=2, edges=2, undirected=True), lambda g: True, settings=REPLAY)


# -- graphs of different sizes in one batch ------------------------------------------------------


@given(graph_batches(nodes=(1, 5), undirected=True, features={"x": Scalars(), "v": Vectors(nodes=-3)}))
def test_graph_batches_share_what_a_batch_must(batch: list[Graph]) -> None:
    assert 1 <= len(batch) <= 4
    widths = {(g.features["x"].shape[1], g.features["v"].shape[1]) for g in batch}
    assert len(widths) == 1  # one draw of channels for the whole list
    for g in batch:
        assert g.features["x"].shape[0] == g.num_nodes
        assert g.features["v"].shape == (g.num_nodes, g.features["v"].shape[1], 3)
        assert g.features["x"].dtype == torch.float32
        assert g.features["x"].abs().max() <= 1
        assert torch.equal(g.adjacency(), g.adjacency().T)


def test_graph_batches_and_node_permutations_shrink_toward_the_simplest() -> None:
    smallest = find(graph_batches(features={"x": Scalars()}), lambda b: True, settings=REPLAY)
    assert len(smallest) == 1
    assert smallest[0].num_nodes == 1
    assert smallest[0].edge_index.shape == (2, 0)
    assert smallest[0].features["x"].shape == (1, 1)
    mixed = find(graph_batches(), lambda b: len({g.num_nodes for g in b}) > 1, settings=REPLAY)
    assert sorted(g.num_nodes for g in mixed) == [1, 2]
    assert find(node_permutations(), lambda g: True, settings=REPLAY) == NodePermutation(0)
    moving = find(node_permutations(), lambda g: not g.sized(3).is_identity, settings=REPLAY)
    assert moving == NodePermutation(
        next(s for s in range(10) if not NodePermutation(s).sized(3).is_identity)
    )
    assert find(node_permutations(seed=(5, 9)), lambda g: True, settings=REPLAY) == NodePermutation(5)


def test_graph_data_builds_a_torch_geometric_graph() -> None:
    pytest.importorskip(
        "torch_geometric", reason="torch_geometric is not installed (pip install equivariance[geometric])"
    )
    g = find(graphs(nodes=3, edges=2, features={"pos": Positions()}), lambda g: True, settings=REPLAY)
    data = g.data(z=torch.arange(3))
    assert data.num_nodes == 3
    assert torch.equal(data.edge_index, g.edge_index)
    assert torch.equal(data.pos, g.features["pos"])
    assert data.z.tolist() == [0, 1, 2]
    with pytest.raises(
        InvalidArgument, match=r"node field 'z' must be a tensor with the 3 nodes on axis 0, found"
    ):
        g.data(z=torch.arange(4))


def test_graph_strategy_messages() -> None:
    with pytest.raises(
        InvalidArgument,
        match=r"features must map names to field types, found \[Scalars\(\)\] \(list\); pass e.g. features=\{'x': Scalars\(\), 'pos': Positions\(\)\}",
    ):
        graph_batches(features=[Scalars()])  # type: ignore[arg-type]
    with pytest.raises(
        InvalidArgument,
        match=r"features\['e'\] must be a field type of node features .*, found EdgeIndex\(\) \(EdgeIndex\); the edges are the graph's edge_index",
    ):
        graphs(features={"e": EdgeIndex()})
    with pytest.raises(
        InvalidArgument,
        match=r"features\['u'\] is Scalars\(nodes=None\), but a graph's features hold one row a node: pass nodes=-2",
    ):
        graph_batches(features={"u": Scalars(nodes=None)})
    with pytest.raises(InvalidArgument, match=r"batch must be at least 1, found 0"):
        graph_batches(batch=0)
    with pytest.raises(InvalidArgument, match=r"channels's min must be at least 1, found 0"):
        graph_batches(channels=(0, 2))
    with pytest.raises(InvalidArgument, match=r"seed must be at least 0, found -1"):
        node_permutations(seed=-1)
    with pytest.raises(InvalidArgument, match=r"seed range \(9, 5\) is empty: min > max; pass \(5, 9\)"):
        node_permutations(seed=(9, 5))


def _neighbour_sums() -> tuple[nn.Module, nn.Module]:
    """A message-passing layer (sums of neighbours' features) and the same with each node's index in its
    graph added: both per-graph models; equivariant under permutations of each graph's nodes, and not."""
    geometric = pytest.importorskip(
        "torch_geometric.nn", reason="torch_geometric is not installed (pip install equivariance[geometric])"
    )

    class NeighbourSum(geometric.MessagePassing):  # type: ignore[misc]
        def __init__(self, *, indexed: bool = False) -> None:
            super().__init__(aggr="add")
            self.lin, self.indexed = nn.Linear(3, 4), indexed

        def forward(self, data: object) -> torch.Tensor:
            x = data.x  # type: ignore[attr-defined]
            if self.indexed:  # the negative control: a node's place in its graph as a feature
                place = torch.arange(len(x)) - data.ptr[data.batch]  # type: ignore[attr-defined]
                x = x + place.to(x.dtype)[:, None]
            h = self.lin(x)
            return h + self.propagate(data.edge_index, x=h)  # type: ignore[attr-defined]

    return NeighbourSum(), NeighbourSum(indexed=True)


NODE_FIELDS = {"x": Scalars(nodes=0), "edge_index": EdgeIndex()}
SMALL = settings(max_examples=15, deadline=None)


def _permutes_with_the_nodes(layer: nn.Module) -> None:
    from torch_geometric.data import Batch

    @SMALL
    @given(graph_batches(nodes=(1, 6), features={"x": Scalars()}, channels=3), node_permutations())
    def test(graphs: list[Graph], g: NodePermutation) -> None:
        batch = Batch.from_data_list([graph.data() for graph in graphs])
        report = check_equivariance(
            layer, batch, transforms=[g], inputs=NODE_FIELDS, outputs=Scalars(nodes=0)
        )
        assert report.passed, report

    test()


def test_a_message_passing_layer_permutes_with_the_nodes_of_mixed_size_batches() -> None:
    layer, _ = _neighbour_sums()
    _permutes_with_the_nodes(layer)


def test_a_layer_that_reads_node_indices_fails_under_drawn_node_permutations() -> None:
    _, indexed = _neighbour_sums()  # skips where torch_geometric is absent
    from torch_geometric.data import Batch

    with pytest.raises(
        AssertionError, match=r"equivariance check FAILED: NeighbourSum, 1 permutation, 1 failed"
    ):
        settings(SMALL, phases=[Phase.generate], database=None)(_permutes_with_the_nodes)(indexed)
    # it fails for the permutation, not for the batching: on graphs of one node every element is the identity
    lone = [Graph(1, torch.empty(2, 0, dtype=torch.long), {"x": torch.randn(1, 3)}).data() for _ in range(3)]
    report = check_equivariance(
        indexed, Batch.from_data_list(lone), transforms=[NodePermutation(1)], inputs=NODE_FIELDS,
        outputs=Scalars(nodes=0),
    )  # fmt: skip
    assert report.passed, report


def test_graph_data_says_what_to_install_without_torch_geometric(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch_geometric.data", None)  # an import of it fails, as when absent
    g = find(graphs(nodes=2), lambda g: True, settings=REPLAY)
    with pytest.raises(
        ModuleNotFoundError,
        match=r"Graph.data\(\) builds a torch_geometric Data, and torch_geometric is not installed; pip install equivariance\[geometric\]",
    ):
        g.data()


@settings(max_examples=30, deadline=None)
@given(rotations(group="O3", nonzero=True), permutations(n=(1, 4), nonzero=True))
def test_nonzero_rotations_and_permutations_leave_out_the_identity(r: Rotation, p: Permutation) -> None:
    assert not r.is_identity
    assert not p.is_identity


def test_without_nonzero_the_identity_is_what_they_shrink_to() -> None:
    # the negative control: the identity is drawn (a check would refuse it), so nonzero= has work to do
    assert find(rotations(), lambda r: True).is_identity
    assert find(permutations(n=3), lambda p: True).is_identity
    assert not find(rotations(nonzero=True), lambda r: True).is_identity
    assert not find(permutations(n=3, nonzero=True), lambda p: True).is_identity


def test_a_nonzero_permutation_of_one_point_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"the one permutation of 1 point is the identity; pass n=2"):
        permutations(n=1, nonzero=True)
