"""Geometric features of candidate edges, shared by the filter and the GNN.

An edge runs from its source (inner) hit to its target hit; both models see the same scaled
features, computed here once.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

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
    """Stack raw hit coordinates ``[N, 4]`` (r mm, phi rad, z mm, eta) for :func:`edge_features`."""
    return torch.stack([r, phi, z, eta], dim=1).to(torch.float32)


def edge_features(geometry: Tensor, edge_index: Tensor) -> Tensor:
    """Scaled :data:`EDGE_FEATURES` ``[E, 6]`` of edges (source = inner hit).

    ``geometry`` is :func:`geometry_tensor` of the event's hits.
    """
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


def hit_edge_features(r: Tensor, phi: Tensor, z: Tensor, eta: Tensor, edge_index: Tensor) -> Tensor:
    """:func:`edge_features` from per-hit coordinates (r mm, phi rad, z mm, eta)."""
    return edge_features(geometry_tensor(r, phi, z, eta), edge_index)
