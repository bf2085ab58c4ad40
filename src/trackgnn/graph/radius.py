"""Fixed-radius neighbour graphs in an embedding space, capped at ``k_max`` neighbours per hit.

Three backends return the same edge set:

* ``kdtree``: SciPy's k-d tree (``cKDTree``, Bentley, "Multidimensional binary search trees
  used for associative searching", CACM 1975) on the CPU. Each query visits only the tree cells
  within ``radius``, so the search costs about ``O(N log N)`` for the few-dimensional learned
  embeddings of the pipeline instead of the ``O(N^2)`` of a flat index, and it is exact.
* ``faiss``: an exact flat (brute-force) ``IndexFlatL2``, on the GPU when CUDA and faiss GPU
  support are both present. ``O(N^2)``: the fastest choice on a GPU, the baseline on a CPU.
* ``torch``: brute-force chunked ``cdist`` (runs on CUDA too); the reference.

``auto`` (the default) is ``faiss`` when the embedding is on a CUDA device and faiss has GPU
support, ``kdtree`` otherwise.

All backends only *propose* candidates: each query hit's ``k_max`` nearest plus a few spare
(within a slightly enlarged radius for the k-d tree), from one bounded-size chunk of queries at
a time. The candidates are then refined by one shared exact step that recomputes their distances
elementwise in float32, applies the radius and keeps the ``k_max`` nearest (ties by hit index).
FAISS (``|a|^2 + |b|^2 - 2ab`` in float32), ``cdist`` and the k-d tree (float64) round
differently, so without this shared step pairs at the radius or at the cap could differ between
backends; with it, all are exact and give identical graphs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from trackgnn.errors import ConfigError

#: Extra candidates per query beyond ``k_max`` (and self) so that rounding in the candidate
#: search cannot push a true k-nearest neighbour out of the candidate list.
SPARE_CANDIDATES = 8
#: Relative enlargement of the radius the k-d tree searches: its float64 distances and the
#: float32 ones of the refinement differ in the last bits, so a pair exactly at the radius is
#: proposed and then decided by the refinement.
KDTREE_RADIUS_SLACK = 1e-4
#: Elements of the ``[queries, hits]`` distance block of the torch backend (512 MiB of float32).
TORCH_BLOCK_ELEMENTS = 1 << 27
#: Queries refined at once: the ``[queries, candidates, dim]`` differences of a block stay in
#: the CPU caches (the refinement is memory-bound).
REFINE_BLOCK = 8192

Backend = Literal["auto", "kdtree", "faiss", "torch"]
BACKENDS: tuple[str, ...] = ("auto", "kdtree", "faiss", "torch")
#: Sort key of a candidate that is not kept (no hit, the query itself, or beyond the radius).
_DROPPED = torch.iinfo(torch.int64).max


def faiss_gpu_available() -> bool:
    """True when faiss has GPU support and torch sees a CUDA device."""
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "StandardGpuResources") and torch.cuda.is_available()


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend: ``auto`` is a GPU flat FAISS index on CUDA, the k-d tree otherwise."""
    if backend not in BACKENDS:
        raise ConfigError(f"graph.backend must be one of {', '.join(BACKENDS)}, not '{backend}'")
    if backend == "auto":
        return "faiss" if device.type == "cuda" and faiss_gpu_available() else "kdtree"
    return backend


def _refine_block(
    emb: Tensor, queries: Tensor, candidates: Tensor, radius: float, k_max: int
) -> tuple[Tensor, Tensor]:
    valid = (candidates >= 0) & (candidates != queries[:, None])
    safe = candidates.clamp(min=0)
    # Elementwise differences: the same arithmetic whichever backend proposed the candidates.
    dist2 = (emb[safe] - emb[queries][:, None, :]).square().sum(-1)
    keep = valid & (dist2 <= radius * radius)
    # Lexicographic order (distance, hit index) as one int64 key: the bit patterns of
    # non-negative float32 numbers order like the numbers, and hit indices fit in 32 bits.
    key = (dist2.contiguous().view(torch.int32).to(torch.int64) << 32) | safe
    key = torch.where(keep, key, _DROPPED)
    key = torch.sort(key, dim=1).values[:, :k_max]
    kept = key != _DROPPED
    dst = (key & 0xFFFFFFFF)[kept]
    src = queries[:, None].expand_as(kept)[kept]
    return src, dst


def _refine(
    emb: Tensor, queries: Tensor, candidates: Tensor, radius: float, k_max: int
) -> tuple[Tensor, Tensor]:
    """Exact radius + top-k selection of candidate neighbours.

    Args:
        emb: ``[N, D]`` embedding.
        queries: ``[Q]`` query hit indices.
        candidates: ``[Q, K]`` candidate neighbour indices (``-1`` = no candidate; no index
            twice in a row).
        radius: keep candidates at squared float32 distance ``<= radius**2``.
        k_max: keep at most this many per query: the nearest, ties by smaller hit index.
    Returns:
        ``(src, dst)`` of the kept directed pairs, query first, grouped by query in the order
        of ``queries``, each query's neighbours nearest first.
    """
    if emb.shape[0] >= 1 << 31:
        raise ConfigError(f"radius search supports fewer than 2^31 hits, not {emb.shape[0]}")
    sources, targets = [], []
    for start in range(0, len(queries), REFINE_BLOCK):
        src, dst = _refine_block(
            emb,
            queries[start : start + REFINE_BLOCK],
            candidates[start : start + REFINE_BLOCK],
            radius,
            k_max,
        )
        sources.append(src)
        targets.append(dst)
    if not sources:
        empty = torch.zeros(0, dtype=torch.long, device=emb.device)
        return empty, empty
    return torch.cat(sources), torch.cat(targets)


def _faiss_index(dim: int, device: torch.device):
    import faiss

    index = faiss.IndexFlatL2(dim)
    if device.type == "cuda" and faiss_gpu_available():
        resources = faiss.StandardGpuResources()
        gpu = device.index if device.index is not None else torch.cuda.current_device()
        index = faiss.index_cpu_to_gpu(resources, gpu, index)
        index._trackgnn_resources = resources  # keep the GPU resources alive with the index
    return index


def _knn_chunks_faiss(
    emb: Tensor, k: int, chunk_size: int, radius: float | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(queries, neighbours [Q, k])`` from an exact flat FAISS index, chunk by chunk.

    ``radius`` is unused: the flat index returns the ``k`` nearest whatever their distance.
    """
    points = np.ascontiguousarray(emb.to("cpu", torch.float32).numpy())
    index = _faiss_index(points.shape[1], emb.device)
    index.add(points)
    for start in range(0, len(points), chunk_size):
        _, neighbours = index.search(points[start : start + chunk_size], k)
        queries = torch.arange(start, start + len(neighbours), device=emb.device)
        yield queries, torch.from_numpy(neighbours).to(emb.device)


def _knn_chunks_kdtree(
    emb: Tensor, k: int, chunk_size: int, radius: float | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(queries, neighbours [Q, k])`` from a k-d tree, ``-1`` where there are fewer.

    With ``radius``, only neighbours within ``radius * (1 + KDTREE_RADIUS_SLACK)`` are returned
    (the tree prunes every cell farther away: this bound is what makes the search fast).
    Queries use ``torch.get_num_threads()`` worker threads.
    """
    from scipy.spatial import cKDTree

    points = np.ascontiguousarray(emb.to("cpu", torch.float32).numpy())
    tree = cKDTree(points)
    bound = np.inf if radius is None else radius * (1.0 + KDTREE_RADIUS_SLACK)
    workers = max(1, torch.get_num_threads())
    for start in range(0, len(points), chunk_size):
        _, neighbours = tree.query(
            points[start : start + chunk_size], k=k, distance_upper_bound=bound, workers=workers
        )
        neighbours = neighbours.reshape(-1, k)  # k == 1 gives a 1-D result
        neighbours[neighbours >= len(points)] = -1  # "no neighbour" is reported as N
        queries = torch.arange(start, start + len(neighbours), device=emb.device)
        yield queries, torch.from_numpy(neighbours.astype(np.int64)).to(emb.device)


def _torch_chunk_size(chunk_size: int, n_points: int) -> int:
    """Queries per cdist block so the ``[queries, N]`` block stays under TORCH_BLOCK_ELEMENTS."""
    return max(1, min(chunk_size, TORCH_BLOCK_ELEMENTS // max(n_points, 1)))


def _knn_chunks_torch(
    emb: Tensor, k: int, chunk_size: int, radius: float | None = None
) -> Iterator[tuple[Tensor, Tensor]]:
    """Brute-force twin of :func:`_knn_chunks_faiss`: chunked ``cdist`` + ``topk``."""
    block = _torch_chunk_size(chunk_size, len(emb))
    for start in range(0, len(emb), block):
        queries = torch.arange(start, min(start + block, len(emb)), device=emb.device)
        dist = torch.cdist(emb[queries], emb)
        yield queries, torch.topk(dist, k, dim=1, largest=False).indices


_CHUNKS = {"kdtree": _knn_chunks_kdtree, "faiss": _knn_chunks_faiss, "torch": _knn_chunks_torch}


def knn(emb: Tensor, k: int, chunk_size: int = 100_000, backend: Backend = "auto") -> Tensor:
    """Indices ``[N, k]`` of each hit's ``k`` nearest hits (itself included), exact search.

    Among equidistant hits the backends may choose differently.
    """
    emb = emb.detach().to(torch.float32)
    k = min(k, len(emb))
    chunks = _CHUNKS[resolve_backend(backend, emb.device)]
    parts = [neighbours for _, neighbours in chunks(emb, k, chunk_size)]
    if not parts:
        return torch.zeros((0, k), dtype=torch.long, device=emb.device)
    return torch.cat(parts)


def radius_pairs(
    emb: Tensor,
    radius: float,
    k_max: int,
    chunk_size: int = 100_000,
    backend: Backend = "auto",
) -> tuple[Tensor, Tensor]:
    """Directed pairs ``(i, j)``: ``j`` among the ``k_max`` nearest hits of ``i`` within ``radius``.

    The pair list of each query is exact (see module docstring), the same for every backend.
    Self pairs are excluded. Memory is bounded by ``chunk_size`` queries at a time.

    Args:
        emb: ``[N, D]`` embedding (any device; the k-d tree searches on the CPU).
        radius: neighbourhood radius (Euclidean).
        k_max: neighbours kept per query hit.
        chunk_size: queries per search chunk.
        backend: ``auto``, ``kdtree``, ``faiss`` or ``torch`` (see the module docstring).
    Returns:
        ``(src, dst)``, each ``[P]`` int64 on ``emb``'s device.
    """
    concrete = resolve_backend(backend, emb.device)
    if radius <= 0 or k_max < 1 or chunk_size < 1:
        raise ConfigError(
            f"radius search needs radius > 0, k_max >= 1, chunk_size >= 1 "
            f"(got {radius}, {k_max}, {chunk_size})"
        )
    emb = emb.detach().to(torch.float32)
    n_points = emb.shape[0]
    empty = torch.zeros(0, dtype=torch.long, device=emb.device)
    if n_points < 2:
        return empty, empty
    k_search = min(k_max + 1 + SPARE_CANDIDATES, n_points)
    sources, targets = [], []
    for queries, candidates in _CHUNKS[concrete](emb, k_search, chunk_size, radius):
        src, dst = _refine(emb, queries, candidates, radius, k_max)
        sources.append(src)
        targets.append(dst)
    return torch.cat(sources), torch.cat(targets)


def undirected_edges(src: Tensor, dst: Tensor, r: Tensor) -> Tensor:
    """Unique undirected edges ``[2, E]`` oriented inner -> outer (smaller r first; ties by index).

    Each unordered pair appears once, whatever orientation(s) it had in ``(src, dst)``; the
    result is sorted by (source, target), so it is deterministic.
    """
    n_points = r.shape[0]
    if src.numel() == 0:
        return torch.zeros((2, 0), dtype=torch.long, device=src.device)
    r_src, r_dst = r[src], r[dst]
    flip = (r_src > r_dst) | ((r_src == r_dst) & (src > dst))
    inner = torch.where(flip, dst, src)
    outer = torch.where(flip, src, dst)
    keys = torch.unique(inner * n_points + outer)
    return torch.stack([keys // n_points, keys % n_points])


def radius_graph(
    emb: Tensor,
    r: Tensor,
    radius: float,
    k_max: int,
    chunk_size: int = 100_000,
    backend: Backend = "auto",
) -> Tensor:
    """The event's candidate graph: undirected radius-``k_max`` neighbours, oriented by ``r``.

    An edge exists when either hit is among the other's ``k_max`` nearest within ``radius``
    (so a hit can have more than ``k_max`` edges in the union).
    """
    src, dst = radius_pairs(emb, radius, k_max, chunk_size, backend)
    return undirected_edges(src, dst, r.to(emb.device))
