"""Radius graphs: k-d tree, FAISS and brute force give the exact capped radius graph; edges."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import trackgnn.graph.radius as radius_module
from trackgnn.errors import ConfigError
from trackgnn.graph.radius import knn, radius_graph, radius_pairs, undirected_edges


def clustered_points(n_points: int, dim: int, seed: int) -> torch.Tensor:
    """Points in tight clusters (dense: the k cap binds) plus a uniform background (sparse)."""
    gen = torch.Generator().manual_seed(seed)
    n_clustered = n_points * 2 // 3
    centres = torch.rand(n_clustered // 20, dim, generator=gen)
    members = centres[torch.randint(0, len(centres), (n_clustered,), generator=gen)]
    clustered = members + 0.02 * torch.randn(n_clustered, dim, generator=gen)
    background = torch.rand(n_points - n_clustered, dim, generator=gen)
    return torch.cat([clustered, background])[torch.randperm(n_points, generator=gen)]


def reference_pairs(emb: torch.Tensor, radius: float, k_max: int) -> set[tuple[int, int]]:
    """Naive definition in float64: for each hit, its k_max nearest others within the radius."""
    points = emb.double().numpy()
    dist = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(dist, np.inf)
    pairs = set()
    for i, row in enumerate(dist):
        order = np.lexsort((np.arange(len(row)), row))[:k_max]
        pairs.update((i, int(j)) for j in order if row[j] <= radius)
    return pairs


def as_set(src: torch.Tensor, dst: torch.Tensor) -> set[tuple[int, int]]:
    return set(zip(src.tolist(), dst.tolist(), strict=True))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_backend_equals_the_exact_capped_radius_graph(seed):
    emb = clustered_points(1500, 8, seed)
    radius, k_max = 0.08, 12
    expected = reference_pairs(emb, radius, k_max)
    per_hit = np.bincount([i for i, _ in expected], minlength=len(emb))
    assert per_hit.max() == k_max  # the cap binds somewhere ...
    assert (per_hit < k_max).sum() > 100  # ... and the radius elsewhere
    for backend in ("kdtree", "faiss", "torch", "auto"):
        pairs = as_set(*radius_pairs(emb, radius, k_max, chunk_size=400, backend=backend))
        assert pairs == expected, backend


def test_radius_graph_backends_give_the_same_undirected_graph_on_event_embeddings():
    # Embeddings shaped like an event's before training: an untrained network maps hits to a
    # narrow region; at radius 0.1 some hits reach the cap, others have few neighbours.
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8))
    with torch.no_grad():
        emb = net(torch.rand(2500, 8))
    r = torch.rand(2500) * 1000
    graphs = {
        backend: radius_graph(emb, r, 0.1, 16, chunk_size=1000, backend=backend)
        for backend in ("kdtree", "faiss", "torch")
    }
    assert graphs["faiss"].shape[1] > 2 * 2500
    assert torch.equal(graphs["faiss"], graphs["torch"])
    assert torch.equal(graphs["faiss"], graphs["kdtree"])


def test_pairs_exactly_at_the_radius_are_decided_by_the_shared_refinement():
    # Points on a grid: many pairs lie at exactly the radius (within rounding). The k-d tree
    # searches a slightly larger radius in float64; the float32 refinement decides, as for the
    # flat index, so both give the same pairs.
    grid = torch.stack(torch.meshgrid(torch.arange(12.0), torch.arange(12.0), indexing="ij"), -1)
    emb = (grid.reshape(-1, 2) * 0.1).contiguous()
    for radius in (0.1, 0.1 * 2**0.5, 0.2):
        kdtree = as_set(*radius_pairs(emb, radius, 6, backend="kdtree"))
        assert kdtree == as_set(*radius_pairs(emb, radius, 6, backend="torch")), radius
        assert kdtree == as_set(*radius_pairs(emb, radius, 6, backend="faiss")), radius
    # At radius 0.1 the grid neighbours (2 * 12 * 11 pairs, both directions) are at the radius
    # in exact arithmetic: float32 rounding keeps some and drops others.
    kept = len(as_set(*radius_pairs(emb, 0.1, 6, backend="kdtree")))
    assert 0 < kept < 2 * 2 * 12 * 11


def test_refinement_block_boundaries_do_not_change_the_pairs(monkeypatch):
    emb = clustered_points(900, 6, 11)
    full = radius_pairs(emb, 0.1, 10, backend="kdtree")
    monkeypatch.setattr(radius_module, "REFINE_BLOCK", 37)
    blocked = radius_pairs(emb, 0.1, 10, backend="kdtree")
    assert torch.equal(full[0], blocked[0]) and torch.equal(full[1], blocked[1])


def test_chunking_does_not_change_the_graph(monkeypatch):
    emb = clustered_points(800, 4, 5)
    r = torch.rand(800)
    full = radius_graph(emb, r, 0.1, 10, chunk_size=100_000, backend="faiss")
    assert torch.equal(full, radius_graph(emb, r, 0.1, 10, chunk_size=33, backend="faiss"))
    assert torch.equal(full, radius_graph(emb, r, 0.1, 10, chunk_size=33, backend="kdtree"))
    # The torch backend bounds its [queries, N] distance block whatever chunk_size says.
    monkeypatch.setattr(radius_module, "TORCH_BLOCK_ELEMENTS", 800 * 17)
    assert radius_module._torch_chunk_size(100_000, 800) == 17
    assert torch.equal(full, radius_graph(emb, r, 0.1, 10, chunk_size=100_000, backend="torch"))


def test_undirected_edges_are_unique_and_point_inner_to_outer():
    r = torch.tensor([5.0, 1.0, 3.0, 3.0])
    src = torch.tensor([0, 1, 2, 3, 1, 0])
    dst = torch.tensor([1, 0, 3, 2, 2, 0 + 2])
    edges = undirected_edges(src, dst, r)
    # (0,1) and (1,0) -> 1->0; (2,3)/(3,2) tie in r -> 2->3; (1,2) -> 1->2; (0,2) -> 2->0.
    assert sorted(map(tuple, edges.T.tolist())) == [(1, 0), (1, 2), (2, 0), (2, 3)]
    assert (r[edges[0]] <= r[edges[1]]).all()


@pytest.mark.parametrize("backend", ["kdtree", "faiss"])
def test_knn_includes_self_and_matches_brute_force(backend):
    emb = clustered_points(300, 3, 7)
    neighbours = knn(emb, 5, chunk_size=64, backend=backend)
    assert neighbours.shape == (300, 5)
    # Distances (not indices: ties among cluster members may order differently) match.
    dist = torch.cdist(emb.double(), emb.double())
    expected = dist.topk(5, largest=False).values
    found = dist.gather(1, neighbours)
    assert torch.allclose(found.sort(1).values, expected, atol=1e-6)
    assert torch.equal(neighbours[:, 0], torch.arange(300)) or (found[:, 0] < 1e-6).all()


def test_tiny_and_bad_inputs():
    one = torch.zeros(1, 3)
    src, dst = radius_pairs(one, 0.1, 4)
    assert src.numel() == dst.numel() == 0
    assert radius_graph(torch.zeros(0, 3), torch.zeros(0), 0.1, 4).shape == (2, 0)
    # Identical points are each other's neighbours but never their own.
    src, dst = radius_pairs(torch.zeros(3, 2), 0.1, 4, backend="torch")
    assert as_set(src, dst) == {(i, j) for i in range(3) for j in range(3) if i != j}
    with pytest.raises(ConfigError, match="backend"):
        radius_pairs(torch.zeros(3, 2), 0.1, 4, backend="annoy")
    with pytest.raises(ConfigError, match="radius"):
        radius_pairs(torch.zeros(3, 2), -1.0, 4)
