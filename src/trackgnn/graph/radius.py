"""Fixed-radius neighbour graphs in an embedding space, capped at ``k_max`` neighbours per hit.

Two backends return the same edge set: FAISS (a GPU index when CUDA and faiss GPU support are
both present, an exact CPU ``IndexFlatL2`` otherwise) and a brute-force torch search (chunked
``cdist``; runs on CUDA too). Both only *propose* candidates: each query hit's ``k_max`` nearest
plus a few spare, from one bounded-size chunk of queries at a time. The candidates are then
refined by one shared exact step that recomputes their distances elementwise, applies the radius
and keeps the ``k_max`` nearest (ties by hit index). The BLAS-style distances of FAISS
(``|a|^2 + |b|^2 - 2ab``) and of ``cdist`` differ in the last bits, so without this shared step
pairs at the radius or at the cap could differ between backends; with it, both are exact.
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
#: Elements of the ``[queries, hits]`` distance block of the torch backend (512 MiB of float32).
TORCH_BLOCK_ELEMENTS = 1 << 27

Backend = Literal["faiss", "torch"]


def faiss_gpu_available() -> bool:
    """True when faiss has GPU support and torch sees a CUDA device."""
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "StandardGpuResources") and torch.cuda.is_available()


def _refine(
    emb: Tensor, queries: Tensor, candidates: Tensor, radius: float, k_max: int
) -> tuple[Tensor, Tensor]:
    """Exact radius + top-k selection of candidate neighbours.

    Args:
        emb: ``[N, D]`` embedding.
        queries: ``[Q]`` query hit indices.
        candidates: ``[Q, K]`` candidate neighbour indices (``-1`` = no candidate).
    Returns:
        ``(src, dst)`` of the kept directed pairs, query first.
    """
    valid = (candidates >= 0) & (candidates != queries[:, None])
    safe = candidates.clamp(min=0)
    # Elementwise differences: the same arithmetic whichever backend proposed the candidates.
    dist2 = (emb[safe] - emb[queries][:, None, :]).square().sum(-1)
    dist2 = torch.where(valid & (dist2 <= radius * radius), dist2, torch.inf)
    # Lexicographic order (distance, hit index): stable sort by index, then by distance.
    order = torch.sort(torch.where(valid, safe, emb.shape[0]), dim=1, stable=True).indices
    dist2 = dist2.gather(1, order)
    safe = safe.gather(1, order)
    order = torch.sort(dist2, dim=1, stable=True).indices[:, :k_max]
    keep = torch.isfinite(dist2.gather(1, order))
    dst = safe.gather(1, order)[keep]
    src = queries[:, None].expand_as(keep)[keep]
    return src, dst


def _faiss_index(dim: int, device: torch.device):
    import faiss

    index = faiss.IndexFlatL2(dim)
    if device.type == "cuda" and faiss_gpu_available():
        resources = faiss.StandardGpuResources()
        gpu = device.index if device.index is not None else torch.cuda.current_device()
        index = faiss.index_cpu_to_gpu(resources, gpu, index)
        index._trackgnn_resources = resources  # keep the GPU resources alive with the index
    return index


def _knn_chunks_faiss(emb: Tensor, k: int, chunk_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(queries, neighbours [Q, k])`` from an exact flat FAISS index, chunk by chunk."""
    points = np.ascontiguousarray(emb.to("cpu", torch.float32).numpy())
    index = _faiss_index(points.shape[1], emb.device)
    index.add(points)
    for start in range(0, len(points), chunk_size):
        _, neighbours = index.search(points[start : start + chunk_size], k)
        queries = torch.arange(start, start + len(neighbours), device=emb.device)
        yield queries, torch.from_numpy(neighbours).to(emb.device)


def _torch_chunk_size(chunk_size: int, n_points: int) -> int:
    """Queries per cdist block so the ``[queries, N]`` block stays under TORCH_BLOCK_ELEMENTS."""
    return max(1, min(chunk_size, TORCH_BLOCK_ELEMENTS // max(n_points, 1)))


def _knn_chunks_torch(emb: Tensor, k: int, chunk_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Brute-force twin of :func:`_knn_chunks_faiss`: chunked ``cdist`` + ``topk``."""
    block = _torch_chunk_size(chunk_size, len(emb))
    for start in range(0, len(emb), block):
        queries = torch.arange(start, min(start + block, len(emb)), device=emb.device)
        dist = torch.cdist(emb[queries], emb)
        yield queries, torch.topk(dist, k, dim=1, largest=False).indices


def knn(emb: Tensor, k: int, chunk_size: int = 100_000, backend: Backend = "faiss") -> Tensor:
    """Indices ``[N, k]`` of each hit's ``k`` nearest hits (itself included), exact search."""
    emb = emb.detach().to(torch.float32)
    k = min(k, len(emb))
    chunks = _knn_chunks_faiss if backend == "faiss" else _knn_chunks_torch
    parts = [neighbours for _, neighbours in chunks(emb, k, chunk_size)]
    if not parts:
        return torch.zeros((0, k), dtype=torch.long, device=emb.device)
    return torch.cat(parts)


def radius_pairs(
    emb: Tensor,
    radius: float,
    k_max: int,
    chunk_size: int = 100_000,
    backend: Backend = "faiss",
) -> tuple[Tensor, Tensor]:
    """Directed pairs ``(i, j)``: ``j`` among the ``k_max`` nearest hits of ``i`` within ``radius``.

    The pair list of each query is exact (see module docstring). Self pairs are excluded.
    Memory is bounded by ``chunk_size`` queries at a time.
    """
    if backend not in ("faiss", "torch"):
        raise ConfigError(f"graph.backend must be faiss or torch, not '{backend}'")
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
    chunks = _knn_chunks_faiss if backend == "faiss" else _knn_chunks_torch
    k_search = min(k_max + 1 + SPARE_CANDIDATES, n_points)
    sources, targets = [], []
    for queries, candidates in chunks(emb, k_search, chunk_size):
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
    backend: Backend = "faiss",
) -> Tensor:
    """The event's candidate graph: undirected radius-``k_max`` neighbours, oriented by ``r``.

    An edge exists when either hit is among the other's ``k_max`` nearest within ``radius``
    (so a hit can have more than ``k_max`` edges in the union).
    """
    src, dst = radius_pairs(emb, radius, k_max, chunk_size, backend)
    return undirected_edges(src, dst, r.to(emb.device))
