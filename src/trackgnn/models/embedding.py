"""Metric-learning embedding: an MLP mapping each hit to a space where a track's hits lie close."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from trackgnn.models.mlp import PeriodicInput, apply_in_chunks, make_mlp


class EmbeddingNet(nn.Module):
    """MLP from per-hit features ``[N, in_dim]`` to an (unnormalised) embedding ``[N, emb_dim]``.

    ``angle_columns`` name the inputs holding phi / pi; they enter as cos and sin.
    """

    def __init__(
        self,
        in_dim: int,
        emb_dim: int = 8,
        hidden: int = 256,
        n_layers: int = 4,
        activation: str = "tanh",
        layer_norm: bool = True,
        angle_columns: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.emb_dim = emb_dim
        self.inputs = PeriodicInput(in_dim, angle_columns)
        self.net = make_mlp(self.inputs.out_dim, hidden, emb_dim, n_layers, activation, layer_norm)
        self._hparams = {
            "angle_columns": list(angle_columns),
            "in_dim": in_dim,
            "emb_dim": emb_dim,
            "hidden": hidden,
            "n_layers": n_layers,
            "activation": activation,
            "layer_norm": layer_norm,
        }

    @property
    def hparams(self) -> dict[str, Any]:
        """Constructor arguments: ``EmbeddingNet(**net.hparams)`` rebuilds the architecture."""
        return dict(self._hparams)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.inputs(x))

    @torch.no_grad()
    def embed(self, x: Tensor, chunk_size: int = 100_000) -> Tensor:
        """Inference in chunks of hits so activation memory does not grow with the event.

        Chunks are tile-padded (:func:`~trackgnn.models.mlp.apply_in_chunks`): on the CPU the
        embedding, hence the graph, is bitwise the same for every ``chunk_size``.
        """
        if len(x) == 0:
            return x.new_zeros((0, self.emb_dim))
        return apply_in_chunks(self, x, chunk_size)
