"""Edge truth: which candidate edges are truth-graph edges and which join hits of one particle."""

from __future__ import annotations

import torch
from torch import Tensor


def undirected_keys(edge_index: Tensor, num_nodes: int) -> Tensor:
    """One int64 key per edge, the same for both orientations: ``min * N + max``."""
    low = torch.minimum(edge_index[0], edge_index[1])
    high = torch.maximum(edge_index[0], edge_index[1])
    return low * num_nodes + high


def truth_edge_mask(edge_index: Tensor, truth_edges: Tensor, num_nodes: int) -> Tensor:
    """``y [E]``: the edge is in the (directed) truth graph in either orientation."""
    if edge_index.shape[1] == 0 or truth_edges.shape[1] == 0:
        return torch.zeros(edge_index.shape[1], dtype=torch.bool, device=edge_index.device)
    truth_keys = undirected_keys(truth_edges.to(edge_index.device), num_nodes)
    return torch.isin(undirected_keys(edge_index, num_nodes), truth_keys)


def same_particle_mask(edge_index: Tensor, particle_id: Tensor) -> Tensor:
    """``y_pid [E]``: both hits belong to the same particle, and it is not noise (id 0)."""
    pid_src = particle_id[edge_index[0]]
    return (pid_src == particle_id[edge_index[1]]) & (pid_src != 0)


def edge_labels(
    edge_index: Tensor, truth_edges: Tensor, particle_id: Tensor
) -> tuple[Tensor, Tensor]:
    """``(y, y_pid)`` for candidate edges: truth-graph edge, and same non-noise particle."""
    num_nodes = particle_id.shape[0]
    return (
        truth_edge_mask(edge_index, truth_edges, num_nodes),
        same_particle_mask(edge_index, particle_id.to(edge_index.device)),
    )


def unique_truth_edges(truth_edges: Tensor, num_nodes: int) -> Tensor:
    """The truth graph's unordered edges ``[2, T']`` (each pair once, smaller index first)."""
    keys = torch.unique(undirected_keys(truth_edges, num_nodes))
    return torch.stack([keys // num_nodes, keys % num_nodes])
