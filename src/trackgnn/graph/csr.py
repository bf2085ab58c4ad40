"""Compressed graph containers used by the ShaDow subgraph samplers.

An event graph arrives as ``edge_index`` (int64 ``[2, E]``, directed inner hit -> outer hit)
over ``num_nodes`` vertices. Neighbour sampling walks the symmetric 0/1 adjacency ``A`` (both
directions, one entry per vertex pair, no self-loops), while induced-subgraph extraction returns
the ORIGINAL directed edges with their original ids (column in ``edge_index``), so labels and edge
features can be gathered by id. :class:`SamplingGraph` holds both views in CSR form.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from trackgnn.errors import TrackGNNError

# Keys of the form ``row * num_nodes + vertex`` must stay far from int64 overflow.
MAX_NUM_NODES = 2**31 - 1


@dataclass(frozen=True)
class SamplingGraph:
    """CSR views of one (possibly multi-event) graph for neighbour sampling and edge extraction.

    Attributes:
        num_nodes: number of vertices ``n``.
        edge_index: the original directed edges, int64 ``[2, E]``; edge id = column.
        rowptr: CSR row pointers of the symmetric adjacency ``A``, int64 ``[n + 1]``.
        col: CSR column indices of ``A``, sorted and distinct within each row, ``[nnz]``.
        degree: ``rowptr[1:] - rowptr[:-1]``, the number of distinct neighbours, ``[n]``.
        fwd_eid: for each CSR entry ``(u, w)`` of ``A`` an original edge id ``u -> w``, or -1 when
            only ``w -> u`` exists, ``[nnz]``.
        out_rowptr: CSR row pointers of the original directed edges by source, ``[n + 1]``.
        out_col: destination of each out-edge, sorted by (source, destination, id), ``[E]``.
        out_eid: original edge id of each out-edge in the same order, ``[E]``.
        simple: True when the graph has no self-loops and no repeated directed edge, so every
            original edge is exactly one ``fwd_eid`` entry of ``A``.
    """

    num_nodes: int
    edge_index: Tensor
    rowptr: Tensor
    col: Tensor
    degree: Tensor
    fwd_eid: Tensor
    out_rowptr: Tensor
    out_col: Tensor
    out_eid: Tensor
    simple: bool

    @property
    def num_edges(self) -> int:
        """Number of original directed edges ``E``."""
        return int(self.edge_index.shape[1])

    @property
    def device(self) -> torch.device:
        """Device holding the graph tensors."""
        return self.rowptr.device

    def to(self, device: torch.device | str) -> SamplingGraph:
        """Return a copy with every tensor on ``device`` (self if already there)."""
        device = torch.device(device)
        if self.device == device:
            return self
        moved = {
            f.name: (
                getattr(self, f.name).to(device)
                if isinstance(getattr(self, f.name), Tensor)
                else getattr(self, f.name)
            )
            for f in fields(self)
        }
        return SamplingGraph(**moved)


def _rowptr_from_sorted_rows(rows: Tensor, num_nodes: int) -> Tensor:
    counts = torch.bincount(rows, minlength=num_nodes)
    rowptr = torch.zeros(num_nodes + 1, dtype=torch.int64, device=rows.device)
    torch.cumsum(counts, 0, out=rowptr[1:])
    return rowptr


def check_edge_index(edge_index: object, num_nodes: object, what: str = "edge_index") -> Tensor:
    """Validate ``edge_index``/``num_nodes`` and return ``edge_index`` as contiguous int64.

    Raises:
        TrackGNNError: wrong type, dtype or shape, or a vertex id outside ``[0, num_nodes)``.
    """
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int):
        raise TrackGNNError(f"{what}: num_nodes must be an int, got {type(num_nodes).__name__}")
    if not 0 <= num_nodes <= MAX_NUM_NODES:
        raise TrackGNNError(f"{what}: num_nodes must be in [0, {MAX_NUM_NODES}], got {num_nodes}")
    if not isinstance(edge_index, Tensor):
        raise TrackGNNError(f"{what}: expected a torch.Tensor, got {type(edge_index).__name__}")
    if edge_index.dtype.is_floating_point or edge_index.dtype.is_complex:
        raise TrackGNNError(f"{what}: expected an integer tensor, got {edge_index.dtype}")
    if edge_index.dtype == torch.bool:
        raise TrackGNNError(f"{what}: expected an integer tensor, got torch.bool")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise TrackGNNError(f"{what}: expected shape [2, E], got {list(edge_index.shape)}")
    edge_index = edge_index.to(torch.int64).contiguous()
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
        raise TrackGNNError(
            f"{what}: vertex ids must lie in [0, {num_nodes}), got range "
            f"[{int(edge_index.min())}, {int(edge_index.max())}]"
        )
    return edge_index


def build_sampling_graph(edge_index: Tensor, num_nodes: int) -> SamplingGraph:
    """Build the CSR views of a directed event graph (on the device of ``edge_index``).

    Args:
        edge_index: int ``[2, E]`` directed edges; edge id ``i`` is column ``i``.
        num_nodes: number of vertices; isolated vertices are allowed.

    Raises:
        TrackGNNError: invalid ``edge_index`` or ``num_nodes``.
    """
    edge_index = check_edge_index(edge_index, num_nodes)
    device = edge_index.device
    n = num_nodes
    src, dst = edge_index[0], edge_index[1]

    # Original edges sorted by (source, destination, id): the row-selection structure used to
    # enumerate every edge leaving a touched vertex exactly once.
    pair_key = src * n + dst
    pair_key_sorted, out_eid = torch.sort(pair_key, stable=True)
    out_col = dst.index_select(0, out_eid)
    out_rowptr = _rowptr_from_sorted_rows(src.index_select(0, out_eid), n)
    has_multi = bool((pair_key_sorted[1:] == pair_key_sorted[:-1]).any())
    has_loops = bool((src == dst).any())

    # Symmetric 0/1 adjacency without self-loops: a vertex is never its own neighbour, and a
    # reciprocal pair u->w, w->u is one neighbour, not two (sampling draws distinct neighbours).
    not_loop = src != dst
    a = torch.cat([src[not_loop], dst[not_loop]])
    b = torch.cat([dst[not_loop], src[not_loop]])
    sym_key = torch.unique(a * n + b)
    rows = torch.div(sym_key, n, rounding_mode="floor") if n else sym_key
    col = sym_key - rows * n
    rowptr = _rowptr_from_sorted_rows(rows, n)

    # Map each entry (u, w) of A to an original edge u -> w when one exists.
    if pair_key_sorted.numel():
        pos = torch.searchsorted(pair_key_sorted, sym_key).clamp(max=pair_key_sorted.numel() - 1)
        found = pair_key_sorted.index_select(0, pos) == sym_key
        fwd_eid = torch.where(found, out_eid.index_select(0, pos), torch.full_like(pos, -1))
    else:
        fwd_eid = torch.empty(0, dtype=torch.int64, device=device)

    return SamplingGraph(
        num_nodes=n,
        edge_index=edge_index,
        rowptr=rowptr,
        col=col,
        degree=rowptr[1:] - rowptr[:-1],
        fwd_eid=fwd_eid,
        out_rowptr=out_rowptr,
        out_col=out_col,
        out_eid=out_eid,
        simple=not (has_multi or has_loops),
    )


@dataclass(frozen=True)
class ConcatenatedGraph:
    """Disjoint union of several event graphs.

    Event ``i`` owns vertices ``node_offsets[i]:node_offsets[i+1]`` and edge ids
    ``edge_offsets[i]:edge_offsets[i+1]``, so per-event features and labels concatenated in the
    same order line up with the union's vertex and edge ids.
    """

    edge_index: Tensor
    num_nodes: int
    node_offsets: Tensor
    edge_offsets: Tensor


def concat_graphs(graphs: Sequence[tuple[Tensor, int]]) -> ConcatenatedGraph:
    """Concatenate ``(edge_index, num_nodes)`` pairs into one disjoint-union graph.

    The one event concatenation: training's :func:`trackgnn.training.gnn.union_graph` joins the
    edges of its events through it and concatenates their features in the same order.

    Raises:
        TrackGNNError: an empty list or an invalid member (the message names its position).
    """
    if len(graphs) == 0:
        raise TrackGNNError("concat_graphs: no graphs given")
    parts = []
    node_counts = []
    for i, (edge_index, num_nodes) in enumerate(graphs):
        parts.append(check_edge_index(edge_index, num_nodes, what=f"graph {i} edge_index"))
        node_counts.append(num_nodes)
    device = parts[0].device
    node_offsets = torch.zeros(len(parts) + 1, dtype=torch.int64)
    node_offsets[1:] = torch.cumsum(torch.tensor(node_counts, dtype=torch.int64), 0)
    edge_offsets = torch.zeros(len(parts) + 1, dtype=torch.int64)
    edge_offsets[1:] = torch.cumsum(torch.tensor([p.shape[1] for p in parts]), 0)
    total_nodes = int(node_offsets[-1])
    if total_nodes > MAX_NUM_NODES:
        raise TrackGNNError(f"concat_graphs: {total_nodes} vertices in all exceed {MAX_NUM_NODES}")
    shifted = [p.to(device) + int(node_offsets[i]) for i, p in enumerate(parts)]
    return ConcatenatedGraph(
        edge_index=torch.cat(shifted, dim=1),
        num_nodes=total_nodes,
        node_offsets=node_offsets,
        edge_offsets=edge_offsets,
    )
