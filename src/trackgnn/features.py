"""Per-hit features and the truth graph of one event (pipeline stage ``features``).

The output is an :class:`trackgnn.event_data.EventHits` (see :func:`build_features`), saved per
event with :func:`trackgnn.event_data.save_event`. Every later stage reads it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from trackgnn.event_data import EventHits, save_event
from trackgnn.geometry import Detector
from trackgnn.io import Event, read_event
from trackgnn.models.edges import NO_CLUSTER_ETA
from trackgnn.simulation.digitisation import ENDCAP_DEPTH_FACTOR

FEATURE_NAMES: list[str] = [
    "r",
    "phi",
    "z",
    "eta",
    "cell_count",
    "cell_value",
    "extent_u",
    "extent_v",
]

# particle_id bit fields of the TrackML dataset: generation bits 24-35, secondary id bits 12-23.
_GENERATION_SHIFT, _SECONDARY_SHIFT, _FIELD_MASK = 24, 12, 0xFFF


def pseudorapidity(r: np.ndarray, z: np.ndarray) -> np.ndarray:
    """eta = -ln tan(theta / 2) of points (or momenta) with transverse part r and longitudinal z."""
    theta = np.arctan2(r, z)
    return -np.log(np.tan(np.clip(theta, 1e-7, np.pi - 1e-7) / 2.0))


def cell_features(hit_id: np.ndarray, cells: pd.DataFrame | None) -> np.ndarray:
    """Per-hit cluster shape [N, 4]: cell count, total value, extent in u (ch0) and v (ch1).

    Hits are matched by ``hit_id``; without a cells file every entry is zero.
    """
    out = np.zeros((len(hit_id), 4), dtype=np.float32)
    if cells is None or len(cells) == 0:
        return out
    order = np.argsort(hit_id, kind="stable")
    pos = order[np.searchsorted(hit_id, cells["hit_id"].to_numpy(), sorter=order)]
    n = len(hit_id)
    ch0 = cells["ch0"].to_numpy().astype(np.int64)
    ch1 = cells["ch1"].to_numpy().astype(np.int64)
    out[:, 0] = np.bincount(pos, minlength=n)
    out[:, 1] = np.bincount(pos, weights=cells["value"].to_numpy(np.float64), minlength=n)
    for col, ch in ((2, ch0), (3, ch1)):
        lo = np.full(n, np.iinfo(np.int64).max)
        hi = np.full(n, np.iinfo(np.int64).min)
        np.minimum.at(lo, pos, ch)
        np.maximum.at(hi, pos, ch)
        has = out[:, 0] > 0
        out[has, col] = hi[has] - lo[has] + 1
    return out


def cluster_eta(
    hits: pd.DataFrame, shape: np.ndarray, detector: Detector | None = None
) -> np.ndarray:
    """Pseudorapidity of the track direction each pixel hit's cluster implies, ``[N]``.

    The global cluster shape of "Beyond 4D tracking: using cluster shapes for track seeding"
    (arXiv:2012.04533): a track crossing a sensor of charge-collection depth ``t`` at incidence
    ``tan a`` fires on average ``1 + t * tan a / pitch`` channels along each local axis, so
    ``(extent - 1) * pitch`` estimates ``t * |tan a|`` in u and in v, and the module's rotation
    takes that local direction to the global frame. The extents give no signs: of the sign
    choices the one closest to the line from the origin is kept (tracks come from the beam spot).
    Strips measure one axis only, so strip hits (and hits without cells, or on no known module)
    get :data:`~trackgnn.models.edges.NO_CLUSTER_ETA`. Values are clipped to [-4, 4]: a track
    along a module's normal fires one cell and its direction is known only to lie beyond.

    Args:
        hits: the event's hits (``hit_id, x, y, z, volume_id, layer_id, module_id``).
        shape: ``[N, 4]`` from :func:`cell_features` (cell count, value, extent u, extent v).
        detector: the TrackML detector (default: the one shipped with the package).
    """
    det = Detector.load() if detector is None else detector
    out = np.full(len(hits), NO_CLUSTER_ETA)
    module = det.find_modules(
        *(hits[c].to_numpy(np.int64) for c in ("volume_id", "layer_id", "module_id"))
    )
    known = np.flatnonzero((module >= 0) & (shape[:, 0] > 0))
    known = known[det.is_pixel[module[known]]]
    if len(known) == 0:
        return out
    m = module[known]
    endcap = ~det.layer_is_barrel[det.module_layer[m]]
    depth = det.thickness[m] * np.where(endcap, ENDCAP_DEPTH_FACTOR, 1.0)
    lu = np.maximum(shape[known, 2] - 1.0, 0.0) * det.pitch_u[m]
    lv = np.maximum(shape[known, 3] - 1.0, 0.0) * det.pitch_v[m]
    position = hits[["x", "y", "z"]].to_numpy(np.float64)[known]
    # Flipping the whole vector gives the same line, so (+u, +v) and (+u, -v) are the choices.
    best = np.zeros((len(known), 3))
    best_alignment = np.full(len(known), -1.0)
    for sign_v in (1.0, -1.0):
        direction = np.einsum(
            "nij,nj->ni", det.rotation[m], np.stack([lu, sign_v * lv, depth], axis=1)
        )
        alignment = np.abs(np.einsum("ni,ni->n", direction, position)) / np.linalg.norm(
            direction, axis=1
        )
        better = alignment > best_alignment
        best[better], best_alignment[better] = direction[better], alignment[better]
    # The sign of the whole vector: pointing away from the origin.
    best *= np.where(np.einsum("ni,ni->n", best, position) < 0, -1.0, 1.0)[:, None]
    out[known] = np.clip(pseudorapidity(np.hypot(best[:, 0], best[:, 1]), best[:, 2]), -4.0, 4.0)
    return out


def truth_graph(
    hit_index: np.ndarray,
    particle_id: np.ndarray,
    distance: np.ndarray,
    layer_key: np.ndarray,
) -> np.ndarray:
    """Directed truth edges [2, T] between consecutive layers of each particle's hits.

    Hits of one particle are ordered by ``distance`` from its production vertex; consecutive hits on
    the same layer (module overlaps) form a group, and every hit of a group is connected to every
    hit of the next group. Hits on the same layer are never connected to each other.

    Args:
        hit_index: row index of each signal hit (noise excluded) in the event's hit table.
        particle_id: the hit's particle (non-zero).
        distance: distance of the hit from its particle's production vertex.
        layer_key: an integer identifying the hit's (volume, layer).
    """
    if len(hit_index) == 0:
        return np.zeros((2, 0), dtype=np.int64)
    order = np.lexsort((distance, particle_id))
    hit_index, particle_id, layer_key = hit_index[order], particle_id[order], layer_key[order]
    new_particle = np.r_[True, particle_id[1:] != particle_id[:-1]]
    new_group = new_particle | np.r_[True, layer_key[1:] != layer_key[:-1]]
    group = np.cumsum(new_group) - 1  # global group id, consecutive within a particle
    starts = np.flatnonzero(new_group)
    sizes = np.diff(np.r_[starts, len(group)])
    # A group g links to g + 1 when both belong to the same particle.
    linked = np.r_[~new_particle[starts[1:]], False]
    g = np.flatnonzero(linked)
    n_src, n_dst = sizes[g], sizes[g + 1]
    n_pairs = n_src * n_dst
    pair_group = np.repeat(np.arange(len(g)), n_pairs)
    offset = np.arange(n_pairs.sum()) - np.repeat(np.cumsum(n_pairs) - n_pairs, n_pairs)
    src = starts[g][pair_group] + offset // n_dst[pair_group]
    dst = starts[g + 1][pair_group] + offset % n_dst[pair_group]
    return np.stack([hit_index[src], hit_index[dst]]).astype(np.int64)


def build_features(event: Event) -> EventHits:
    """Features, per-hit truth attributes and the truth graph of ``event``.

    Fields: ``event_id``, ``hit_id``, ``x`` [N, 8] (normalised features, ``feature_names``),
    raw ``r, phi, z, eta``, per-hit particle attributes ``particle_id`` (0 = noise), ``pt``,
    ``particle_eta``, ``nhits``, ``primary``, ``truth_edges`` [2, T], and ``cluster_eta`` (the
    track direction from the cluster shape, for the filter's edges). Without truth, the
    particle attributes are zero and the truth graph empty.
    """
    hits = event.hits
    n = len(hits)
    x, y, z = (hits[c].to_numpy(np.float64) for c in ("x", "y", "z"))
    r = np.hypot(x, y)
    phi = np.arctan2(y, x)
    eta = pseudorapidity(r, z)
    hit_id = hits["hit_id"].to_numpy()
    cells = cell_features(hit_id, event.cells)
    direction_eta = cluster_eta(hits, cells)
    features = np.stack(
        [
            r / 1000.0,
            phi / np.pi,
            z / 1000.0,
            np.clip(eta, -4.0, 4.0) / 4.0,
            np.log1p(cells[:, 0]),
            np.log1p(cells[:, 1]),
            np.log1p(cells[:, 2]),
            np.log1p(cells[:, 3]),
        ],
        axis=1,
    ).astype(np.float32)

    particle_id = np.zeros(n, dtype=np.int64)
    pt = np.zeros(n, dtype=np.float32)
    particle_eta = np.zeros(n, dtype=np.float32)
    nhits = np.zeros(n, dtype=np.int64)
    primary = np.zeros(n, dtype=bool)
    truth_edges = np.zeros((2, 0), dtype=np.int64)
    if event.truth is not None and event.particles is not None:
        truth = event.truth.set_index("hit_id").reindex(hit_id)
        particle_id = truth["particle_id"].fillna(0).to_numpy(np.int64).copy()
        particles = event.particles.set_index("particle_id")
        signal = np.flatnonzero(particle_id != 0)
        known = np.isin(particle_id[signal], particles.index.to_numpy())
        signal = signal[known]
        p = particles.reindex(particle_id[signal])
        px, py, pz = (p[c].to_numpy(np.float64) for c in ("px", "py", "pz"))
        pt[signal] = np.hypot(px, py)
        particle_eta[signal] = pseudorapidity(np.hypot(px, py), pz)
        counts = pd.Series(particle_id[particle_id != 0]).value_counts()
        nhits[signal] = counts.reindex(particle_id[signal]).to_numpy()
        pid = particle_id[signal]
        primary[signal] = ((pid >> _GENERATION_SHIFT) & _FIELD_MASK == 0) & (
            (pid >> _SECONDARY_SHIFT) & _FIELD_MASK == 0
        )
        vertex = p[["vx", "vy", "vz"]].to_numpy(np.float64)
        distance = np.linalg.norm(np.stack([x, y, z], 1)[signal] - vertex, axis=1)
        layer_key = (
            hits["volume_id"].to_numpy(np.int64)[signal] * 1000
            + hits["layer_id"].to_numpy(np.int64)[signal]
        )
        truth_edges = truth_graph(signal, pid, distance, layer_key)

    return EventHits(
        event_id=int(event.event_id),
        hit_id=torch.from_numpy(hit_id.astype(np.int64)),
        x=torch.from_numpy(features),
        feature_names=list(FEATURE_NAMES),
        r=torch.from_numpy(r.astype(np.float32)),
        phi=torch.from_numpy(phi.astype(np.float32)),
        z=torch.from_numpy(z.astype(np.float32)),
        eta=torch.from_numpy(eta.astype(np.float32)),
        particle_id=torch.from_numpy(particle_id),
        pt=torch.from_numpy(pt),
        particle_eta=torch.from_numpy(particle_eta),
        nhits=torch.from_numpy(nhits),
        primary=torch.from_numpy(primary),
        truth_edges=torch.from_numpy(truth_edges),
        cluster_eta=torch.from_numpy(direction_eta.astype(np.float32)),
    )


def run_features(
    event_prefix: str | Path, output: str | Path, require_truth: bool = False
) -> EventHits:
    """Read a TrackML event, build its features and save them atomically to ``output``.

    ``require_truth``: the event's truth and particles files must exist (a run that trains or
    evaluates on it); without them the features carry no truth graph.
    """
    features = build_features(read_event(event_prefix, require_truth=require_truth))
    save_event(features, output)
    return features
