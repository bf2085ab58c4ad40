"""Edge filter: an MLP that scores each candidate edge from the features of its two hits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from trackgnn.models.edges import EDGE_FEATURES, edge_features
from trackgnn.models.mlp import PeriodicInput, apply_in_chunks, make_mlp


def edge_inputs(x: Tensor, geometry: Tensor, edge_index: Tensor) -> Tensor:
    """Filter input ``[E, 2F + 6]``: source and target hit features, then :func:`edge_features`."""
    src, dst = edge_index
    return torch.cat([x[src], x[dst], edge_features(geometry, edge_index)], dim=1)


class FilterNet(nn.Module):
    """Binary edge classifier; ``forward`` returns logits ``[E]``.

    ``angle_columns`` name the hit features holding phi / pi; they enter as cos and sin.
    """

    def __init__(
        self,
        node_dim: int,
        hidden: int = 256,
        n_layers: int = 4,
        activation: str = "silu",
        layer_norm: bool = True,
        angle_columns: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.node_dim = node_dim
        self.inputs = PeriodicInput(node_dim, angle_columns)
        self.net = make_mlp(
            2 * self.inputs.out_dim + len(EDGE_FEATURES),
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
        }

    @property
    def hparams(self) -> dict[str, Any]:
        """Constructor arguments: ``FilterNet(**net.hparams)`` rebuilds the architecture."""
        return dict(self._hparams)

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
