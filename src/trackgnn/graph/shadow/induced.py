"""Induced-edge extraction: the row and column selection of matrix-based ShaDow sampling.

Given the touched matrix ``F`` of a bulk problem (sorted ``row * n + vertex`` keys), returns the
original directed edges whose two ends lie in the same row, cut into :class:`SubgraphBatch`
minibatches. Used by the bulk sampler, and by the pyg adapter on graphs that are not simple.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import Tensor

from trackgnn.errors import TrackGNNError
from trackgnn.graph.csr import SamplingGraph
from trackgnn.graph.shadow.batch import SubgraphBatch
from trackgnn.graph.shadow.ops import KeyIndex, expand_segments, flat_nonzero, floor_div

_LOW32 = (1 << 32) - 1
# index of an int64's high 32 bits among the two int32 words of its memory
_HIGH_WORD = 1 if sys.byteorder == "little" else 0


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
            fits = flat_nonzero(rank < w)
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
        row = floor_div(touched_keys, n)
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
        row_in_slice = floor_div(rank, groups)  # distinct among the rows of one slice
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
                lambda cand: row_in_slice.index_select(0, row.index_select(0, floor_div(cand, w))),
                lookup,
                slice_rows,
            )
            # compare the high words (row + 1) in place, as int32: no shifted copy of the codes
            high = code.view(torch.int32).view(count, w, 2)[:, :, _HIGH_WORD]
            inside = high == row_plus_one.to(torch.int32)[:, None]
            kept = flat_nonzero(inside.view(-1))
            # (tail, head) positions in F; the tail's is its entry, so no gather is needed
            edges = torch.empty((2, kept.numel()), dtype=torch.int64, device=device)
            floor_div(kept, w, out=edges[0])
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
    ) -> tuple[KeyIndex, Tensor] | None:
        """Mark vertices in several rows of one slice with -1 and index their entries.

        After the scatter of ``packed`` into ``mark[slot]``, an entry that does not read back its
        own value shares its slot with another (which one won is irrelevant, so this is
        deterministic on every device). Returns the hash index of the entries of shared slots
        (key ``slot * slice_rows + in_slice``, ``in_slice`` the entry's row's index among the
        rows of its slice) and their packed values, or None.
        """
        if slice_rows == 1:  # a row never holds a vertex twice
            return None
        lost = flat_nonzero(mark.index_select(0, slot) != packed)
        if lost.numel() == 0:
            return None
        mark.index_fill_(0, slot.index_select(0, lost), -1)
        shared = flat_nonzero(mark.index_select(0, slot) < 0)
        keys = slot.index_select(0, shared) * slice_rows + in_slice.index_select(0, shared)
        return KeyIndex(keys), packed.index_select(0, shared)

    @staticmethod
    def _codes(
        mark: Tensor,
        head_slot: Tensor,
        candidate_in_slice: Callable[[Tensor], Tensor],
        lookup: tuple[KeyIndex, Tensor] | None,
        slice_rows: int,
    ) -> Tensor:
        """Packed (row + 1, position) of each candidate's head in the candidate's row, or 0."""
        code = mark.index_select(0, head_slot)
        if lookup is None:
            return code
        shared = flat_nonzero(code < 0)
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
        lookup: tuple[KeyIndex, Tensor] | None,
        slices: tuple[Tensor, Tensor, int],
        row_bounds: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Out-edges beyond the table width, enumerated by segment expansion: ``[2, m]``
        (tail, head) positions in F, edge ids, and each minibatch's first edge."""
        graph = self.graph
        starts = graph.out_rowptr.index_select(0, vertex) + self.width
        counts = (graph.out_rowptr.index_select(0, vertex + 1) - starts).clamp(min=0)
        total = int(counts.sum())
        slot = expand_segments(starts, counts, total, step=1)
        tail = expand_segments(packed, counts, total, step=0)
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
        kept = flat_nonzero(((code ^ tail) >> 32) == 0)  # same row; never for code 0
        edges = torch.empty((2, kept.numel()), dtype=torch.int64, device=tail.device)
        torch.bitwise_and(tail.index_select(0, kept), _LOW32, out=edges[0])
        torch.bitwise_and(code.index_select(0, kept), _LOW32, out=edges[1])
        return (
            edges,
            graph.out_eid.index_select(0, slot.index_select(0, kept)),
            torch.searchsorted(tail_row.index_select(0, kept), row_bounds),
        )
