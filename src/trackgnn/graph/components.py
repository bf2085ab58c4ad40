"""Track building: from scored edges to a hit -> track assignment.

Edges scoring above a cut are kept; each connected component of the kept graph is a track candidate
(``method="components"``), or branching components are split into simple paths along their
longest paths (``method="walkthrough"``, see :func:`walkthrough_edges`). Candidates shorter than
``min_length`` hits are dissolved: their hits belong to no track.

Labels use ``-1`` for "no track" and ``0..K-1`` for tracks, numbered by their lowest node index so
that every backend gives identical labels. :func:`write_submission` turns them into the TrackML
submission (every hit gets a track id; hits in no track get one of their own).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse
import scipy.sparse.csgraph
import torch

from trackgnn.atomic import atomic_path
from trackgnn.errors import TrackGNNError

Method = Literal["components", "walkthrough"]
Backend = Literal["auto", "scipy", "torch", "cugraph"]

NO_TRACK = -1


def _check_graph(num_nodes: int, edge_index: torch.Tensor, scores: torch.Tensor | None) -> None:
    """Raise TrackGNNError on an edge list that does not fit the node count or the scores."""
    if num_nodes < 0:
        raise TrackGNNError(f"build_tracks: num_nodes must be >= 0, got {num_nodes}")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise TrackGNNError(f"edge_index: expected shape [2, E], got {list(edge_index.shape)}")
    if edge_index.dtype.is_floating_point or edge_index.dtype == torch.bool:
        raise TrackGNNError(f"edge_index: expected an integer tensor, got {edge_index.dtype}")
    if edge_index.numel() and (edge_index.min() < 0 or edge_index.max() >= num_nodes):
        raise TrackGNNError(f"edge_index: node indices must lie in [0, {num_nodes})")
    if scores is not None and scores.shape != (edge_index.shape[1],):
        raise TrackGNNError(
            f"scores: expected shape [{edge_index.shape[1]}] (one per edge), "
            f"got {list(scores.shape)}"
        )


def connected_components(
    num_nodes: int, edge_index: torch.Tensor, backend: Backend = "auto"
) -> torch.Tensor:
    """Label each node with the smallest node index of its (undirected) connected component.

    Args:
        num_nodes: number of nodes N.
        edge_index: LongTensor [2, E]; direction is ignored.
        backend: ``scipy`` (CPU), ``torch`` (any device, hooking + pointer jumping), ``cugraph``
            (CUDA tensors, needs RAPIDS), or ``auto``: cuGraph for CUDA tensors when importable,
            else torch on CUDA, SciPy on CPU.

    Returns:
        LongTensor [N] on ``edge_index.device``; two nodes share a value iff they are connected.
    """
    _check_graph(num_nodes, edge_index, None)
    if backend == "auto":
        if edge_index.is_cuda:
            backend = "cugraph" if importlib.util.find_spec("cugraph") else "torch"
        else:
            backend = "scipy"
    if backend == "scipy":
        labels = _components_scipy(num_nodes, edge_index)
    elif backend == "torch":
        return _components_torch(num_nodes, edge_index)
    elif backend == "cugraph":
        labels = _components_cugraph(num_nodes, edge_index)
    else:
        raise TrackGNNError(f"connected_components: unknown backend {backend!r}")
    return _min_node_labels(labels.to(edge_index.device))


def _components_scipy(num_nodes: int, edge_index: torch.Tensor) -> torch.Tensor:
    src, dst = edge_index.cpu().numpy()
    adjacency = scipy.sparse.coo_matrix(
        (np.ones(src.shape[0], dtype=np.int8), (src, dst)), shape=(num_nodes, num_nodes)
    )
    _, labels = scipy.sparse.csgraph.connected_components(adjacency, directed=False)
    return torch.from_numpy(labels.astype(np.int64))


def _components_cugraph(
    num_nodes: int, edge_index: torch.Tensor
) -> torch.Tensor:  # pragma: no cover
    """cuGraph weak components of a CuPy sparse matrix (the SciPy-compatible cuGraph API)."""
    if not edge_index.is_cuda:
        raise TrackGNNError("connected_components: the cugraph backend needs CUDA tensors")
    try:
        import cugraph
        import cupy
        import cupyx.scipy.sparse
    except ImportError as err:
        raise TrackGNNError(f"connected_components: cugraph backend unavailable ({err})") from None
    src = cupy.asarray(edge_index[0].to(torch.int32))
    dst = cupy.asarray(edge_index[1].to(torch.int32))
    adjacency = cupyx.scipy.sparse.coo_matrix(
        (cupy.ones(src.shape[0], dtype=cupy.float32), (src, dst)), shape=(num_nodes, num_nodes)
    ).tocsr()
    _, labels = cugraph.connected_components(adjacency, directed=False, connection="weak")
    return torch.as_tensor(labels, device=edge_index.device).long()


def _components_torch(num_nodes: int, edge_index: torch.Tensor) -> torch.Tensor:
    """Shiloach-Vishkin style components with tensor ops only (runs on CPU or GPU).

    Invariant: ``parent[v] <= v``. Each round hooks the larger of two adjacent roots onto the
    smaller one (scatter-min), then pointer-jumps until every node points at a root. Each round at
    least halves the number of roots that still have a neighbouring root, so O(log N) rounds.
    Converged roots are the smallest node index of their component.
    """
    device = edge_index.device
    parent = torch.arange(num_nodes, device=device)
    src, dst = edge_index[0].long(), edge_index[1].long()
    while src.numel():
        root_src, root_dst = parent[src], parent[dst]
        differ = root_src != root_dst
        if not bool(differ.any()):
            break
        low = torch.minimum(root_src[differ], root_dst[differ])
        high = torch.maximum(root_src[differ], root_dst[differ])
        parent.scatter_reduce_(0, high, low, reduce="amin")
        while True:
            grandparent = parent[parent]
            if torch.equal(grandparent, parent):
                break
            parent = grandparent
        # Edges inside one component stay settled for good; dropping them shrinks later rounds.
        src, dst = src[differ], dst[differ]
    return parent


def _min_node_labels(labels: torch.Tensor) -> torch.Tensor:
    """Map arbitrary component labels to the smallest node index of each component."""
    num_nodes = labels.numel()
    _, dense = torch.unique(labels, return_inverse=True)
    first = torch.full((num_nodes,), num_nodes, dtype=torch.long, device=labels.device)
    first.scatter_reduce_(0, dense, torch.arange(num_nodes, device=labels.device), reduce="amin")
    return first[dense]


def _longest_path_lengths(
    num_nodes: int, src: torch.Tensor, dst: torch.Tensor, max_rounds: int
) -> torch.Tensor:
    """Edges on the longest path ending at each node (``src -> dst`` taken as acyclic).

    Parallel relaxation: each round extends every path by one edge, so a DAG converges in as
    many rounds as its longest path; a cycle would grow without end and is cut at ``max_rounds``.
    """
    length = torch.zeros(num_nodes, dtype=torch.long, device=src.device)
    for _ in range(max_rounds):
        longer = length.scatter_reduce(0, dst, length[src] + 1, reduce="amax")
        if torch.equal(longer, length):
            break
        length = longer
    return length


def _best_edge_per_node(node: torch.Tensor, key: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Bool [E]: the edge with the largest ``key`` (keys are unique) among those of its ``node``."""
    best = torch.full((num_nodes,), -1, dtype=key.dtype, device=key.device)
    best.scatter_reduce_(0, node, key, reduce="amax")
    return best[node] == key


def walkthrough_edges(
    num_nodes: int, edge_index: torch.Tensor, scores: torch.Tensor, max_rounds: int = 1000
) -> torch.Tensor:
    """Select edges so that every hit keeps at most one successor and one predecessor, along the
    longest paths through each branching component (a walk-through that handles junctions).

    Edges are directed ``edge_index[0] -> edge_index[1]`` (inner to outer hit, as the pipeline
    orients them), which makes the graph acyclic. For each hit, the lengths (in edges) of the
    longest path ending at it (``into``) and starting from it (``out_of``) are computed by parallel
    relaxation. Each hit then chooses as successor the outgoing edge whose target starts the
    longest continuation, and as predecessor the incoming edge whose source ends the longest
    approach; ties go to the higher score, then the later edge. An edge is selected when both of
    its hits choose it; then the choices are made again among the edges whose hits are both still
    free, until no edge is chosen by both (a track that lost a junction keeps its own start). A
    simple path (a track without junctions) keeps every edge. A particle
    crossing two overlapping modules of one layer (hits ``b1``, ``b2`` at almost the same radius,
    edges ``a->b1``, ``a->b2``, ``b1->b2``, ``b1->c``, ``b2->c``) stays one path ``a b1 b2 c``,
    where a greedy best-score-first choice can cut it in two. A fake edge joining two tracks is
    not on either track's longest path unless it lengthens it, and on a tie the true edges'
    higher scores keep the tracks apart. Self-loops are never selected.

    Args:
        num_nodes: number of hits N.
        edge_index: LongTensor [2, E], directed inner -> outer.
        scores: edge scores [E] (ties between equally long paths).
        max_rounds: relaxation rounds at most (a DAG needs its longest path's length).

    Returns:
        BoolTensor [E], True for selected edges.
    """
    _check_graph(num_nodes, edge_index, scores)
    device = edge_index.device
    num_edges = edge_index.shape[1]
    selected = torch.zeros(num_edges, dtype=torch.bool, device=device)
    candidate = torch.nonzero(edge_index[0] != edge_index[1]).squeeze(1)
    if candidate.numel() == 0:
        return selected
    src, dst = edge_index[0, candidate].long(), edge_index[1, candidate].long()
    into = _longest_path_lengths(num_nodes, src, dst, max_rounds)
    out_of = _longest_path_lengths(num_nodes, dst, src, max_rounds)
    # Unique tie-breaks: each edge's rank by score (ascending; equal scores by edge order).
    order = torch.sort(scores[candidate].float(), stable=True).indices
    score_rank = torch.empty_like(order)
    score_rank[order] = torch.arange(order.numel(), device=device)
    span = order.numel()
    successor_key = out_of[dst] * span + score_rank
    predecessor_key = into[src] * span + score_rank
    has_successor = torch.zeros(num_nodes, dtype=torch.bool, device=device)
    has_predecessor = torch.zeros(num_nodes, dtype=torch.bool, device=device)
    remaining = torch.arange(span, device=device)
    while remaining.numel():
        r_src, r_dst = src[remaining], dst[remaining]
        accept = _best_edge_per_node(r_src, successor_key[remaining], num_nodes)
        accept &= _best_edge_per_node(r_dst, predecessor_key[remaining], num_nodes)
        if not accept.any():
            break
        selected[candidate[remaining[accept]]] = True
        has_successor[r_src[accept]] = True
        has_predecessor[r_dst[accept]] = True
        remaining = remaining[~has_successor[r_src] & ~has_predecessor[r_dst]]
    return selected


def build_tracks(
    num_nodes: int,
    edge_index: torch.Tensor,
    scores: torch.Tensor | None,
    score_cut: float = 0.5,
    min_length: int = 3,
    method: Method = "components",
    device: torch.device | str | None = None,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Build track candidates from scored edges.

    Args:
        num_nodes: number of hits N in the event graph.
        edge_index: LongTensor [2, E] of hit indices; for ``walkthrough`` the direction
            ``edge_index[0] -> edge_index[1]`` is the direction of flight (inner to outer).
        scores: edge scores [E], or None to keep every edge.
        score_cut: edges with ``score > score_cut`` are kept.
        min_length: candidates with fewer hits are dissolved (their hits get ``-1``).
        method: ``components`` (connected components) or ``walkthrough`` (components split into
            simple paths along their longest paths, see :func:`walkthrough_edges`).
        device: where to compute (default: the device of ``edge_index``).
        backend: connected-components backend (see :func:`connected_components`).

    Returns:
        LongTensor [N] on ``device``: ``-1`` for hits in no track, else track ids ``0..K-1``
        numbered in the order of each track's lowest hit index.
    """
    _check_graph(num_nodes, edge_index, scores)
    if min_length < 1:
        raise TrackGNNError(f"build_tracks: min_length must be >= 1, got {min_length}")
    if method not in ("components", "walkthrough"):
        raise TrackGNNError(f"build_tracks: unknown method {method!r} (components, walkthrough)")
    device = torch.device(device) if device is not None else edge_index.device
    edge_index = edge_index.to(device).long()
    if scores is not None:
        scores = scores.to(device)
        keep = scores > score_cut
        edge_index, scores = edge_index[:, keep], scores[keep]
    if method == "walkthrough":
        if scores is None:
            # Without scores every continuation is equally good: keep the given edge order.
            scores = torch.zeros(edge_index.shape[1], device=device)
        edge_index = edge_index[:, walkthrough_edges(num_nodes, edge_index, scores)]
    component = connected_components(num_nodes, edge_index, backend=backend)
    return _tracks_from_components(component, min_length)


def _tracks_from_components(component: torch.Tensor, min_length: int) -> torch.Tensor:
    """Number components of at least ``min_length`` nodes 0..K-1 (by lowest node), others -1."""
    num_nodes = component.numel()
    size = torch.bincount(component, minlength=num_nodes)
    is_track_root = size >= min_length  # component ids are their root's node index
    track_of_root = torch.cumsum(is_track_root.long(), 0) - 1
    labels = track_of_root[component]
    labels[~is_track_root[component]] = NO_TRACK
    return labels


def submission_track_ids(labels: torch.Tensor | np.ndarray) -> np.ndarray:
    """Track ids for a TrackML submission: tracks keep their id, each ``-1`` hit gets a new one."""
    labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    labels = labels.astype(np.int64, copy=True)
    alone = labels < 0
    first_free = int(labels.max()) + 1 if labels.size and not alone.all() else 0
    labels[alone] = first_free + np.arange(int(alone.sum()), dtype=np.int64)
    return labels


def write_submission(
    hit_id: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    path: str | Path,
    all_hit_ids: np.ndarray | None = None,
) -> pd.DataFrame:
    """Write the TrackML submission CSV ``hit_id,track_id`` atomically and return it.

    Args: as :func:`submission_frame`, and ``path``, the CSV to write.
    """
    submission = submission_frame(hit_id, labels, path, all_hit_ids)
    with atomic_path(path) as tmp:
        submission.to_csv(tmp, index=False)
    return submission


def submission_frame(
    hit_id: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    path: str | Path,
    all_hit_ids: np.ndarray | None = None,
) -> pd.DataFrame:
    """The TrackML submission ``hit_id,track_id`` of an event's track labels, by hit id.

    Args:
        hit_id: TrackML hit id of each graph node [N].
        labels: output of :func:`build_tracks` [N] (``-1`` = no track).
        path: what errors name (the submission's file or event).
        all_hit_ids: every hit id of the event, when the graph holds only some of them; hits
            missing from the graph get a track of their own.
    """
    hit_id = hit_id.cpu().numpy() if isinstance(hit_id, torch.Tensor) else np.asarray(hit_id)
    labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if hit_id.shape != labels.shape or hit_id.ndim != 1:
        raise TrackGNNError(
            f"{path}: hit_id {list(hit_id.shape)} and labels {list(labels.shape)} differ in shape"
        )
    if len(np.unique(hit_id)) != len(hit_id):
        raise TrackGNNError(f"{path}: hit_id values are not unique")
    hit_id = hit_id.astype(np.int64)
    labels = labels.astype(np.int64)
    if all_hit_ids is not None:
        all_hit_ids = np.asarray(all_hit_ids, dtype=np.int64)
        unknown = ~np.isin(hit_id, all_hit_ids)
        if unknown.any():
            raise TrackGNNError(f"{path}: graph hit_id {hit_id[unknown][0]} is not in the event")
        missing = np.setdiff1d(all_hit_ids, hit_id)
        hit_id = np.concatenate([hit_id, missing])
        labels = np.concatenate([labels, np.full(missing.shape, NO_TRACK, dtype=np.int64)])
    order = np.argsort(hit_id, kind="stable")
    return pd.DataFrame({"hit_id": hit_id[order], "track_id": submission_track_ids(labels[order])})
