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
* ``bulk``: the matrix-based sampler of the paper, ``k`` minibatches stacked into one problem, torch
  tensor operations (same code on CPU and CUDA; on the CPU two primitives, ``nonzero`` and floor
  division, run through numpy's faster kernels), no Python loop over roots or vertices;
* ``pyg``: adapter to torch-sparse's ``ego_k_hop_sample_adj``, the kernel behind PyG's
  ``ShaDowKHopSampler`` (optional; its without-replacement draw is biased, pytorch_sparse#385).
"""

from __future__ import annotations

import abc
import functools
import math
import sys
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
# index of an int64's high 32 bits among the two int32 words of its memory
_HIGH_WORD = 1 if sys.byteorder == "little" else 0


def _flat_nonzero(mask: Tensor) -> Tensor:
    """Positions (int64) of the true entries of a 1-D bool tensor.

    On the CPU through numpy (zero-copy): torch's CPU ``nonzero`` is about 6x slower (1.7 vs
    0.3 ms for 390k entries, one thread), and it is the sampler's most frequent compaction.
    """
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.nonzero().squeeze(1)


def _floor_div(values: Tensor, divisor: int, out: Tensor | None = None) -> Tensor:
    """``values // divisor`` for non-negative int64 ``values`` (numpy on the CPU: 3x faster),
    written into ``out`` when given."""
    if values.device.type == "cpu":
        if out is None:
            return torch.from_numpy(values.numpy() // divisor)
        np.floor_divide(values.numpy(), divisor, out=out.numpy())
        return out
    return torch.div(values, divisor, rounding_mode="floor", out=out)


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
        open_idx = _flat_nonzero((encoded < 0) & ~found)
        if open_idx.numel() == 0:
            return result
        first = first.index_select(0, open_idx)
        size = self.bucket_size.index_select(0, bucket.index_select(0, open_idx))
        queries = queries.index_select(0, open_idx)
        for j in range(1, self.max_bucket):
            probe = first + j
            hit = (self.keys_by_bucket.index_select(0, probe) == queries) & (size > j)
            hit_at = _flat_nonzero(hit)
            result[open_idx.index_select(0, hit_at)] = self.pos_by_bucket.index_select(
                0, probe.index_select(0, hit_at)
            )
            still = _flat_nonzero((~hit) & (size > j + 1))
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
    nonempty = _flat_nonzero(counts > 0)
    seg_counts = counts.index_select(0, nonempty)
    seg_values = values.index_select(0, nonempty)
    seg_starts = torch.cumsum(seg_counts, 0) - seg_counts
    jumps = seg_values.clone()
    # the jump onto segment j undoes where segment j - 1 ended
    jumps[1:] -= seg_values[:-1] + step * (seg_counts[:-1] - 1)
    steps = torch.full((total,), step, dtype=torch.int64, device=counts.device)
    steps.index_put_((seg_starts,), jumps)
    return torch.cumsum(steps, 0)


def _sorted_distinct(keys: Tensor, bound: int) -> Tensor:
    """The distinct values of non-negative int64 ``keys`` (all < ``bound``), ascending.

    Sorts in int32 when the keys fit (about twice as fast on the CPU as int64) and drops repeats
    by comparing neighbours, which is cheaper than ``torch.unique``.
    """
    if bound <= 2**31 - 1:
        ordered = torch.sort(keys.to(torch.int32)).values.to(torch.int64)
    else:
        ordered = torch.sort(keys).values
    if ordered.numel() < 2:
        return ordered
    first = torch.ones_like(ordered, dtype=torch.bool)
    torch.ne(ordered[1:], ordered[:-1], out=first[1:])
    return ordered.index_select(0, _flat_nonzero(first))


def _table_width(out_degree: Tensor, num_edges: int) -> int:
    """Width of the padded out-edge table: the narrowest that leaves at most 1/16 of the edges to
    the overflow path (whose per-edge cost is several times a table slot's)."""
    if num_edges == 0:
        return 1
    counts = torch.bincount(out_degree).cpu()  # counts[d]: vertices of out-degree d
    degrees = torch.arange(counts.numel())
    # edges beyond width w, for every w at once: sum over d > w of (d - w) * counts[d]
    vertices_above = counts.flip(0).cumsum(0).flip(0) - counts
    edges_above = (degrees * counts).flip(0).cumsum(0).flip(0) - degrees * counts
    overflow = edges_above - degrees * vertices_above
    fits = (16 * overflow <= num_edges).nonzero().squeeze(1)
    return max(1, int(fits[fits >= 1][0]))


class InducedExtractor:
    """Induced-subgraph extraction (the row and column selection of matrix-based sampling).

    Row selection enumerates the out-edges of every touched (row, vertex) entry of F; column
    selection keeps an edge when its head is in the same row of F. The out-edges come from a
    padded table ``[n + 1, width]`` of heads (missing slots point at a sentinel vertex ``n`` that
    is never touched), so the candidates of all entries are one ``[entries, width]`` gather and
    each candidate's row is a broadcast, not an expanded array; the few out-edges of vertices with
    more than ``width`` of them take a segment-expansion path.

    Column selection is a gather from a scratch ``mark`` of ``groups`` slices of ``n + 1``: each
    row owns one slice, shared round-robin in the order of the rows' root ids, and
    ``mark[g, w]`` holds ``(row + 1, position in F)`` packed in one int64 when vertex ``w`` lies
    in one row of slice ``g``, so one gather and a compare decide. With one row per slice (when
    ``n * rows`` fits the scratch budget) that is the dense F itself; otherwise the few vertices
    in several rows of one slice are looked up in a hash index of those entries.

    Holds scratch state, so one extractor must not be used by two threads at once.

    Args:
        graph: the sampling graph; the table and scratch live on its device.
        width: table width; default: chosen from the out-degree distribution.
        mark_budget: most int64 entries of the scratch ``mark`` (default 2**22, 32 MiB).
    """

    def __init__(
        self, graph: SamplingGraph, width: int | None = None, mark_budget: int = 2**22
    ) -> None:
        n = graph.num_nodes
        device = graph.device
        out_degree = graph.out_rowptr[1:] - graph.out_rowptr[:-1]
        self.graph = graph
        self.width = width if width is not None else _table_width(out_degree, graph.num_edges)
        w = self.width
        table = torch.full(((n + 1) * w,), n, dtype=torch.int64, device=device)
        eid_table = torch.full_like(table, -1)
        if graph.num_edges:
            tail = torch.repeat_interleave(
                torch.arange(n, device=device), out_degree, output_size=graph.num_edges
            )
            rank = torch.arange(graph.num_edges, device=device) - graph.out_rowptr.index_select(
                0, tail
            )
            fits = _flat_nonzero(rank < w)
            table_slot = tail.index_select(0, fits) * w + rank.index_select(0, fits)
            table.index_put_((table_slot,), graph.out_col.index_select(0, fits))
            eid_table.index_put_((table_slot,), graph.out_eid.index_select(0, fits))
        self.max_groups = max(1, mark_budget // (n + 1))
        # int32 when every mark slot fits (half the bytes of the largest gather)
        self.slot_dtype = torch.int32 if self.max_groups * (n + 1) < 2**31 else torch.int64
        self.heads = table.view(n + 1, w).to(self.slot_dtype)
        # the original edge id of each table slot (-1 where empty)
        self.edge_ids = eid_table.view(n + 1, w).to(
            torch.int32 if graph.num_edges < 2**31 else torch.int64
        )
        self.has_overflow = bool((out_degree > w).any())
        # scratch, grown on demand: packed (row + 1, position) per (slice, vertex), 0 = untouched;
        # zero between calls
        self._mark = torch.zeros(0, dtype=torch.int64, device=device)

    def _scratch(self, groups: int) -> Tensor:
        size = groups * (self.graph.num_nodes + 1)
        if self._mark.numel() < size:
            self._mark = torch.zeros(size, dtype=torch.int64, device=self._mark.device)
        return self._mark

    def __call__(self, touched_keys: Tensor, roots: Tensor, batch_size: int) -> list[SubgraphBatch]:
        """Induced subgraphs of the rows of the touched matrix F, cut into minibatches.

        Args:
            touched_keys: sorted distinct ``row * n + vertex`` keys of F; row ``r`` belongs to
                root ``roots[r]``, which must be among its entries.
            roots: root vertex of each row.
            batch_size: rows per minibatch.
        """
        graph = self.graph
        n = graph.num_nodes
        w = self.width
        device = touched_keys.device
        num_rows = roots.numel()
        count = touched_keys.numel()
        if count >= 2**31:  # positions are packed into 32 bits
            raise TrackGNNError(
                f"ShaDow sampler: {count} touched vertices in one bulk problem; lower k"
            )
        row = _floor_div(touched_keys, n)
        vertex = touched_keys - row * n

        # minibatch boundaries in F (a minibatch's local ids are positions in F minus its start)
        row_bounds = torch.arange(0, num_rows + batch_size, batch_size, device=device)
        row_bounds = row_bounds.clamp(max=num_rows)
        node_bounds = torch.searchsorted(row, row_bounds)
        position = torch.arange(count, device=device)
        row_plus_one = row + 1
        # (row + 1, position) in one int64; the +1 keeps every packed value apart from 0 (absent)
        packed = (row_plus_one << 32) | position

        # rows share mark slices round-robin in the order of their roots' ids, so the rows of
        # one slice have roots far apart (ids follow the detector geometry) and rarely overlap
        groups = min(num_rows, self.max_groups)
        slice_rows = -(-num_rows // groups)
        mark = self._scratch(groups)
        rank = torch.empty_like(roots)
        rank[torch.argsort(roots)] = torch.arange(num_rows, device=device)
        row_base = torch.remainder(rank, groups) * (n + 1)  # each row's slice start in mark
        row_in_slice = _floor_div(rank, groups)  # distinct among the rows of one slice
        entry_base = row_base.index_select(0, row)
        slot = entry_base + vertex
        mark.index_put_((slot,), packed)
        try:
            lookup = self._index_collisions(
                mark, slot, packed, row_in_slice.index_select(0, row), slice_rows
            )
            # dense part: out-edge slots [0, width) of every entry, one [count, width] gather
            head = self.heads.index_select(0, vertex)
            code = self._codes(
                mark,
                (head + entry_base.to(self.slot_dtype)[:, None]).view(-1),
                lambda cand: row_in_slice.index_select(0, row.index_select(0, _floor_div(cand, w))),
                lookup,
                slice_rows,
            )
            # compare the high words (row + 1) in place, as int32: no shifted copy of the codes
            high = code.view(torch.int32).view(count, w, 2)[:, :, _HIGH_WORD]
            inside = high == row_plus_one.to(torch.int32)[:, None]
            kept = _flat_nonzero(inside.view(-1))
            # (tail, head) positions in F; the tail's is its entry, so no gather is needed
            edges = torch.empty((2, kept.numel()), dtype=torch.int64, device=device)
            _floor_div(kept, w, out=edges[0])
            torch.bitwise_and(code.index_select(0, kept), _LOW32, out=edges[1])
            # edge ids: the entries' table rows, then the kept slots (cheaper than gathering
            # CSR slots computed per kept edge)
            eid = self.edge_ids.index_select(0, vertex).view(-1).index_select(0, kept)
            eid = eid.to(torch.int64)
            parts = [(edges, eid, torch.searchsorted(kept, node_bounds * w))]
            if self.has_overflow:
                parts.append(
                    self._overflow(
                        mark,
                        vertex,
                        packed,
                        lookup,
                        (row_base, row_in_slice, slice_rows),
                        row_bounds,
                    )
                )
        finally:
            mark.index_fill_(0, slot, 0)

        root_position = torch.searchsorted(
            touched_keys, torch.arange(num_rows, device=device) * n + roots
        )
        node_b, row_b = node_bounds.tolist(), row_bounds.tolist()
        edge_bs = [p[2].tolist() for p in parts]
        out = []
        for j in range(len(row_b) - 1):  # a loop over the k minibatches
            n0, n1, r0, r1 = node_b[j], node_b[j + 1], row_b[j], row_b[j + 1]
            if len(row_b) == 2 and len(parts) == 1:  # one minibatch: positions are local ids
                edge_index, eid = parts[0][0], parts[0][1]
            else:
                spans = [(b[j], b[j + 1]) for b in edge_bs]
                edge_index = torch.cat(
                    [p[0][:, e0:e1] for p, (e0, e1) in zip(parts, spans, strict=True)], 1
                ).sub_(n0)
                eid = torch.cat([p[1][e0:e1] for p, (e0, e1) in zip(parts, spans, strict=True)])
            out.append(
                SubgraphBatch(
                    node_ids=vertex[n0:n1],
                    batch=row[n0:n1] - r0,
                    edge_index=edge_index,
                    edge_ids=eid,
                    root_pos=root_position[r0:r1] - n0,
                    num_subgraphs=r1 - r0,
                )
            )
        return out

    @staticmethod
    def _index_collisions(
        mark: Tensor, slot: Tensor, packed: Tensor, in_slice: Tensor, slice_rows: int
    ) -> tuple[_KeyIndex, Tensor] | None:
        """Mark vertices in several rows of one slice with -1 and index their entries.

        After the scatter of ``packed`` into ``mark[slot]``, an entry that does not read back its
        own value shares its slot with another (which one won is irrelevant, so this is
        deterministic on every device). Returns the hash index of the entries of shared slots
        (key ``slot * slice_rows + in_slice``, ``in_slice`` the entry's row's index among the
        rows of its slice) and their packed values, or None.
        """
        if slice_rows == 1:  # a row never holds a vertex twice
            return None
        lost = _flat_nonzero(mark.index_select(0, slot) != packed)
        if lost.numel() == 0:
            return None
        mark.index_fill_(0, slot.index_select(0, lost), -1)
        shared = _flat_nonzero(mark.index_select(0, slot) < 0)
        keys = slot.index_select(0, shared) * slice_rows + in_slice.index_select(0, shared)
        return _KeyIndex(keys), packed.index_select(0, shared)

    @staticmethod
    def _codes(
        mark: Tensor,
        head_slot: Tensor,
        candidate_in_slice: Callable[[Tensor], Tensor],
        lookup: tuple[_KeyIndex, Tensor] | None,
        slice_rows: int,
    ) -> Tensor:
        """Packed (row + 1, position) of each candidate's head in the candidate's row, or 0."""
        code = mark.index_select(0, head_slot)
        if lookup is None:
            return code
        shared = _flat_nonzero(code < 0)
        if shared.numel():
            index, packed_of = lookup
            query = head_slot.index_select(0, shared).to(torch.int64) * slice_rows
            query += candidate_in_slice(shared)
            found_at = index.lookup(query)
            code[shared] = torch.where(
                found_at >= 0, packed_of.index_select(0, found_at.clamp(min=0)), 0
            )
        return code

    def _overflow(
        self,
        mark: Tensor,
        vertex: Tensor,
        packed: Tensor,
        lookup: tuple[_KeyIndex, Tensor] | None,
        slices: tuple[Tensor, Tensor, int],
        row_bounds: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Out-edges beyond the table width, enumerated by segment expansion: ``[2, m]``
        (tail, head) positions in F, edge ids, and each minibatch's first edge."""
        graph = self.graph
        starts = graph.out_rowptr.index_select(0, vertex) + self.width
        counts = (graph.out_rowptr.index_select(0, vertex + 1) - starts).clamp(min=0)
        total = int(counts.sum())
        slot = _expand_segments(starts, counts, total, step=1)
        tail = _expand_segments(packed, counts, total, step=0)
        tail_row = (tail >> 32) - 1
        row_base, row_in_slice, slice_rows = slices
        head_slot = graph.out_col.index_select(0, slot) + row_base.index_select(0, tail_row)
        code = self._codes(
            mark,
            head_slot,
            lambda cand: row_in_slice.index_select(0, tail_row.index_select(0, cand)),
            lookup,
            slice_rows,
        )
        kept = _flat_nonzero(((code ^ tail) >> 32) == 0)  # same row; never for code 0
        edges = torch.empty((2, kept.numel()), dtype=torch.int64, device=tail.device)
        torch.bitwise_and(tail.index_select(0, kept), _LOW32, out=edges[0])
        torch.bitwise_and(code.index_select(0, kept), _LOW32, out=edges[1])
        return (
            edges,
            graph.out_eid.index_select(0, slot.index_select(0, kept)),
            torch.searchsorted(tail_row.index_select(0, kept), row_bounds),
        )


class BulkSampler(ShadowSampler):
    """Matrix-based ShaDow sampling of ``k`` minibatches at once (tensor operations, CPU or CUDA).

    The ``k * b`` roots are the rows of ``Q`` (one nonzero each). Per level, the frontier is a list
    of (row, vertex) nonzeros; row ``i`` of ``Q A`` is the CSR row of its vertex, whose
    row-normalised values are the uniform probabilities ``1 / degree``; ``min(degree, s)``
    positions are drawn for all rows at once, and each drawn vertex becomes a nonzero of the next
    ``Q`` (repeats kept). The touched matrix ``F`` collects every level's nonzeros as sorted
    ``row * n + vertex`` keys; the induced subgraphs come from row selection (out-edges of touched
    vertices) and column selection (head also in the row of ``F``), see
    :class:`InducedExtractor`.

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
        # holds scratch state, so a sampler is not thread-safe
        self._extract = InducedExtractor(self.graph)
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

    def _draw_offsets(
        self, degree: Tensor, generator: torch.Generator, all_draw: bool
    ) -> tuple[Tensor, Tensor | None]:
        """Offsets ``[s, f]`` into each frontier vertex's CSR row (slot-major, so each step of
        Floyd's loop works on contiguous rows) and their validity mask, or None when
        ``all_draw`` says every degree exceeds ``s`` (then every offset is valid)."""
        s = self.fanout
        device = degree.device
        slots = torch.arange(s, device=device)[:, None]
        deg = degree[None, :]
        u = torch.rand((s, degree.numel()), generator=generator, device=device, dtype=torch.float64)
        if self.replace:
            offsets = torch.minimum((u * deg).to(torch.int64), deg - 1)
        else:
            # Floyd: for j = deg-s .. deg-1 draw t uniform in [0, j]; if t was already chosen take
            # j instead. Every s-subset of [0, deg) is equally likely.
            top = deg - s + slots
            offsets = torch.minimum((u * (top + 1)).to(torch.int64), top)
            for i in range(1, s):
                repeat = (offsets[:i] == offsets[i]).any(0)
                offsets[i] = torch.where(repeat, top[i], offsets[i])
        if all_draw:
            return offsets, None
        # rows with degree <= s take every neighbour
        offsets = torch.where(deg <= s, slots, offsets)
        return offsets, slots < deg

    def _expand_floyd(
        self, row_key: Tensor, vertex: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """One level: the next frontier's ``(row_key, vertex)`` entries (``row_key`` is carried
        from the drawing entry unchanged; the sampler passes ``row * n``)."""
        g = self.graph
        degree = g.degree.index_select(0, vertex)
        all_draw = int(degree.min()) > self.fanout
        offsets, valid = self._draw_offsets(degree, generator, all_draw)
        # slot-major: flat position c belongs to frontier entry c % f
        position = (g.rowptr.index_select(0, vertex)[None, :] + offsets).view(-1)
        new_key = row_key.repeat(self.fanout)
        if valid is None:  # nothing to compact
            return new_key, g.col.index_select(0, position)
        chosen = _flat_nonzero(valid.view(-1))
        return new_key.index_select(0, chosen), g.col.index_select(
            0, position.index_select(0, chosen)
        )

    def _expand_keys(
        self, row_key: Tensor, vertex: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        if self.replace:
            return self._expand_floyd(row_key, vertex, generator)
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
            row_key.index_select(0, qa_row.index_select(0, chosen)),
            g.col.index_select(0, qa_slot.index_select(0, chosen)),
        )

    def _sample_group(self, roots: Tensor, generator: torch.Generator) -> list[SubgraphBatch]:
        n = self.graph.num_nodes
        num_rows = roots.numel()
        # each frontier entry carries row * n, so its key in F is one add away
        row_key = torch.arange(num_rows, device=self.device) * n
        vertex = roots
        keys = [row_key + vertex]
        expand = self._expand_floyd if self.draw == "floyd" else self._expand_keys
        for _ in range(self.depth):  # a loop over levels only
            if vertex.numel() == 0:
                break
            row_key, vertex = expand(row_key, vertex, generator)
            keys.append(row_key + vertex)
        # F: distinct (row, vertex) pairs as row * n + vertex, sorted by row then vertex
        touched_keys = _sorted_distinct(torch.cat(keys), num_rows * n)
        return self._extract(touched_keys, roots, self.batch_size)


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
        # built once: graphs with self-loops or repeated edges take their batch edges from the
        # vertex sets (the extractor's tables cost O(E) to build)
        self._extract = None if self.graph.simple else InducedExtractor(self.graph)

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
        assert self._extract is not None  # built for every non-simple graph
        (batch,) = self._extract(keys, roots, roots.numel())
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
