"""ShaDow subgraph samplers for minibatch GNN training (Algorithm 2 of the scaling paper).

Semantics shared by every sampler: for each root vertex a frontier starts at the root; at each of
``depth`` levels every frontier vertex draws ``min(degree, fanout)`` distinct neighbours of the
symmetric adjacency ``A`` uniformly without replacement (or ``fanout`` draws with replacement when
``replace`` is set and the degree exceeds the fanout), and the drawn vertices, repeats included,
form the next frontier; the subgraph is the subgraph of the original directed edges induced by all
touched vertices. The ``b`` subgraphs of a minibatch are disjoint components of one
:class:`SubgraphBatch` carrying global vertex ids and original edge ids.

Roots may come from several events concatenated into one disjoint-union graph
(:func:`trackgnn.graph.csr.concat_graphs`), so one minibatch mixes subgraphs of many events; no
subgraph crosses events because no edge does.

Samplers:

* ``reference``: per-root numpy implementation, the ground truth for tests;
* ``bulk``: the matrix-based sampler of the paper, ``k`` minibatches stacked into one problem, pure
  torch (same code on CPU and CUDA), no Python loop over roots or vertices;
* ``pyg``: adapter to torch-sparse's ``ego_k_hop_sample_adj``, the kernel behind PyG's
  ``ShaDowKHopSampler`` (optional; its without-replacement draw is biased, pytorch_sparse#385).
"""

from __future__ import annotations

import abc
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from trackgnn.errors import TrackGNNError
from trackgnn.graph.csr import SamplingGraph

SAMPLER_NAMES = ("reference", "bulk", "pyg")
DRAW_METHODS = ("floyd", "keys")


@dataclass
class SubgraphBatch:
    """One minibatch: ``num_subgraphs`` disjoint induced subgraphs in one graph.

    Attributes:
        node_ids: global vertex id of each batch node, ``[N]``; grouped by subgraph and sorted
            within it (gather node features with ``x[node_ids]``).
        batch: subgraph index of each node, ``[N]``, non-decreasing.
        edge_index: local (into ``node_ids``) endpoints of each induced original edge, ``[2, M]``,
            in the original direction.
        edge_ids: original edge id of each batch edge, ``[M]`` (gather labels with ``y[edge_ids]``).
        root_pos: position of each subgraph's root in ``node_ids``, ``[num_subgraphs]``.
        num_subgraphs: number of subgraphs (roots) in the batch.
    """

    node_ids: Tensor
    batch: Tensor
    edge_index: Tensor
    edge_ids: Tensor
    root_pos: Tensor
    num_subgraphs: int

    @property
    def num_nodes(self) -> int:
        """Number of batch nodes (a vertex in two subgraphs counts twice)."""
        return int(self.node_ids.numel())

    @property
    def num_edges(self) -> int:
        """Number of batch edges."""
        return int(self.edge_ids.numel())

    @property
    def roots(self) -> Tensor:
        """Global vertex id of each subgraph's root."""
        return self.node_ids.index_select(0, self.root_pos)

    @property
    def edge_batch(self) -> Tensor:
        """Subgraph index of each edge."""
        return self.batch.index_select(0, self.edge_index[0])

    @property
    def root_edge_mask(self) -> Tensor:
        """Bool ``[M]``: the edge touches its subgraph's root (for optional loss up-weighting)."""
        root_of_edge = self.root_pos.index_select(0, self.edge_batch)
        return (self.edge_index[0] == root_of_edge) | (self.edge_index[1] == root_of_edge)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SubgraphBatch:
        """Return a copy with every tensor on ``device``."""
        return SubgraphBatch(
            node_ids=self.node_ids.to(device, non_blocking=non_blocking),
            batch=self.batch.to(device, non_blocking=non_blocking),
            edge_index=self.edge_index.to(device, non_blocking=non_blocking),
            edge_ids=self.edge_ids.to(device, non_blocking=non_blocking),
            root_pos=self.root_pos.to(device, non_blocking=non_blocking),
            num_subgraphs=self.num_subgraphs,
        )


def _check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TrackGNNError(f"ShaDow sampler: {name} must be a positive int, got {value!r}")
    return value


class ShadowSampler(abc.ABC):
    """Common interface: ``sample(roots, generator)`` returns one batch per ``batch_size`` roots.

    Args:
        graph: the sampling graph (:func:`trackgnn.graph.csr.build_sampling_graph`).
        depth: number of expansion levels ``d``.
        fanout: neighbours drawn per frontier vertex ``s``.
        batch_size: roots per minibatch ``b``.
        replace: draw ``fanout`` neighbours with replacement when the degree exceeds ``fanout``
            (the mode in which torch-sparse's draw is unbiased); default without replacement.
    """

    name: ClassVar[str]

    def __init__(
        self,
        graph: SamplingGraph,
        depth: int = 3,
        fanout: int = 6,
        batch_size: int = 256,
        replace: bool = False,
    ) -> None:
        if not isinstance(graph, SamplingGraph):
            raise TrackGNNError(
                f"ShaDow sampler: graph must be a SamplingGraph, got {type(graph).__name__}"
            )
        self.graph = graph
        self.depth = _check_positive_int(depth, "depth")
        self.fanout = _check_positive_int(fanout, "fanout")
        self.batch_size = _check_positive_int(batch_size, "batch_size")
        self.replace = bool(replace)

    def sample(self, roots: Tensor, generator: torch.Generator) -> list[SubgraphBatch]:
        """Sample one subgraph per root; consecutive ``batch_size`` roots form one batch.

        The last batch is smaller when ``len(roots)`` is not a multiple of ``batch_size``. The
        result is a deterministic function of ``roots`` and the generator's state.

        Raises:
            TrackGNNError: roots not a 1-D integer tensor of vertex ids of the graph.
        """
        roots = self._check_roots(roots)
        if not isinstance(generator, torch.Generator):
            raise TrackGNNError(
                f"ShaDow sampler: generator must be a torch.Generator, got "
                f"{type(generator).__name__}"
            )
        if roots.numel() == 0:
            return []
        return self._sample(roots, generator)

    def _check_roots(self, roots: object) -> Tensor:
        if not isinstance(roots, Tensor):
            raise TrackGNNError(
                f"ShaDow sampler: roots must be a tensor, got {type(roots).__name__}"
            )
        if roots.dtype.is_floating_point or roots.dtype.is_complex or roots.dtype == torch.bool:
            raise TrackGNNError(
                f"ShaDow sampler: roots must be integer vertex ids, got {roots.dtype}"
            )
        if roots.dim() != 1:
            raise TrackGNNError(f"ShaDow sampler: roots must be 1-D, got shape {list(roots.shape)}")
        roots = roots.to(torch.int64)
        if roots.numel() and (int(roots.min()) < 0 or int(roots.max()) >= self.graph.num_nodes):
            raise TrackGNNError(
                f"ShaDow sampler: root ids must lie in [0, {self.graph.num_nodes}), got range "
                f"[{int(roots.min())}, {int(roots.max())}]"
            )
        return roots

    @abc.abstractmethod
    def _sample(self, roots: Tensor, generator: torch.Generator) -> list[SubgraphBatch]:
        """Sample validated, non-empty int64 roots."""


# --------------------------------------------------------------------------------------------
# reference: per-root implementation of Algorithm 2
# --------------------------------------------------------------------------------------------


class ReferenceSampler(ShadowSampler):
    """Plain per-root ShaDow sampling in numpy: the ground truth the fast samplers are tested on.

    Each root is expanded level by level; every frontier vertex orders its neighbours by
    independent uniform keys and keeps the ``min(degree, fanout)`` smallest, which is a uniform
    draw without replacement. The induced edges are the out-edges of subgraph vertices whose head
    is marked as a subgraph vertex.
    """

    name = "reference"

    def __init__(
        self,
        graph: SamplingGraph,
        depth: int = 3,
        fanout: int = 6,
        batch_size: int = 256,
        replace: bool = False,
    ) -> None:
        super().__init__(graph, depth, fanout, batch_size, replace)
        cpu = graph.to("cpu")
        self._rowptr = cpu.rowptr.numpy()
        self._col = cpu.col.numpy()
        self._degree = cpu.degree.numpy()
        self._out_rowptr = cpu.out_rowptr.numpy()
        self._out_col = cpu.out_col.numpy()
        self._out_eid = cpu.out_eid.numpy()
        # local position + 1 of each vertex in the current subgraph, 0 = absent; reset after use
        self._mark = np.zeros(graph.num_nodes, dtype=np.int64)

    def _draw(self, frontier: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Next frontier: the neighbours drawn by every vertex of ``frontier``."""
        s = self.fanout
        degree = self._degree[frontier]
        width = int(degree.max())
        if width == 0:
            return frontier[:0]
        if self.replace:
            # vertices with degree <= fanout take every neighbour, as in torch-sparse
            drawn = rng.integers(0, np.maximum(degree, 1)[:, None], size=(frontier.size, s))
            offsets = np.where(degree[:, None] > s, drawn, np.arange(s)[None, :])
        else:
            # the s smallest of independent uniform keys: a uniform draw without replacement
            keys = rng.random((frontier.size, width))
            keys[np.arange(width)[None, :] >= degree[:, None]] = np.inf
            offsets = np.argsort(keys, axis=1, kind="stable")[:, :s]
        take = np.minimum(degree, s)
        keep = np.arange(offsets.shape[1])[None, :] < take[:, None]
        return self._col[(self._rowptr[frontier][:, None] + offsets)[keep]]

    def _sample_root(
        self, root: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
        """Nodes (sorted), local src, local dst, edge ids and local root of one subgraph."""
        frontier = np.array([root], dtype=np.int64)
        touched = [frontier]
        for _ in range(self.depth):
            if frontier.size == 0:
                break
            frontier = self._draw(frontier, rng)
            touched.append(frontier)
        nodes = np.unique(np.concatenate(touched))

        mark = self._mark
        mark[nodes] = np.arange(1, nodes.size + 1)
        starts = self._out_rowptr[nodes]
        counts = self._out_rowptr[nodes + 1] - starts
        src_local = np.repeat(np.arange(nodes.size), counts)
        slot = np.repeat(starts - (np.cumsum(counts) - counts), counts) + np.arange(counts.sum())
        head = mark[self._out_col[slot]]
        mark[nodes] = 0
        inside = head > 0
        root_local = int(np.searchsorted(nodes, root))
        return nodes, src_local[inside], head[inside] - 1, self._out_eid[slot[inside]], root_local

    def _sample(self, roots: Tensor, generator: torch.Generator) -> list[SubgraphBatch]:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        rng = np.random.default_rng(seed)
        roots_np = roots.cpu().numpy()
        out = []
        for start in range(0, roots_np.size, self.batch_size):
            parts = [
                self._sample_root(int(r), rng) for r in roots_np[start : start + self.batch_size]
            ]
            sizes = np.array([p[0].size for p in parts], dtype=np.int64)
            offsets = np.cumsum(sizes) - sizes
            out.append(
                SubgraphBatch(
                    node_ids=torch.from_numpy(np.concatenate([p[0] for p in parts])),
                    batch=torch.from_numpy(np.repeat(np.arange(len(parts)), sizes)),
                    edge_index=torch.from_numpy(
                        np.concatenate(
                            [
                                np.stack([p[1], p[2]]) + off
                                for p, off in zip(parts, offsets, strict=True)
                            ],
                            axis=1,
                        )
                    ),
                    edge_ids=torch.from_numpy(np.concatenate([p[3] for p in parts])),
                    root_pos=torch.from_numpy(np.array([p[4] for p in parts]) + offsets),
                    num_subgraphs=len(parts),
                )
            )
        return out


# --------------------------------------------------------------------------------------------
# bulk: matrix-based sampling of k minibatches at once
# --------------------------------------------------------------------------------------------


_LOW32 = (1 << 32) - 1


@functools.lru_cache(maxsize=64)
def _prime_below(limit: int) -> int:
    """Largest prime below ``limit`` (``limit`` >= 3)."""
    candidate = limit - 1
    while True:
        if candidate % 2 and all(candidate % f for f in range(3, math.isqrt(candidate) + 1, 2)):
            return candidate
        candidate -= 1


class _KeyIndex:
    """Exact lookup of distinct non-negative int64 keys -> their position, O(1) expected per query.

    The keys are bucketed by ``key mod p`` for a prime ``p`` of two to four times their number;
    buckets are contiguous in a bucket-sorted copy. A query compares against its bucket's first key
    and only the rare queries whose bucket holds more keys look further. Pure torch, any device;
    cheaper than a binary search, which costs a log factor of cache misses.
    """

    def __init__(self, keys: Tensor) -> None:
        count = keys.numel()
        self.modulus = _prime_below(max(8, 1 << (2 * count).bit_length()))
        bucket = torch.remainder(keys, self.modulus)
        order = torch.argsort(bucket, stable=True)
        sentinel = torch.full((1,), -1, dtype=torch.int64, device=keys.device)
        # one sentinel past the end: an empty trailing bucket starts there and never matches
        self.keys_by_bucket = torch.cat([keys.index_select(0, order), sentinel])
        self.pos_by_bucket = torch.cat([order, sentinel])
        sizes = torch.bincount(bucket, minlength=self.modulus)
        start = torch.cumsum(sizes, 0) - sizes
        # buckets holding several keys store ~start (negative): one gather tells both
        self.bucket_start = torch.where(sizes > 1, ~start, start)
        self.bucket_size = sizes
        self.max_bucket = int(sizes.max()) if count else 0

    def lookup(self, queries: Tensor) -> Tensor:
        """Position of each query among the keys, or -1 where absent."""
        bucket = torch.remainder(queries, self.modulus)
        encoded = self.bucket_start.index_select(0, bucket)
        first = encoded ^ (encoded >> 63)  # ~x for negative x, x otherwise
        # a key stored at another bucket's slot differs from the query: no bound check needed
        found = self.keys_by_bucket.index_select(0, first) == queries
        result = torch.where(found, self.pos_by_bucket.index_select(0, first), -1)
        if self.max_bucket <= 1:
            return result
        open_idx = ((encoded < 0) & ~found).nonzero().squeeze(1)
        if open_idx.numel() == 0:
            return result
        first = first.index_select(0, open_idx)
        size = self.bucket_size.index_select(0, bucket.index_select(0, open_idx))
        queries = queries.index_select(0, open_idx)
        for j in range(1, self.max_bucket):
            probe = first + j
            hit = (self.keys_by_bucket.index_select(0, probe) == queries) & (size > j)
            result[open_idx[hit]] = self.pos_by_bucket.index_select(0, probe[hit])
            still = ((~hit) & (size > j + 1)).nonzero().squeeze(1)
            if still.numel() == 0:
                break
            open_idx, first, size, queries = (
                t.index_select(0, still) for t in (open_idx, first, size, queries)
            )
        return result


def _expand_segments(values: Tensor, counts: Tensor, total: int, step: int) -> Tensor:
    """Segment j of the output (``counts[j]`` long) runs ``values[j], values[j] + step, ...``.

    ``repeat_interleave(values, counts) + step * (position within the segment)`` computed as
    one cumulative sum of jumps placed at the segment starts: fewer passes over the (large)
    output than a repeat followed by gathers.
    """
    nonempty = (counts > 0).nonzero().squeeze(1)
    seg_counts = counts.index_select(0, nonempty)
    seg_values = values.index_select(0, nonempty)
    seg_starts = torch.cumsum(seg_counts, 0) - seg_counts
    jumps = seg_values.clone()
    # the jump onto segment j undoes where segment j - 1 ended
    jumps[1:] -= seg_values[:-1] + step * (seg_counts[:-1] - 1)
    steps = torch.full((total,), step, dtype=torch.int64, device=counts.device)
    steps.index_put_((seg_starts,), jumps)
    return torch.cumsum(steps, 0)


def _compact(keep: Tensor, *arrays: Tensor) -> list[Tensor]:
    """The entries of each array where ``keep`` is true, in order.

    Each kept entry is scattered to its running count; dropped entries all land in a dump slot
    0 that is cut off. On the CPU this costs about half of ``nonzero`` followed by gathers.
    """
    weight = keep.to(torch.int64)
    target = torch.cumsum(weight, 0)
    count = int(target[-1]) if target.numel() else 0
    target *= weight
    out = []
    for values in arrays:
        buffer = values.new_empty(count + 1)
        buffer.scatter_(0, target, values)
        out.append(buffer[1:])
    return out


def induced_batches(
    graph: SamplingGraph,
    touched_keys: Tensor,
    roots: Tensor,
    batch_size: int,
    mark: Tensor,
) -> list[SubgraphBatch]:
    """Induced subgraphs of the rows of the touched matrix F, cut into minibatches.

    Args:
        graph: the sampling graph (on the device of ``touched_keys``).
        touched_keys: sorted distinct ``row * n + vertex`` keys of F; row ``r`` belongs to root
            ``roots[r]``, which must be among its entries.
        roots: root vertex of each row.
        batch_size: rows per minibatch.
        mark: scratch int64 ``[n]`` of zeros on the same device; left zeroed.

    Row selection: every out-edge of every entry (r, u) of F is a candidate, enumerated from the
    out-CSR, so each induced edge is met once, from its tail. Column selection: the candidate is
    kept when (r, head) is in F. The test is O(1): ``mark[head]`` holds ``(row + 1, local
    position)`` packed in one int64 when the head lies in one row only, so one gather and a
    compare decide; heads that lie in several rows (rare when b roots are spread over a large
    graph, common when k * b roots crowd a small one) are looked up in a hash index of those
    entries.
    """
    n = graph.num_nodes
    device = touched_keys.device
    num_rows = roots.numel()
    count = touched_keys.numel()
    if count >= 2**31:  # local positions are packed into 32 bits
        raise TrackGNNError(
            f"ShaDow sampler: {count} touched vertices in one bulk problem; lower k"
        )
    row = torch.div(touched_keys, n, rounding_mode="floor")
    vertex = touched_keys - row * n

    # minibatch boundaries in F and each entry's position within its minibatch
    row_bounds = torch.arange(0, num_rows + batch_size, batch_size, device=device)
    row_bounds = row_bounds.clamp(max=num_rows)
    node_bounds = torch.searchsorted(row, row_bounds)
    local = torch.arange(count, device=device) - node_bounds.index_select(
        0, torch.div(row, batch_size, rounding_mode="floor")
    )
    # (row + 1, local) in one int64; the +1 keeps every packed value apart from mark's 0 (absent)
    packed = ((row + 1) << 32) | local

    # vertex-major copy of F: one run of entries per vertex, rows ascending within it
    vm_keys, vm_order = torch.sort(vertex * num_rows + row)
    vm_vertex = vertex.index_select(0, vm_order)
    vm_packed = packed.index_select(0, vm_order)
    is_first = torch.ones(count, dtype=torch.bool, device=device)
    is_first[1:] = vm_vertex[1:] != vm_vertex[:-1]
    run_first = is_first.nonzero().squeeze(1)
    run_len = torch.diff(run_first, append=run_first.new_tensor([count]))
    run_vertex = vm_vertex.index_select(0, run_first)
    # a vertex in one row: its packed entry; in several: -(start of its run + 1)
    run_code = torch.where(run_len == 1, vm_packed.index_select(0, run_first), -(run_first + 1))

    mark.index_put_((run_vertex,), run_code)
    try:
        starts = graph.out_rowptr.index_select(0, vertex)
        counts = graph.out_rowptr.index_select(0, vertex + 1) - starts
        total = int(counts.sum())
        # candidates: the out-edge slots of every entry, and the entry's packed (row, local)
        slot = _expand_segments(starts, counts, total, step=1)
        tail = _expand_segments(packed, counts, total, step=0)
        head = graph.out_col.index_select(0, slot)
        code = mark.index_select(0, head)
        inside = ((code ^ tail) >> 32) == 0  # same row; never true for 0 or negative codes
        multi = (code < 0).nonzero().squeeze(1)
        if multi.numel():
            # heads in several rows: exact lookup of (head, tail row) among those entries
            in_multi_run = (run_len > 1).index_select(
                0, torch.cumsum(is_first.to(torch.int64), 0) - 1
            )
            multi_entries = in_multi_run.nonzero().squeeze(1)
            index = _KeyIndex(vm_keys.index_select(0, multi_entries))
            query = head.index_select(0, multi) * num_rows + (
                (tail.index_select(0, multi) >> 32) - 1
            )
            found_at = index.lookup(query)
            found = found_at >= 0
            inside[multi] = found
            code[multi] = vm_packed.index_select(
                0, multi_entries.index_select(0, found_at.clamp(min=0))
            )
    finally:
        mark.index_fill_(0, run_vertex, 0)

    kept_tail, kept_code, kept_slot = _compact(inside, tail, code, slot)
    edge_index = torch.empty((2, kept_tail.numel()), dtype=torch.int64, device=device)
    torch.bitwise_and(kept_tail, _LOW32, out=edge_index[0])
    torch.bitwise_and(kept_code, _LOW32, out=edge_index[1])
    edge_ids = graph.out_eid.index_select(0, kept_slot)
    root_local = local.index_select(
        0,
        torch.searchsorted(touched_keys, torch.arange(num_rows, device=device) * n + roots),
    )
    edge_bounds = torch.searchsorted((kept_tail >> 32) - 1, row_bounds)

    node_b, edge_b, row_b = node_bounds.tolist(), edge_bounds.tolist(), row_bounds.tolist()
    if len(row_b) == 2:
        return [
            SubgraphBatch(vertex, row, edge_index, edge_ids, root_local, num_subgraphs=num_rows)
        ]
    out = []
    for j in range(len(row_b) - 1):  # a loop over the k minibatches
        n0, n1, e0, e1 = node_b[j], node_b[j + 1], edge_b[j], edge_b[j + 1]
        r0, r1 = row_b[j], row_b[j + 1]
        out.append(
            SubgraphBatch(
                node_ids=vertex[n0:n1],
                batch=row[n0:n1] - r0,
                edge_index=edge_index[:, e0:e1].contiguous(),
                edge_ids=edge_ids[e0:e1],
                root_pos=root_local[r0:r1],
                num_subgraphs=r1 - r0,
            )
        )
    return out


class BulkSampler(ShadowSampler):
    """Matrix-based ShaDow sampling of ``k`` minibatches at once (pure torch, CPU or CUDA).

    The ``k * b`` roots are the rows of ``Q`` (one nonzero each). Per level, the frontier is a list
    of (row, vertex) nonzeros; row ``i`` of ``Q A`` is the CSR row of its vertex, whose
    row-normalised values are the uniform probabilities ``1 / degree``; ``min(degree, s)``
    positions are drawn for all rows at once, and each drawn vertex becomes a nonzero of the next
    ``Q`` (repeats kept). The touched matrix ``F`` collects every level's nonzeros as sorted
    ``row * n + vertex`` keys; the induced subgraphs come from row selection (out-edges of touched
    vertices) and column selection (head also in the row of ``F``).

    ``draw`` chooses how the s positions of a row are drawn:

    * ``"floyd"`` (default): Floyd's subset algorithm vectorised over rows, ``O(s^2)`` per row and
      independent of the degree;
    * ``"keys"``: the paper's formulation, materialising ``Q A`` and its row-normalised
      probabilities and keeping the ``s`` largest exponential keys ``log(u) / p`` per row
      (Efraimidis-Spirakis, also valid for weighted rows), via a segmented sort.

    Args:
        k: minibatches per bulk problem; longer root lists are processed ``k * b`` roots at a time.
        device: where the graph lives and sampling runs; the generator must be on this device.
    """

    name = "bulk"

    def __init__(
        self,
        graph: SamplingGraph,
        depth: int = 3,
        fanout: int = 6,
        batch_size: int = 256,
        replace: bool = False,
        k: int = 1,
        device: torch.device | str | None = None,
        draw: str = "floyd",
    ) -> None:
        super().__init__(graph, depth, fanout, batch_size, replace)
        self.k = _check_positive_int(k, "k")
        if draw not in DRAW_METHODS:
            raise TrackGNNError(f"ShaDow sampler: draw must be one of {DRAW_METHODS}, got {draw!r}")
        self.draw = draw
        self.device = torch.device(device) if device is not None else graph.device
        self.graph = graph.to(self.device)
        # scratch for the induced-edge test, zero between calls (so a sampler is not thread-safe)
        self._mark = torch.zeros(graph.num_nodes, dtype=torch.int64, device=self.device)
        if graph.num_nodes * (self.k * self.batch_size) >= 2**62:
            raise TrackGNNError("ShaDow sampler: num_nodes * k * batch_size overflows int64 keys")

    def _sample(self, roots: Tensor, generator: torch.Generator) -> list[SubgraphBatch]:
        if generator.device.type != self.device.type:
            raise TrackGNNError(
                f"ShaDow sampler: generator is on {generator.device}, sampler on {self.device}"
            )
        roots = roots.to(self.device)
        group = self.k * self.batch_size
        out: list[SubgraphBatch] = []
        # a loop over groups of k minibatches, not over roots
        for start in range(0, roots.numel(), group):
            out.extend(self._sample_group(roots[start : start + group], generator))
        return out

    def _draw_offsets(self, degree: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Offsets ``[f, s]`` into each frontier vertex's CSR row and their validity mask."""
        s = self.fanout
        device = degree.device
        slots = torch.arange(s, device=device)
        deg = degree[:, None]
        u = torch.rand((degree.numel(), s), generator=generator, device=device, dtype=torch.float64)
        if self.replace:
            offsets = torch.minimum((u * deg).to(torch.int64), deg - 1)
        else:
            # Floyd: for j = deg-s .. deg-1 draw t uniform in [0, j]; if t was already chosen take
            # j instead. Every s-subset of [0, deg) is equally likely.
            top = deg - s + slots
            offsets = torch.minimum((u * (top + 1)).to(torch.int64), top)
            for i in range(1, s):
                repeat = (offsets[:, :i] == offsets[:, i : i + 1]).any(1)
                offsets[:, i] = torch.where(repeat, top[:, i], offsets[:, i])
        # rows with degree <= s take every neighbour
        offsets = torch.where(deg <= s, slots, offsets)
        return offsets, slots < deg

    def _expand_floyd(
        self, row: Tensor, vertex: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        g = self.graph
        offsets, valid = self._draw_offsets(g.degree.index_select(0, vertex), generator)
        position = (g.rowptr.index_select(0, vertex)[:, None] + offsets).view(-1)
        chosen = valid.view(-1).nonzero().squeeze(1)
        new_row = row.index_select(0, torch.div(chosen, self.fanout, rounding_mode="floor"))
        return new_row, g.col.index_select(0, position.index_select(0, chosen))

    def _expand_keys(
        self, row: Tensor, vertex: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        if self.replace:
            return self._expand_floyd(row, vertex, generator)
        g = self.graph
        device = vertex.device
        degree = g.degree.index_select(0, vertex)
        ends = torch.cumsum(degree, 0)
        total = int(ends[-1])
        # nonzeros of Q A, row by row: entry e of frontier row i is CSR slot rowptr[v_i] + e
        qa_row = torch.repeat_interleave(
            torch.arange(vertex.numel(), device=device), degree, output_size=total
        )
        first = ends - degree
        qa_slot = torch.arange(total, device=device) + (
            g.rowptr.index_select(0, vertex) - first
        ).index_select(0, qa_row)
        prob = 1.0 / degree.to(torch.float64).index_select(0, qa_row)  # row-normalised Q A
        u = torch.rand(total, generator=generator, device=device, dtype=torch.float64)
        key = torch.log(u) / prob
        # segmented top-s: order by key (descending), then stably by row
        order = torch.argsort(key, descending=True, stable=True)
        order = order.index_select(0, torch.argsort(qa_row.index_select(0, order), stable=True))
        rank = torch.arange(total, device=device) - first.index_select(
            0, qa_row.index_select(0, order)
        )
        chosen = order[rank < self.fanout]
        return (
            row.index_select(0, qa_row.index_select(0, chosen)),
            g.col.index_select(0, qa_slot.index_select(0, chosen)),
        )

    def _sample_group(self, roots: Tensor, generator: torch.Generator) -> list[SubgraphBatch]:
        n = self.graph.num_nodes
        num_rows = roots.numel()
        row = torch.arange(num_rows, device=self.device)
        vertex = roots
        rows, vertices = [row], [vertex]
        expand = self._expand_floyd if self.draw == "floyd" else self._expand_keys
        for _ in range(self.depth):  # a loop over levels only
            if vertex.numel() == 0:
                break
            row, vertex = expand(row, vertex, generator)
            rows.append(row)
            vertices.append(vertex)
        # F: distinct (row, vertex) pairs, sorted by row then vertex
        touched_keys = torch.unique(torch.cat(rows) * n + torch.cat(vertices))
        return induced_batches(self.graph, touched_keys, roots, self.batch_size, self._mark)


# --------------------------------------------------------------------------------------------
# pyg: torch-sparse's ego_k_hop_sample_adj (the kernel of PyG's ShaDowKHopSampler)
# --------------------------------------------------------------------------------------------


def _load_ego_op() -> Callable[..., tuple[Tensor, ...]]:
    try:
        import torch_sparse  # noqa: F401  (importing registers torch.ops.torch_sparse)
    except ImportError as error:
        raise TrackGNNError(
            "ShaDow sampler 'pyg' needs the optional package torch-sparse, which is not "
            "installed; use sampler 'bulk' or 'reference'"
        ) from error
    return torch.ops.torch_sparse.ego_k_hop_sample_adj


class PygSampler(ShadowSampler):
    """Adapter to torch-sparse's ``ego_k_hop_sample_adj``, one call per minibatch as in PyG.

    The kernel draws from torch's global RNG in parallel threads; the adapter seeds a forked global
    RNG from ``generator`` so results depend on it, but are reproducible only with one thread.
    Its without-replacement draw is biased (pytorch_sparse#385): compare distributions only with
    ``replace=True``.

    Args:
        op: the kernel; defaults to ``torch.ops.torch_sparse.ego_k_hop_sample_adj`` (tests inject
            a stand-in with the same contract).
    """

    name = "pyg"

    def __init__(
        self,
        graph: SamplingGraph,
        depth: int = 3,
        fanout: int = 6,
        batch_size: int = 256,
        replace: bool = False,
        op: Callable[..., tuple[Tensor, ...]] | None = None,
    ) -> None:
        super().__init__(graph, depth, fanout, batch_size, replace)
        self._op = op if op is not None else _load_ego_op()
        self.graph = graph.to("cpu")  # the kernel has a CPU implementation only

    def _convert(
        self,
        out_rowptr: Tensor,
        out_col: Tensor,
        n_id: Tensor,
        e_id: Tensor,
        ptr: Tensor,
        root_n_id: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Batch edges (local src, local dst, original id) from the kernel's induced CSR."""
        g = self.graph
        if g.simple:
            # every original edge u -> w is exactly the A entry (u, w) with fwd_eid >= 0
            row_local = torch.repeat_interleave(
                torch.arange(n_id.numel()), out_rowptr[1:] - out_rowptr[:-1]
            )
            eid = g.fwd_eid.index_select(0, e_id)
            keep = eid >= 0
            return row_local[keep], out_col[keep], eid[keep]
        # self-loops or repeated edges are not entries of A: extract from the vertex sets
        row = torch.repeat_interleave(torch.arange(ptr.numel() - 1), ptr[1:] - ptr[:-1])
        keys = row * g.num_nodes + n_id
        roots = n_id.index_select(0, root_n_id)
        mark = torch.zeros(g.num_nodes, dtype=torch.int64)
        (batch,) = induced_batches(g, keys, roots, roots.numel(), mark)
        return batch.edge_index[0], batch.edge_index[1], batch.edge_ids

    def _sample(self, roots: Tensor, generator: torch.Generator) -> list[SubgraphBatch]:
        g = self.graph
        roots = roots.cpu()
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        out = []
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # the CPU generator only
            for start in range(0, roots.numel(), self.batch_size):
                chunk = roots[start : start + self.batch_size]
                out_rowptr, out_col, n_id, e_id, ptr, root_n_id = self._op(
                    g.rowptr, g.col, chunk, self.depth, self.fanout, self.replace
                )
                src, dst, eid = self._convert(out_rowptr, out_col, n_id, e_id, ptr, root_n_id)
                out.append(
                    SubgraphBatch(
                        node_ids=n_id,
                        batch=torch.repeat_interleave(
                            torch.arange(chunk.numel()), ptr[1:] - ptr[:-1]
                        ),
                        edge_index=torch.stack([src, dst]),
                        edge_ids=eid,
                        root_pos=root_n_id,
                        num_subgraphs=chunk.numel(),
                    )
                )
        return out


# --------------------------------------------------------------------------------------------
# factory and epoch iterator
# --------------------------------------------------------------------------------------------


def make_sampler(
    name: str,
    graph: SamplingGraph,
    depth: int = 3,
    fanout: int = 6,
    batch_size: int = 256,
    k: int = 1,
    device: torch.device | str = "cpu",
    replace: bool = False,
    draw: str = "floyd",
) -> ShadowSampler:
    """Build the sampler called ``name`` (``reference``, ``bulk`` or ``pyg``).

    ``k``, ``device`` and ``draw`` apply to ``bulk`` only; ``reference`` and ``pyg`` run on the
    CPU and return their batches there.

    Raises:
        TrackGNNError: unknown name, bad parameter, or ``pyg`` without torch-sparse.
    """
    if name == "reference":
        return ReferenceSampler(graph, depth, fanout, batch_size, replace)
    if name == "bulk":
        return BulkSampler(graph, depth, fanout, batch_size, replace, k=k, device=device, draw=draw)
    if name == "pyg":
        return PygSampler(graph, depth, fanout, batch_size, replace)
    raise TrackGNNError(f"ShaDow sampler: unknown sampler {name!r}; choose one of {SAMPLER_NAMES}")


def epoch_roots(
    candidates: int | Tensor,
    batch_size: int,
    generator: torch.Generator,
    batches_per_draw: int = 1,
    drop_last: bool = False,
) -> Iterator[Tensor]:
    """Yield one epoch of roots: every candidate exactly once, in a fresh random order.

    Args:
        candidates: a vertex count ``n`` (roots ``0..n-1``) or a 1-D tensor of root vertex ids.
        batch_size: roots per minibatch ``b``.
        generator: source of the shuffle; each call draws a new permutation from it.
        batches_per_draw: yield ``k * b`` roots at a time, one bulk problem of ``k`` minibatches.
        drop_last: drop the final incomplete minibatch instead of yielding a short one.
    """
    batch_size = _check_positive_int(batch_size, "batch_size")
    batches_per_draw = _check_positive_int(batches_per_draw, "batches_per_draw")
    if isinstance(candidates, Tensor):
        if candidates.dim() != 1 or candidates.dtype.is_floating_point:
            raise TrackGNNError("epoch_roots: candidates must be a 1-D integer tensor")
        ids = candidates.to(torch.int64)
        count = ids.numel()
    elif isinstance(candidates, int) and not isinstance(candidates, bool) and candidates >= 0:
        ids = None
        count = candidates
    else:
        raise TrackGNNError(
            f"epoch_roots: candidates must be a count or a tensor, got {candidates!r}"
        )
    perm = torch.randperm(count, generator=generator, device=generator.device)
    order = perm if ids is None else ids.index_select(0, perm.to(ids.device))
    step = batch_size * batches_per_draw
    usable = (count // batch_size) * batch_size if drop_last else count
    for start in range(0, usable, step):
        yield order[start : min(start + step, usable)]
