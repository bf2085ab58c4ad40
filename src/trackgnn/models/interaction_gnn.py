"""The Interaction GNN edge classifier (Algorithm 1 of the ShaDow scaling paper).

One class serves every training mode (full graphs, ShaDow minibatches, data-parallel): it sees a
graph as node features, edge features and a COO ``edge_index`` and returns one logit per edge.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from trackgnn.models.edges import EDGE_FEATURES
from trackgnn.models.mlp import PeriodicInput, apply_in_chunks, make_mlp

EDGE_FEATURE_DIM = len(EDGE_FEATURES)


class InteractionLayer(nn.Module):
    """One message-passing iteration of the Interaction Network.

    The edge MLP sees ``[edge, source node, destination node]``; each node sums the new edge states
    of the edges it is the destination of and of those it is the source of, and the node MLP sees
    ``[sum as destination, sum as source, its own state]``. With ``sum_max`` aggregation each
    node also takes the element-wise maximum of each set (0 for a node without such edges), as
    in the Exa.TrkX Interaction GNN's ``sum_max``: where a hit has tens of candidate edges, a sum
    drowns the one compatible neighbour that a maximum keeps.

    Args:
        node_in: width of the node input (hidden, or 2 x hidden with concatenated skips).
        edge_in: width of the edge input.
        hidden: width of the outputs.
        mlp_layers: hidden layers per MLP.
        layer_norm: LayerNorm in the MLPs.
        aggregation: ``sum``, or ``sum_max`` (sum and maximum concatenated).
    """

    def __init__(
        self,
        node_in: int,
        edge_in: int,
        hidden: int,
        mlp_layers: int,
        layer_norm: bool,
        aggregation: Literal["sum", "sum_max"] = "sum",
    ) -> None:
        super().__init__()
        self.aggregation = aggregation
        n_messages = 2 if aggregation == "sum" else 4
        self.edge_mlp = make_mlp(
            edge_in + 2 * node_in, hidden, hidden, mlp_layers, "silu", layer_norm
        )
        self.node_mlp = make_mlp(
            node_in + n_messages * hidden, hidden, hidden, mlp_layers, "silu", layer_norm
        )

    def forward(
        self, x: Tensor, e: Tensor, edge_index: Tensor, edge_chunk: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Return the new node states [N, hidden] and edge states [E, hidden].

        With ``edge_chunk`` the edge MLP runs on that many edges at a time (inference: a chunk's
        activations stay in the CPU caches; each edge's result does not depend on the chunking).
        """
        src, dst = edge_index
        if edge_chunk is None:
            e_new = self.edge_mlp(torch.cat([e, x[src], x[dst]], dim=1))
        else:
            e_new = apply_in_chunks(
                lambda rows: self.edge_mlp(torch.cat([e[rows], x[src[rows]], x[dst[rows]]], 1)),
                torch.arange(e.shape[0], device=e.device),
                edge_chunk,
            )
        # index_add_ in float32 even under autocast: sums of many low-precision messages drift.
        e_sum = e_new.float()
        m_dst = torch.zeros(x.shape[0], e_new.shape[1], device=x.device).index_add_(0, dst, e_sum)
        m_src = torch.zeros(x.shape[0], e_new.shape[1], device=x.device).index_add_(0, src, e_sum)
        messages = [m_dst, m_src]
        if self.aggregation == "sum_max":
            messages += [_scatter_max(e_sum, dst, x.shape[0]), _scatter_max(e_sum, src, x.shape[0])]
        x_new = self.node_mlp(torch.cat([m.to(x.dtype) for m in messages] + [x], dim=1))
        return x_new, e_new


def _scatter_max(values: Tensor, index: Tensor, n: int) -> Tensor:
    """Row-wise maximum ``[n, D]`` of ``values`` ``[E, D]`` grouped by ``index``; 0 for no rows."""
    out = torch.zeros(n, values.shape[1], device=values.device, dtype=values.dtype)
    return out.scatter_reduce(
        0, index[:, None].expand_as(values), values, "amax", include_self=False
    )


class InteractionGNN(nn.Module):
    """Node and edge encoders, ``n_iterations`` interaction layers, and an edge-score head.

    Args:
        node_features: input features per node.
        edge_features: input features per edge (:data:`trackgnn.models.edges.EDGE_FEATURES`).
        hidden: latent width.
        n_iterations: message-passing iterations (L).
        mlp_layers: hidden layers in every MLP.
        layer_norm: LayerNorm in the MLPs.
        skip: ``concat`` feeds ``[state, encoded input]`` to each iteration (Algorithm 1);
            ``residual`` adds each iteration's output to its input instead.
        checkpointing: recompute each iteration in the backward pass instead of storing its
            activations (less memory, about one extra forward).
        angle_columns: node features holding phi / pi; they enter as cos and sin.
        aggregation: how each node gathers its edges' states (see :class:`InteractionLayer`).
    """

    def __init__(
        self,
        node_features: int,
        edge_features: int = EDGE_FEATURE_DIM,
        hidden: int = 64,
        n_iterations: int = 8,
        mlp_layers: int = 2,
        layer_norm: bool = True,
        skip: Literal["concat", "residual"] = "concat",
        checkpointing: bool = False,
        angle_columns: Sequence[int] = (),
        aggregation: Literal["sum", "sum_max"] = "sum",
    ) -> None:
        super().__init__()
        self.skip = skip
        self.checkpointing = checkpointing
        self.inputs = PeriodicInput(node_features, angle_columns)
        self.node_encoder = make_mlp(
            self.inputs.out_dim, hidden, hidden, mlp_layers, "silu", layer_norm
        )
        self.edge_encoder = make_mlp(edge_features, hidden, hidden, mlp_layers, "silu", layer_norm)
        width = 2 * hidden if skip == "concat" else hidden
        self.layers = nn.ModuleList(
            InteractionLayer(width, width, hidden, mlp_layers, layer_norm, aggregation)
            for _ in range(n_iterations)
        )
        self.edge_head = make_mlp(width, hidden, 1, mlp_layers, "silu", layer_norm)

    def _iteration(
        self,
        layer: InteractionLayer,
        x: Tensor,
        e: Tensor,
        x0: Tensor,
        e0: Tensor,
        ei: Tensor,
        edge_chunk: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        if self.skip == "concat":
            return layer(torch.cat([x, x0], 1), torch.cat([e, e0], 1), ei, edge_chunk)
        dx, de = layer(x, e, ei, edge_chunk)
        return x + dx, e + de

    def forward(
        self, x: Tensor, edge_attr: Tensor, edge_index: Tensor, edge_chunk: int | None = None
    ) -> Tensor:
        """Edge logits [E] of a graph with node features ``x`` [N, F] and ``edge_attr`` [E, 6].

        ``edge_chunk`` (inference only: without gradients) runs the per-edge MLPs on that many
        edges at a time, which bounds their activation memory and keeps it in the CPU caches.
        """
        if edge_chunk is not None and torch.is_grad_enabled():
            raise ValueError("edge_chunk is for inference (torch.no_grad or inference_mode)")
        x0 = self.node_encoder(self.inputs(x))
        e0 = self._edge_rows(self.edge_encoder, edge_attr, edge_chunk)
        h, e = x0, e0
        for layer in self.layers:
            if self.checkpointing and self.training and torch.is_grad_enabled():
                h, e = checkpoint(
                    self._iteration, layer, h, e, x0, e0, edge_index, use_reentrant=False
                )
            else:
                h, e = self._iteration(layer, h, e, x0, e0, edge_index, edge_chunk)
        final = torch.cat([e, e0], 1) if self.skip == "concat" else e
        return self._edge_rows(self.edge_head, final, edge_chunk).squeeze(-1)

    @staticmethod
    def _edge_rows(mlp: nn.Module, rows: Tensor, edge_chunk: int | None) -> Tensor:
        """A per-edge MLP on all rows at once, or ``edge_chunk`` rows at a time."""
        return mlp(rows) if edge_chunk is None else apply_in_chunks(mlp, rows, edge_chunk)
