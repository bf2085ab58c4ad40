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


def geometry_tensor(
    r: Tensor, phi: Tensor, z: Tensor, eta: Tensor, cluster_eta: Tensor | None = None
) -> Tensor:
    """Stack raw hit coordinates ``[N, 4]`` (r mm, phi rad, z mm, eta) for :func:`edge_features`,
    with ``cluster_eta`` as a fifth column for :func:`cluster_edge_features`."""
    columns = [r, phi, z, eta] + ([] if cluster_eta is None else [cluster_eta])
    return torch.stack(columns, dim=1).to(torch.float32)


#: ``cluster_eta`` of a hit whose cluster implies no direction (strips); real values are in
#: [-4, 4]. (Event files hold no NaN.)
NO_CLUSTER_ETA = 9.0
#: Edge features of :func:`cluster_edge_features`: how far the segment's pseudorapidity is from
#: the direction the inner and the outer hit's clusters imply (0 where a hit has none).
CLUSTER_EDGE_FEATURES = ("deta_cluster_inner", "deta_cluster_outer")


def _segment(geometry: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Hit differences ``[E, 4]`` and the segment in the inner hit's frame (x along its radius,
    so no absolute-phi dependence): ``delta, seg_x, seg_y, seg_rho``."""
    inner, outer = geometry[edge_index[0], :4], geometry[edge_index[1], :4]
    delta = outer - inner
    delta[:, 1] = wrap_phi(delta[:, 1])
    r_in, r_out = inner[:, 0], outer[:, 0]
    seg_x = r_out * torch.cos(delta[:, 1]) - r_in
    seg_y = r_out * torch.sin(delta[:, 1])
    return delta, seg_x, seg_y, torch.hypot(seg_x, seg_y)


def edge_features(geometry: Tensor, edge_index: Tensor) -> Tensor:
    """Scaled :data:`EDGE_FEATURES` ``[E, 6]`` of edges (source = inner hit).

    ``geometry`` is :func:`geometry_tensor` of the event's hits.
    """
    delta, seg_x, seg_y, seg_rho = _segment(geometry, edge_index)
    r_in, z_in = geometry[edge_index[0], 0], geometry[edge_index[0], 2]
    seg_theta = torch.atan2(seg_rho, delta[:, 2])
    dtheta = seg_theta - torch.atan2(r_in, z_in)
    dalpha = torch.atan2(seg_y, seg_x)  # 0 when the segment points radially outwards
    features = torch.cat([delta, dtheta[:, None], dalpha[:, None]], dim=1)
    return features / features.new_tensor(EDGE_FEATURE_SCALES)


def cluster_edge_features(geometry: Tensor, edge_index: Tensor) -> Tensor:
    """:data:`CLUSTER_EDGE_FEATURES` ``[E, 2]``: ``|eta_segment - cluster_eta|`` of each end.

    In the barrel the vertex spread (sigma_z 55.6 mm) leaves a segment's pointing at the origin
    a weak test, but its polar angle must still match the one its hits' clusters imply.
    ``geometry`` is :func:`geometry_tensor` with ``cluster_eta``; the differences are clipped to
    2 and are 0 at hits without a cluster direction (:data:`NO_CLUSTER_ETA`: strips).
    """
    delta, _, _, seg_rho = _segment(geometry, edge_index)
    seg_eta = torch.asinh(delta[:, 2] / seg_rho.clamp(min=1e-6))
    ends = geometry[edge_index, 4]  # [2, E]
    difference = (ends - seg_eta).abs().clamp(max=2.0)
    return torch.where(ends.abs() > 4.0, 0.0, difference).T.contiguous()


def hit_edge_features(r: Tensor, phi: Tensor, z: Tensor, eta: Tensor, edge_index: Tensor) -> Tensor:
    """:func:`edge_features` from per-hit coordinates (r mm, phi rad, z mm, eta)."""
    return edge_features(geometry_tensor(r, phi, z, eta), edge_index)
