"""ShaDow samplers: structural invariants of every batch, exactness, and statistical equivalence.

The statistical tests compare the fast samplers with the per-root reference on small fixed graphs
over many repetitions (fixed seeds, so they are deterministic); the "power" tests show that the
same comparisons reject a sampler that draws with replacement, with an off-by-one fanout or with a
missing level, so a passing fast sampler cannot be one of those.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy import stats
from scipy.sparse.csgraph import shortest_path

from trackgnn.errors import TrackGNNError
from trackgnn.graph.csr import SamplingGraph, build_sampling_graph, concat_graphs
from trackgnn.graph.shadow import (
    BulkSampler,
    InducedExtractor,
    PygSampler,
    ReferenceSampler,
    ShadowSampler,
    SubgraphBatch,
    draw_roots,
    epoch_roots,
    make_sampler,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread: these tests are many small ops, which extra threads only slow down
    (badly so on a loaded machine); restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ------------------------------------------------------------------------------------------
# graphs
# ------------------------------------------------------------------------------------------


def random_graph(num_nodes: int, min_out: int, max_out: int, seed: int) -> torch.Tensor:
    """Directed graph, each vertex with ``min_out..max_out`` distinct out-neighbours."""
    rng = np.random.default_rng(seed)
    src, dst = [], []
    for v in range(num_nodes):
        others = np.delete(np.arange(num_nodes), v)
        k = rng.integers(min_out, max_out + 1)
        targets = rng.choice(others, size=k, replace=False)
        src += [v] * k
        dst += targets.tolist()
    return torch.tensor([src, dst], dtype=torch.int64)


def quirky_graph() -> tuple[torch.Tensor, int]:
    """A layered graph plus every awkward case: a reciprocal pair, a repeated edge, a self-loop,
    an isolated vertex and a vertex of high degree."""
    edge_index = random_graph(30, 1, 4, seed=3)
    extra = torch.tensor(
        [
            [0, 1, 2, 2, 5, 31] + [32] * 12,
            [1, 0, 3, 3, 5, 32, *list(range(12))],
        ]
    )
    # vertex 30 is isolated; 31-32 hang off the rest through vertex 32's 12 out-edges
    return torch.cat([edge_index, extra], dim=1), 34


def symmetric_matrix(edge_index: torch.Tensor, num_nodes: int) -> sp.csr_matrix:
    src, dst = edge_index.numpy()
    data = np.ones(src.size)
    a = sp.coo_matrix((data, (src, dst)), shape=(num_nodes, num_nodes)).tocsr()
    return ((a + a.T) > 0).astype(np.float64)


def hop_distances(edge_index: torch.Tensor, num_nodes: int, roots: np.ndarray) -> np.ndarray:
    """Unweighted distances ``[len(roots), num_nodes]`` on the symmetric adjacency."""
    return shortest_path(
        symmetric_matrix(edge_index, num_nodes), unweighted=True, indices=roots, directed=False
    )


# ------------------------------------------------------------------------------------------
# structural checks applied to every sampled batch
# ------------------------------------------------------------------------------------------


def check_batch(
    graph: SamplingGraph, batch: SubgraphBatch, roots: torch.Tensor, depth: int
) -> None:
    """Every property a training step relies on, checked against brute force."""
    batch = batch.to("cpu")
    edge_index = graph.edge_index.cpu().numpy()
    node_ids = batch.node_ids.numpy()
    sub = batch.batch.numpy()
    b = batch.num_subgraphs
    assert b == roots.numel()
    for t in (batch.node_ids, batch.batch, batch.edge_index, batch.edge_ids, batch.root_pos):
        assert t.dtype == torch.int64
    assert batch.edge_index.shape == (2, batch.num_edges)
    assert np.all(np.diff(sub) >= 0) and sub.min() == 0 and sub.max() == b - 1

    # the root is in its own subgraph at root_pos
    assert torch.equal(batch.roots, roots.cpu())
    assert torch.equal(batch.batch[batch.root_pos], torch.arange(b))

    # every edge exists in the graph with its id and direction, inside one subgraph
    src_local, dst_local = batch.edge_index.numpy()
    eids = batch.edge_ids.numpy()
    assert np.all((eids >= 0) & (eids < graph.num_edges))
    assert np.array_equal(node_ids[src_local], edge_index[0, eids])
    assert np.array_equal(node_ids[dst_local], edge_index[1, eids])
    assert np.array_equal(sub[src_local], sub[dst_local]), "an edge crosses subgraphs"

    # each subgraph is exactly the induced subgraph of its vertex set; vertices within d hops
    distances = hop_distances(graph.edge_index.cpu(), graph.num_nodes, roots.cpu().numpy())
    edge_sub = sub[src_local]
    for i in range(b):
        nodes = node_ids[sub == i]
        assert np.unique(nodes).size == nodes.size, "a vertex twice in one subgraph"
        both_in = np.isin(edge_index[0], nodes) & np.isin(edge_index[1], nodes)
        expected = np.flatnonzero(both_in)
        got = np.sort(eids[edge_sub == i])
        assert np.array_equal(got, expected), f"subgraph {i} is not the induced subgraph"
        assert np.all(distances[i, nodes] <= depth), f"subgraph {i} reaches beyond {depth} hops"

    # root-edge mask: the edge touches its subgraph's root
    root_global = node_ids[batch.root_pos.numpy()][edge_sub]
    expected_mask = (node_ids[src_local] == root_global) | (node_ids[dst_local] == root_global)
    assert np.array_equal(batch.root_edge_mask.numpy(), expected_mask)


def canonical_edges(batch: SubgraphBatch, num_edges: int) -> torch.Tensor:
    """``[3, M]`` (local src, local dst, edge id) sorted by (subgraph, edge id)."""
    order = torch.argsort(batch.edge_batch * num_edges + batch.edge_ids)
    return torch.cat([batch.edge_index, batch.edge_ids[None]])[:, order]


def sample_all(sampler: ShadowSampler, roots: torch.Tensor, seed: int) -> list[SubgraphBatch]:
    device = getattr(sampler, "device", torch.device("cpu"))
    generator = torch.Generator(device=device).manual_seed(seed)
    return sampler.sample(roots.to(device), generator)


SAMPLER_FACTORIES = {
    "reference": lambda g, d, s, b, **kw: ReferenceSampler(g, d, s, b, **kw),
    "bulk_k1": lambda g, d, s, b, **kw: BulkSampler(g, d, s, b, k=1, **kw),
    "bulk_k3": lambda g, d, s, b, **kw: BulkSampler(g, d, s, b, k=3, **kw),
    "bulk_keys": lambda g, d, s, b, **kw: BulkSampler(g, d, s, b, k=2, draw="keys", **kw),
}


@pytest.mark.parametrize("name", list(SAMPLER_FACTORIES))
@pytest.mark.parametrize("replace", [False, True])
def test_batches_are_exact_induced_subgraphs(name: str, replace: bool) -> None:
    edge_index, n = quirky_graph()
    graph = build_sampling_graph(edge_index, n)
    assert not graph.simple
    sampler = SAMPLER_FACTORIES[name](graph, 3, 2, 7, replace=replace)
    # every vertex as a root, several times, batch size not dividing the count
    roots = torch.arange(n).repeat(3)
    batches = sample_all(sampler, roots, seed=11)
    assert [bt.num_subgraphs for bt in batches] == [7] * 14 + [4]
    for i, bt in enumerate(batches):
        check_batch(graph, bt, roots[7 * i : 7 * i + bt.num_subgraphs], depth=3)


@pytest.mark.parametrize("device", DEVICES)
def test_bulk_on_device_gives_valid_batches(device: str) -> None:
    edge_index = random_graph(200, 2, 6, seed=5)
    graph = build_sampling_graph(edge_index, 200)
    sampler = make_sampler("bulk", graph, depth=3, fanout=4, batch_size=32, k=4, device=device)
    roots = torch.randperm(200, generator=torch.Generator().manual_seed(0))[:128]
    batches = sample_all(sampler, roots, seed=2)
    assert len(batches) == 4 and all(bt.node_ids.device.type == device for bt in batches)
    for i, bt in enumerate(batches):
        check_batch(graph, bt, roots[32 * i : 32 * (i + 1)], depth=3)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_full_fanout_gives_the_d_hop_ball_and_bulk_equals_reference(k: int, depth: int) -> None:
    """With a fanout >= every degree nothing is random: the subgraph is the induced d-hop ball."""
    edge_index, n = quirky_graph()
    graph = build_sampling_graph(edge_index, n)
    fanout = int(graph.degree.max())
    roots = torch.arange(n)
    ref = sample_all(ReferenceSampler(graph, depth, fanout, 10), roots, seed=0)
    bulk = sample_all(BulkSampler(graph, depth, fanout, 10, k=k), roots, seed=1)
    assert len(ref) == len(bulk) == 4
    distances = hop_distances(edge_index, n, roots.numpy())
    for r, b_ in zip(ref, bulk, strict=True):
        for field in ("node_ids", "batch", "root_pos"):
            assert torch.equal(getattr(r, field), getattr(b_, field)), field
        # edges: the same set; their order within a batch is not part of the contract
        r_edges, b_edges = canonical_edges(r, graph.num_edges), canonical_edges(b_, graph.num_edges)
        assert torch.equal(r_edges, b_edges)
    for i in range(n):
        bt = bulk[i // 10]
        nodes = bt.node_ids[bt.batch == i % 10].numpy()
        assert np.array_equal(nodes, np.flatnonzero(distances[i] <= depth))


def test_bulk_is_deterministic_given_the_generator() -> None:
    graph = build_sampling_graph(random_graph(100, 2, 6, seed=1), 100)
    sampler = BulkSampler(graph, 3, 3, 16, k=2)
    roots = torch.arange(64)
    first = sample_all(sampler, roots, seed=5)
    again = sample_all(sampler, roots, seed=5)
    other = sample_all(sampler, roots, seed=6)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a.node_ids, b.node_ids) and torch.equal(a.edge_ids, b.edge_ids)
    assert any(not torch.equal(a.node_ids, c.node_ids) for a, c in zip(first, other, strict=True))


def test_isolated_root_and_edgeless_graph() -> None:
    edge_index, n = quirky_graph()
    graph = build_sampling_graph(edge_index, n)
    for name in ("reference", "bulk"):
        (bt,) = sample_all(
            make_sampler(name, graph, batch_size=4), torch.tensor([30, 30, 0, 30]), 0
        )
        assert bt.node_ids[bt.batch == 0].tolist() == [30]
        assert int((bt.edge_batch == 0).sum()) == 0
    empty = build_sampling_graph(torch.empty(2, 0, dtype=torch.int64), 5)
    for name in ("reference", "bulk"):
        (bt,) = sample_all(make_sampler(name, empty, batch_size=5), torch.arange(5), 0)
        assert bt.node_ids.tolist() == [0, 1, 2, 3, 4] and bt.num_edges == 0


def test_multi_event_minibatch_never_crosses_events() -> None:
    events = [(random_graph(40 + 10 * i, 1, 4, seed=i), 40 + 10 * i) for i in range(3)]
    union = concat_graphs(events)
    assert union.num_nodes == 150
    assert union.node_offsets.tolist() == [0, 40, 90, 150]
    assert union.edge_offsets.tolist() == [0, *np.cumsum([e.shape[1] for e, _ in events]).tolist()]
    # edge ids of the union line up with the concatenated per-event edge lists
    assert torch.equal(
        union.edge_index[:, union.edge_offsets[1] :][:, :3], events[1][0][:, :3] + 40
    )
    graph = build_sampling_graph(union.edge_index, union.num_nodes)
    roots = torch.randperm(150, generator=torch.Generator().manual_seed(0))[:64]
    (bt,) = sample_all(BulkSampler(graph, 3, 6, 64), roots, seed=3)
    check_batch(graph, bt, roots, depth=3)
    event_of = torch.bucketize(bt.node_ids, union.node_offsets[1:], right=True)
    root_event = torch.bucketize(roots, union.node_offsets[1:], right=True)
    assert torch.equal(event_of, root_event[bt.batch])
    edge_event = torch.bucketize(bt.edge_ids, union.edge_offsets[1:], right=True)
    assert torch.equal(edge_event, root_event[bt.edge_batch])
    assert len(root_event.unique()) == 3  # one minibatch mixes events


@pytest.mark.parametrize(
    ("width", "blocks"),
    [
        (None, None),  # defaults: one mark slice per row here, no overflow in this graph
        (1, None),  # nearly every out-edge takes the overflow path
        (3, 1),  # every row in one mark slice: shared vertices everywhere, hash lookups
        (2, 3),  # several rows per slice, uneven last slice, overflow and hash together
    ],
)
def test_induced_extraction_paths_agree_with_brute_force(width, blocks) -> None:
    """The extractor's table, overflow and shared-vertex (hash) paths, forced one by one, must
    each give exactly the induced subgraph of every row of F."""
    edge_index, n = quirky_graph()
    graph = build_sampling_graph(edge_index, n)
    budget = 2**22 if blocks is None else blocks * (n + 1)
    extract = InducedExtractor(graph, width=width, mark_budget=budget)
    rng = np.random.default_rng(7)
    num_rows, batch_size = 24, 5
    roots = torch.from_numpy(rng.integers(0, n, num_rows))
    # rows overlap heavily: 8 random vertices of 34 plus the root
    sets = [np.union1d(rng.choice(n, 8, replace=False), [int(r)]) for r in roots]
    keys = torch.from_numpy(np.concatenate([r * n + v for r, v in enumerate(sets)]))
    for _ in range(2):  # twice: the scratch must be left clean by the first call
        batches = extract(keys, roots, batch_size)
        assert [bt.num_subgraphs for bt in batches] == [5, 5, 5, 5, 4]
        for j, bt in enumerate(batches):
            assert torch.equal(bt.roots, roots[j * batch_size : (j + 1) * batch_size])
            src, dst = edge_index.numpy()
            for i in range(bt.num_subgraphs):
                nodes = sets[j * batch_size + i]
                assert np.array_equal(bt.node_ids[bt.batch == i].numpy(), nodes)
                in_sub = (bt.edge_batch == i).numpy()
                expected = np.flatnonzero(np.isin(src, nodes) & np.isin(dst, nodes))
                got = bt.edge_ids.numpy()[in_sub]
                assert np.array_equal(np.sort(got), expected)
                local = bt.edge_index.numpy()[:, in_sub]
                assert np.array_equal(bt.node_ids.numpy()[local[0]], src[got])
                assert np.array_equal(bt.node_ids.numpy()[local[1]], dst[got])


# ------------------------------------------------------------------------------------------
# statistics: bulk must sample the same distribution as the reference
# ------------------------------------------------------------------------------------------

STAT_GRAPH = random_graph(40, 2, 5, seed=7)
STAT_ROOTS = torch.tensor([0, 9, 23])
SAME_ALPHA = 1e-3  # family-wise level for "same distribution" (deterministic with fixed seeds)
REJECT_ALPHA = 1e-6  # what a broken sampler must reach in the power tests


def draw_subgraphs(sampler: ShadowSampler, repeats: int, seed: int) -> tuple[np.ndarray, ...]:
    """Sizes, edge counts and per-vertex inclusion counts of ``repeats`` draws per root."""
    roots = STAT_ROOTS.repeat_interleave(repeats)
    sizes, edges = [], []
    included = np.zeros(sampler.graph.num_nodes, dtype=np.int64)
    for bt in sample_all(sampler, roots, seed):
        bt = bt.to("cpu")
        sizes.append(torch.bincount(bt.batch, minlength=bt.num_subgraphs).numpy())
        edges.append(torch.bincount(bt.edge_batch, minlength=bt.num_subgraphs).numpy())
        included += np.bincount(bt.node_ids.numpy(), minlength=included.size)
    return np.concatenate(sizes), np.concatenate(edges), included


def same_distribution_pvalue(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> float:
    """Family-wise p-value of "a and b come from one distribution" over: KS on subgraph sizes,
    KS on edge counts, and a two-proportion z-test of every vertex's inclusion frequency.

    Holm's procedure rejects some hypothesis exactly when its first step does, Bonferroni on the
    smallest p-value, so that is the family-wise p-value returned.
    """
    sizes_a, edges_a, incl_a = a
    sizes_b, edges_b, incl_b = b
    n_a, n_b = sizes_a.size, sizes_b.size
    pvalues = [stats.ks_2samp(sizes_a, sizes_b).pvalue, stats.ks_2samp(edges_a, edges_b).pvalue]
    pooled = (incl_a + incl_b) / (n_a + n_b)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    varying = se > 0  # a vertex always (or never) included by both tells nothing
    z = (incl_a / n_a - incl_b / n_b)[varying] / se[varying]
    pvalues += (2 * stats.norm.sf(np.abs(z))).tolist()
    return float(min(1.0, len(pvalues) * min(pvalues)))


STAT_CONFIGS = [(3, 3), (2, 6), (3, 6)]
# (depth, fanout, variant) compared with the reference; d=3, s=6 (the default) nearly fills this
# small graph, so it is checked once, with k=16
BULK_VARIANTS = [(d, s, v) for d, s in STAT_CONFIGS[:2] for v in ("k1", "k16", "keys")] + [
    (3, 6, "k16")
]


@pytest.fixture(scope="module")
def stat_graph() -> SamplingGraph:
    return build_sampling_graph(STAT_GRAPH, 40)


@pytest.fixture(scope="module")
def reference_draws(stat_graph: SamplingGraph) -> dict[tuple[int, int, bool], tuple]:
    wanted = [(d, s, False) for d, s in STAT_CONFIGS] + [(3, 3, True)]
    return {
        (d, s, replace): draw_subgraphs(
            ReferenceSampler(stat_graph, d, s, 256, replace=replace), 1500, seed=100
        )
        for d, s, replace in wanted
    }


@pytest.mark.parametrize("depth,fanout,variant", BULK_VARIANTS)
def test_bulk_matches_reference_distribution(
    stat_graph: SamplingGraph, reference_draws: dict, depth: int, fanout: int, variant: str
) -> None:
    k = 16 if variant == "k16" else 1
    draw = "keys" if variant == "keys" else "floyd"
    bulk = BulkSampler(stat_graph, depth, fanout, 256, k=k, draw=draw)
    p = same_distribution_pvalue(
        draw_subgraphs(bulk, 1500, seed=200), reference_draws[(depth, fanout, False)]
    )
    assert p > SAME_ALPHA


def test_bulk_k1_matches_k16(stat_graph: SamplingGraph) -> None:
    one = draw_subgraphs(BulkSampler(stat_graph, 3, 3, 256, k=1), 1500, seed=300)
    sixteen = draw_subgraphs(BulkSampler(stat_graph, 3, 3, 256, k=16), 1500, seed=301)
    assert same_distribution_pvalue(one, sixteen) > SAME_ALPHA


def test_bulk_with_replacement_matches_reference_with_replacement(
    stat_graph: SamplingGraph, reference_draws: dict
) -> None:
    bulk = BulkSampler(stat_graph, 3, 3, 256, k=4, replace=True)
    p = same_distribution_pvalue(
        draw_subgraphs(bulk, 1500, seed=400), reference_draws[(3, 3, True)]
    )
    assert p > SAME_ALPHA


@pytest.mark.parametrize(
    "broken",
    [
        {"depth": 3, "fanout": 3, "replace": True},  # with replacement
        {"depth": 3, "fanout": 2, "replace": False},  # fanout off by one (low)
        {"depth": 3, "fanout": 4, "replace": False},  # fanout off by one (high)
        {"depth": 2, "fanout": 3, "replace": False},  # a level missing
    ],
)
def test_comparison_rejects_broken_samplers(
    stat_graph: SamplingGraph, reference_draws: dict, broken: dict
) -> None:
    """The comparison above has the power to catch the classic sampler bugs."""
    bad = BulkSampler(stat_graph, broken["depth"], broken["fanout"], 256, replace=broken["replace"])
    p = same_distribution_pvalue(
        draw_subgraphs(bad, 1500, seed=500), reference_draws[(3, 3, False)]
    )
    assert p < REJECT_ALPHA


@pytest.mark.parametrize("name", ["reference", "bulk", "bulk_keys"])
@pytest.mark.parametrize("replace", [False, True])
def test_level_one_inclusion_probability(name: str, replace: bool) -> None:
    """At one level each of D neighbours is drawn with probability s/D (1-(1-1/D)^s with
    replacement), within its binomial interval; without replacement exactly s are drawn."""
    degree, fanout, repeats = 11, 6, 3000
    edge_index = torch.stack([torch.zeros(degree, dtype=torch.int64), torch.arange(1, degree + 1)])
    graph = build_sampling_graph(edge_index, degree + 1)
    if name == "reference":
        sampler = ReferenceSampler(graph, 1, fanout, 500, replace=replace)
    else:
        draw = "keys" if name == "bulk_keys" else "floyd"
        sampler = BulkSampler(graph, 1, fanout, 500, k=6, replace=replace, draw=draw)
    batches = sample_all(sampler, torch.zeros(repeats, dtype=torch.int64), seed=9)
    sizes = torch.cat([torch.bincount(bt.batch, minlength=bt.num_subgraphs) for bt in batches])
    counts = sum(torch.bincount(bt.node_ids, minlength=degree + 1) for bt in batches).numpy()
    assert counts[0] == repeats
    if replace:
        expected = 1 - (1 - 1 / degree) ** fanout
        assert sizes.min() < 1 + fanout  # repeats happen
    else:
        expected = fanout / degree
        assert torch.all(sizes == 1 + fanout)
    for c in counts[1:]:
        assert stats.binomtest(int(c), repeats, expected).pvalue > SAME_ALPHA / degree


# ------------------------------------------------------------------------------------------
# pyg adapter
# ------------------------------------------------------------------------------------------


def _torch_sparse_available() -> bool:
    try:
        import torch_sparse  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(_torch_sparse_available(), reason="torch-sparse is installed")
def test_pyg_sampler_without_torch_sparse_is_a_clear_error() -> None:
    graph = build_sampling_graph(random_graph(10, 1, 2, seed=0), 10)
    with pytest.raises(TrackGNNError, match="torch-sparse"):
        make_sampler("pyg", graph)


def fake_ego_op(graph: SamplingGraph):
    """Stand-in for torch_sparse.ego_k_hop_sample_adj with full fanout (deterministic): same
    return contract (rowptr, col, n_id, e_id, ptr, root_n_id) as the C++ kernel."""
    rowptr_a, col_a = graph.rowptr.numpy(), graph.col.numpy()

    def op(rowptr, col, idx, depth, num_neighbors, replace):
        rowptrs, cols, n_ids, e_ids, ptr, root_n_id = [0], [], [], [], [0], []
        for root in idx.tolist():
            frontier, seen = [root], {root}
            for _ in range(depth):
                nxt = []
                for v in frontier:
                    nxt += col_a[rowptr_a[v] : rowptr_a[v + 1]].tolist()
                seen.update(nxt)
                frontier = nxt
            nodes = sorted(seen)
            local = {v: i + ptr[-1] for i, v in enumerate(nodes)}
            for v in nodes:
                for e in range(rowptr_a[v], rowptr_a[v + 1]):
                    if col_a[e] in local:
                        cols.append(local[col_a[e]])
                        e_ids.append(e)
                rowptrs.append(len(cols))
            root_n_id.append(local[root])
            n_ids += nodes
            ptr.append(ptr[-1] + len(nodes))
        as_t = lambda x: torch.tensor(x, dtype=torch.int64)  # noqa: E731
        return tuple(as_t(x) for x in (rowptrs, cols, n_ids, e_ids, ptr, root_n_id))

    return op


@pytest.mark.parametrize("simple", [True, False])
def test_pyg_adapter_converts_kernel_output(simple: bool) -> None:
    edge_index, n = (random_graph(30, 1, 3, seed=4), 30) if simple else quirky_graph()
    graph = build_sampling_graph(edge_index, n)
    assert graph.simple == simple
    fanout = int(graph.degree.max())
    pyg = PygSampler(graph, 2, fanout, 8, op=fake_ego_op(graph))
    ref = ReferenceSampler(graph, 2, fanout, 8)
    roots = torch.arange(n)
    for p, r in zip(sample_all(pyg, roots, 0), sample_all(ref, roots, 0), strict=True):
        check_batch(graph, p, r.roots, depth=2)
        assert torch.equal(p.node_ids, r.node_ids)
        n_edges = graph.num_edges
        assert torch.equal(canonical_edges(p, n_edges), canonical_edges(r, n_edges))


@pytest.mark.skipif(not _torch_sparse_available(), reason="torch-sparse not installed")
def test_pyg_with_replacement_matches_reference(
    stat_graph: SamplingGraph, reference_draws: dict
) -> None:
    pyg = PygSampler(stat_graph, 3, 3, 256, replace=True)
    (bt,) = sample_all(pyg, torch.arange(40), 0)
    check_batch(stat_graph, bt, torch.arange(40), depth=3)
    p = same_distribution_pvalue(draw_subgraphs(pyg, 1500, seed=600), reference_draws[(3, 3, True)])
    assert p > SAME_ALPHA


# ------------------------------------------------------------------------------------------
# epoch iterator, containers, validation
# ------------------------------------------------------------------------------------------


def test_epoch_roots_cover_every_vertex_once_in_a_new_order() -> None:
    generator = torch.Generator().manual_seed(0)
    first = list(epoch_roots(1000, 256, generator))
    second = list(epoch_roots(1000, 256, generator))
    assert [r.numel() for r in first] == [256, 256, 256, 232]
    for epoch in (first, second):
        assert torch.equal(torch.cat(epoch).sort().values, torch.arange(1000))
    assert not torch.equal(torch.cat(first), torch.cat(second))
    grouped = list(epoch_roots(1000, 256, generator, batches_per_draw=3, drop_last=True))
    assert [r.numel() for r in grouped] == [768]
    ids = torch.tensor([5, 9, 11, 40])
    picked = torch.cat(list(epoch_roots(ids, 3, generator)))
    assert torch.equal(picked.sort().values, ids)


def test_draw_roots_is_a_prefix_of_the_epoch_order() -> None:
    ids = torch.arange(100, 200)
    drawn = draw_roots(ids, 30, torch.Generator().manual_seed(4))
    whole = torch.cat(list(epoch_roots(ids, 7, torch.Generator().manual_seed(4))))
    assert torch.equal(drawn, whole[:30]) and len(drawn.unique()) == 30
    generator = torch.Generator().manual_seed(0)
    assert draw_roots(5, 0, generator).numel() == 0
    assert torch.equal(draw_roots(5, None, generator).sort().values, torch.arange(5))
    for bad in (-1, 101, 2.0, True):
        with pytest.raises(TrackGNNError, match="count"):
            draw_roots(ids, bad, generator)
    for bad_candidates in (torch.zeros(3), torch.zeros(2, 2, dtype=torch.int64), -1):
        with pytest.raises(TrackGNNError, match="candidates"):
            draw_roots(bad_candidates, None, generator)


def test_sampling_graph_views() -> None:
    edge_index = torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 3, 3, 3]])
    graph = build_sampling_graph(edge_index, 5)
    # A: 0-1 (reciprocal pair, one entry each way), 1-2, 2-3; no self-loop; 4 isolated
    assert graph.degree.tolist() == [1, 2, 2, 1, 0]
    assert graph.col.tolist() == [1, 0, 2, 1, 3, 2]
    assert graph.fwd_eid.tolist() == [0, 1, 2, -1, 3, -1]
    assert not graph.simple
    assert graph.out_eid.tolist() == [0, 1, 2, 3, 4, 5]
    assert graph.out_rowptr.tolist() == [0, 1, 3, 5, 6, 6]
    assert graph.to("cpu") is graph


def test_subgraph_batch_and_sampling_graph_move_every_tensor() -> None:
    """``to`` moves every tensor (the meta device: a real device change without a GPU)."""
    graph = build_sampling_graph(random_graph(20, 1, 3, seed=2), 20)
    (bt,) = sample_all(BulkSampler(graph, 2, 3, 20), torch.arange(20), 0)
    for original, moved in ((bt, bt.to("meta")), (graph, graph.to("meta"))):
        tensors = {k: v for k, v in vars(original).items() if isinstance(v, torch.Tensor)}
        assert tensors  # the check below covers something
        for name, tensor in tensors.items():
            copy = getattr(moved, name)
            assert copy.device.type == "meta", name
            assert copy.shape == tensor.shape and copy.dtype == tensor.dtype, name
    assert bt.to("meta").num_subgraphs == 20 and bt.node_ids.device.type == "cpu"


@pytest.mark.parametrize(
    "edge_index,num_nodes,message",
    [
        (torch.zeros(3, 4, dtype=torch.int64), 5, "shape"),
        (torch.zeros(2, 4), 5, "integer"),
        (torch.tensor([[0, 1], [1, 5]]), 5, r"\[0, 5\)"),
        (torch.tensor([[0, -1], [1, 2]]), 5, r"\[0, 5\)"),
        ([[0, 1], [1, 2]], 5, "torch.Tensor"),
        (torch.tensor([[0], [1]]), -2, "num_nodes"),
    ],
)
def test_bad_graph_input_is_rejected(edge_index, num_nodes, message) -> None:
    with pytest.raises(TrackGNNError, match=message):
        build_sampling_graph(edge_index, num_nodes)


def test_bad_sampler_input_is_rejected() -> None:
    graph = build_sampling_graph(random_graph(10, 1, 2, seed=0), 10)
    with pytest.raises(TrackGNNError, match="unknown sampler"):
        make_sampler("fast", graph)
    with pytest.raises(TrackGNNError, match="fanout"):
        make_sampler("bulk", graph, fanout=0)
    with pytest.raises(TrackGNNError, match="depth"):
        make_sampler("reference", graph, depth=1.5)
    with pytest.raises(TrackGNNError, match="draw"):
        make_sampler("bulk", graph, draw="gumbel")
    sampler = make_sampler("bulk", graph)
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(TrackGNNError, match="lie in"):
        sampler.sample(torch.tensor([0, 10]), generator)
    with pytest.raises(TrackGNNError, match="integer"):
        sampler.sample(torch.tensor([0.0]), generator)
    with pytest.raises(TrackGNNError, match="1-D"):
        sampler.sample(torch.zeros(2, 2, dtype=torch.int64), generator)
    with pytest.raises(TrackGNNError, match="generator"):
        sampler.sample(torch.tensor([0]), 0)
    assert sampler.sample(torch.tensor([], dtype=torch.int64), generator) == []
