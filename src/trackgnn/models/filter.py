"""Edge filter: an MLP that scores each candidate edge from the features of its two hits."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from trackgnn.models.mlp import PeriodicInput, apply_in_chunks, make_mlp

#: Edge features appended to the two hits' features: differences of the hits' r, phi, z, eta
#: (mm, rad, mm, -), and the direction of the segment between the hits against the direction
#: of its inner hit seen from the origin, in polar angle (``dtheta``) and azimuth (``dalpha``),
#: in rad. A track from near the origin has both small; unlike dz / dr (which explodes for
#: endcap hit pairs with dr near 0) they are bounded, and they spare the MLP learning divisions.
EDGE_FEATURES = ("dr", "dphi", "dz", "deta", "dtheta", "dalpha")
#: The scale dividing each feature so that the values of plausible (near-track) edges are of
#: order one. (A symmetric-log transform of the features was measured to train worse.)
EDGE_FEATURE_SCALES = (100.0, 0.1, 100.0, 0.1, 0.3, 0.3)


def wrap_phi(dphi: Tensor) -> Tensor:
    """Wrap an azimuth difference into [-pi, pi)."""
    return torch.remainder(dphi + math.pi, 2 * math.pi) - math.pi


def geometry_tensor(r: Tensor, phi: Tensor, z: Tensor, eta: Tensor) -> Tensor:
    """Stack raw hit coordinates ``[N, 4]`` (r mm, phi rad, z mm, eta) for :func:`edge_inputs`."""
    return torch.stack([r, phi, z, eta], dim=1).to(torch.float32)


def edge_features(geometry: Tensor, edge_index: Tensor) -> Tensor:
    """Scaled :data:`EDGE_FEATURES` ``[E, 6]`` of edges (source = inner hit)."""
    inner, outer = geometry[edge_index[0]], geometry[edge_index[1]]
    delta = outer - inner
    delta[:, 1] = wrap_phi(delta[:, 1])
    r_in, z_in, r_out = inner[:, 0], inner[:, 2], outer[:, 0]
    # Segment in the inner hit's frame (x along its radius): no absolute-phi dependence.
    seg_x = r_out * torch.cos(delta[:, 1]) - r_in
    seg_y = r_out * torch.sin(delta[:, 1])
    seg_theta = torch.atan2(torch.hypot(seg_x, seg_y), delta[:, 2])
    dtheta = seg_theta - torch.atan2(r_in, z_in)
    dalpha = torch.atan2(seg_y, seg_x)  # 0 when the segment points radially outwards
    features = torch.cat([delta, dtheta[:, None], dalpha[:, None]], dim=1)
    return features / features.new_tensor(EDGE_FEATURE_SCALES)


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
