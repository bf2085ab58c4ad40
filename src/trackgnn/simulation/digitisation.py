"""Digitisation: the cells a track segment fires in a sensor, and the hit at their centroid.

The straight segment of a track through the sensor's charge-collection depth, projected onto the
module's (u, v) plane, is cut at every channel boundary it crosses; each piece fires one cell. Pixel
cells carry the path length (mm) of the track in them, with the cell-to-cell fluctuation of the
deposited charge (a Gamma factor of mean 1); strip cells are binary (value 1). Without the
fluctuation the centroid of a long pixel cluster would be exact, far better than the 9-12 um
measured in v.

The collection depth is the module thickness in the barrels and twice it in the endcaps. In the
TrackML files the pixel-endcap values are twice the geometric path length and the endcap clusters
are wider than the nominal thickness allows (1.7 cells per pixel-endcap hit against 1.35); a doubled
depth reproduces both, and brings the strip-endcap cluster sizes closer to the measured ones.

The hit is the value-weighted centroid of the cell centres, u = (ch0 + 0.5) * pitch_u - max_hu and
v = (ch1 + 0.5) * pitch_v - hv. Cluster sizes follow the geometry: about
1 + depth * tan(incidence) / pitch along each axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trackgnn.geometry import Detector

# Charge-collection depth in units of the module thickness, in the endcaps (see above).
ENDCAP_DEPTH_FACTOR = 2.0
# Relative spread of a pixel cell's value around its path length (charge deposit fluctuations).
PIXEL_VALUE_SPREAD = 0.3
# Pixel cells whose value (path-length equivalent, mm) is below this fire no readout.
PIXEL_THRESHOLD_MM = 0.025
# Grazing tracks: cap the projected length of a segment at this many thicknesses.
_MAX_TAN_INCIDENCE = 20.0
# Pieces of the segment shorter than this fraction of it (corner clips) fire no cell.
_MIN_PIECE_FRACTION = 1e-6


@dataclass
class Digits:
    """Cells and hit positions of digitised sensor crossings."""

    cell_hit: np.ndarray  # (C,) index of the crossing each cell belongs to
    ch0: np.ndarray  # (C,) int32
    ch1: np.ndarray  # (C,) int32
    value: np.ndarray  # (C,) float
    local: np.ndarray  # (N, 2) hit (u, v): value-weighted centroid of the cell centres
    position: np.ndarray  # (N, 3) global hit position


def digitise(
    detector: Detector,
    module: np.ndarray,
    local_position: np.ndarray,
    local_direction: np.ndarray,
    rng: np.random.Generator,
) -> Digits:
    """Cells and hits of crossings of ``module`` at mid-plane ``local_position`` (u, v).

    ``local_direction`` is the track's unit direction (du, dv, dw) in the module frame; ``rng``
    draws the pixel charge fluctuations.
    """
    d = detector
    n = len(module)
    endcap = ~d.layer_is_barrel[d.module_layer[module]]
    thickness = d.thickness[module] * np.where(endcap, ENDCAP_DEPTH_FACTOR, 1.0)
    pitch_u, pitch_v = d.pitch_u[module], d.pitch_v[module]
    max_hu, hv = d.max_hu[module], d.hv[module]
    dw = np.maximum(np.abs(local_direction[:, 2]), 1e-12)
    tan_u = np.clip(local_direction[:, 0] / dw, -_MAX_TAN_INCIDENCE, _MAX_TAN_INCIDENCE)
    tan_v = np.clip(local_direction[:, 1] / dw, -_MAX_TAN_INCIDENCE, _MAX_TAN_INCIDENCE)
    path = thickness * np.sqrt(1.0 + tan_u**2 + tan_v**2)

    # Segment ends in channel units (channel i spans [i, i + 1)).
    half_u = 0.5 * thickness * tan_u
    half_v = 0.5 * thickness * tan_v
    a_u = (local_position[:, 0] - half_u + max_hu) / pitch_u
    b_u = (local_position[:, 0] + half_u + max_hu) / pitch_u
    a_v = (local_position[:, 1] - half_v + hv) / pitch_v
    b_v = (local_position[:, 1] + half_v + hv) / pitch_v

    def boundaries(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(crossing, lambda) of every channel boundary strictly inside each segment."""
        lo = np.floor(np.minimum(a, b))
        count = (np.floor(np.maximum(a, b)) - lo).astype(np.int64)
        owner = np.repeat(np.arange(n), count)
        step = np.arange(len(owner)) - np.repeat(np.cumsum(count) - count, count)
        line = lo[owner] + 1.0 + step
        span = b[owner] - a[owner]
        return owner, (line - a[owner]) / span

    ou, lu = boundaries(a_u, b_u)
    ov, lv = boundaries(a_v, b_v)
    owner = np.concatenate([np.arange(n), np.arange(n), ou, ov])
    lam = np.concatenate([np.zeros(n), np.ones(n), lu, lv])
    order = np.lexsort((lam, owner))
    owner, lam = owner[order], lam[order]
    same = owner[1:] == owner[:-1]
    start, end = lam[:-1][same], lam[1:][same]
    piece_owner = owner[:-1][same]
    keep = end - start > _MIN_PIECE_FRACTION
    start, end, piece_owner = start[keep], end[keep], piece_owner[keep]
    mid = 0.5 * (start + end)
    ch0 = np.floor(a_u[piece_owner] + mid * (b_u - a_u)[piece_owner]).astype(np.int64)
    ch1 = np.floor(a_v[piece_owner] + mid * (b_v - a_v)[piece_owner]).astype(np.int64)
    mod = module[piece_owner]
    on_sensor = (ch0 >= 0) & (ch0 < d.n_channels_u[mod]) & (ch1 >= 0) & (ch1 < d.n_channels_v[mod])
    piece_owner, ch0, ch1 = piece_owner[on_sensor], ch0[on_sensor], ch1[on_sensor]
    fraction = (end - start)[on_sensor]

    # A crossing at the very edge may lose all its pieces: give it the cell under the crossing.
    lost = np.flatnonzero(np.bincount(piece_owner, minlength=n) == 0)
    if len(lost):
        mod = module[lost]
        c0 = np.floor((local_position[lost, 0] + max_hu[lost]) / pitch_u[lost]).astype(np.int64)
        c1 = np.floor((local_position[lost, 1] + hv[lost]) / pitch_v[lost]).astype(np.int64)
        piece_owner = np.concatenate([piece_owner, lost])
        ch0 = np.concatenate([ch0, np.clip(c0, 0, d.n_channels_u[mod] - 1)])
        ch1 = np.concatenate([ch1, np.clip(c1, 0, d.n_channels_v[mod] - 1)])
        fraction = np.concatenate([fraction, np.ones(len(lost))])
        order = np.argsort(piece_owner, kind="stable")
        piece_owner, ch0, ch1, fraction = (
            piece_owner[order],
            ch0[order],
            ch1[order],
            fraction[order],
        )

    shape = 1.0 / PIXEL_VALUE_SPREAD**2
    fluctuation = rng.gamma(shape, 1.0 / shape, size=len(piece_owner))
    value = np.where(
        d.is_pixel[module[piece_owner]], fraction * path[piece_owner] * fluctuation, 1.0
    )

    # Pixel readout threshold: cells the track only clips, or crosses at a steep angle with a low
    # deposit, stay below it. A hit keeps at least its largest cell.
    pixel = d.is_pixel[module[piece_owner]]
    largest = np.zeros(n)
    np.maximum.at(largest, piece_owner, value)
    keep = ~pixel | (value >= PIXEL_THRESHOLD_MM) | (value >= largest[piece_owner])
    piece_owner, ch0, ch1, value = piece_owner[keep], ch0[keep], ch1[keep], value[keep]

    weight_sum = np.bincount(piece_owner, weights=value, minlength=n)
    cu = (ch0 + 0.5) * pitch_u[piece_owner] - max_hu[piece_owner]
    cv = (ch1 + 0.5) * pitch_v[piece_owner] - hv[piece_owner]
    u = np.bincount(piece_owner, weights=value * cu, minlength=n) / weight_sum
    v = np.bincount(piece_owner, weights=value * cv, minlength=n) / weight_sum
    local = np.stack([u, v], axis=1)
    position = d.to_global(module, np.stack([u, v, np.zeros(n)], axis=1))
    return Digits(
        cell_hit=piece_owner,
        ch0=ch0.astype(np.int32),
        ch1=ch1.astype(np.int32),
        value=value,
        local=local,
        position=position,
    )
