"""Edge filter: an MLP that scores each candidate edge from the features of its two hits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from trackgnn.errors import InputError
from trackgnn.event_data import EventHits
from trackgnn.models.edges import (
    CLUSTER_EDGE_FEATURES,
    EDGE_FEATURES,
    cluster_edge_features,
    edge_features,
    geometry_tensor,
)
from trackgnn.models.mlp import PeriodicInput, apply_in_chunks, make_mlp


def edge_inputs(x: Tensor, geometry: Tensor, edge_index: Tensor) -> Tensor:
    """Filter input ``[E, 2F + 6]``: source and target hit features, then :func:`edge_features`
    (and :func:`cluster_edge_features`, ``[E, 2F + 8]``, when ``geometry`` has ``cluster_eta``)."""
    src, dst = edge_index
    parts = [x[src], x[dst], edge_features(geometry, edge_index)]
    if geometry.shape[1] > 4:
        parts.append(cluster_edge_features(geometry, edge_index))
    return torch.cat(parts, dim=1)


class FilterNet(nn.Module):
    """Binary edge classifier; ``forward`` returns logits ``[E]``.

    ``angle_columns`` name the hit features holding phi / pi; they enter as cos and sin.
    ``cluster_direction`` adds :data:`~trackgnn.models.edges.CLUSTER_EDGE_FEATURES` to each
    edge's inputs (the geometry then carries ``cluster_eta``, see :meth:`geometry`).
    """

    def __init__(
        self,
        node_dim: int,
        hidden: int = 256,
        n_layers: int = 4,
        activation: str = "silu",
        layer_norm: bool = True,
        angle_columns: Sequence[int] = (),
        cluster_direction: bool = False,
    ) -> None:
        super().__init__()
        self.node_dim = node_dim
        self.cluster_direction = cluster_direction
        self.inputs = PeriodicInput(node_dim, angle_columns)
        n_edge = len(EDGE_FEATURES) + (len(CLUSTER_EDGE_FEATURES) if cluster_direction else 0)
        self.net = make_mlp(
            2 * self.inputs.out_dim + n_edge,
            hidden,
            1,
            n_layers,
            activation,
            layer_norm,
        )
        self._hparams = {
            "angle_columns": list(angle_columns),
            "node_dim": node_dim,
            "hidden": hidden,
            "n_layers": n_layers,
            "activation": activation,
            "layer_norm": layer_norm,
            "cluster_direction": cluster_direction,
        }

    @property
    def hparams(self) -> dict[str, Any]:
        """Constructor arguments: ``FilterNet(**net.hparams)`` rebuilds the architecture."""
        return dict(self._hparams)

    def geometry(self, hits: EventHits) -> Tensor:
        """The raw hit coordinates ``[N, 4 or 5]`` this net's edge inputs are computed from."""
        cluster_eta = None
        if self.cluster_direction:
            if hits.cluster_eta is None:
                raise InputError(
                    f"event {hits.event_id}",
                    "has no cluster_eta, which this filter reads: rerun its features stage",
                )
            cluster_eta = hits.cluster_eta
        return geometry_tensor(hits.r, hits.phi, hits.z, hits.eta, cluster_eta)

    def forward(self, x: Tensor, geometry: Tensor, edge_index: Tensor) -> Tensor:
        return self.net(edge_inputs(self.inputs(x), geometry, edge_index)).squeeze(-1)

    @torch.no_grad()
    def scores(
        self, x: Tensor, geometry: Tensor, edge_index: Tensor, chunk_edges: int = 800_000
    ) -> Tensor:
        """Sigmoid scores ``[E]`` computed ``chunk_edges`` edges at a time (bounded peak memory).

        Each edge's score depends only on its own two hits and the chunks are tile-padded
        (:func:`~trackgnn.models.mlp.apply_in_chunks`), so on the CPU the scores are bitwise
        the same for every ``chunk_edges``.
        """
        if edge_index.shape[1] == 0:
            return x.new_zeros(0)
        return apply_in_chunks(
            lambda edges: torch.sigmoid(self(x, geometry, edges)), edge_index, chunk_edges, dim=1
        )
