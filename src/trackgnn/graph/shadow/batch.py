"""The minibatch container every ShaDow sampler returns, and the argument check they share."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from trackgnn.errors import TrackGNNError


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


def check_positive_int(value: object, name: str) -> int:
    """``value`` when it is an int >= 1 (not a bool); otherwise a TrackGNNError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TrackGNNError(f"ShaDow sampler: {name} must be a positive int, got {value!r}")
    return value
