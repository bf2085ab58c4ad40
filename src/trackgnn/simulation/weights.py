"""TrackML "phase 2" hit weights.

w(hit) is proportional to w_pt(pT of its particle) * w_order(rank of the hit on its particle);
zero for noise, for particles with fewer than 4 hits and for secondaries (generation > 0); the
weights of an event sum to 1. w_pt is 0.2 below 0.5 GeV, rises linearly to 1 at 3 GeV and stays
there (0 below 0.05 GeV). w_order interpolates [10, 8, 6, 5, 3, 3, 3, 5, 6] across a particle's
hits ranked by |tz - vz|, normalised per particle; a particle counts at most 20 hits and hits
ranked 20 or later get 0.
"""

from __future__ import annotations

import numpy as np

ORDER_PROPOSAL = np.array([10.0, 8.0, 6.0, 5.0, 3.0, 3.0, 3.0, 5.0, 6.0])
ORDER_MIN_HITS = 4
ORDER_MAX_HITS = 20

# particle_id bit fields of the TrackML dataset.
VERTEX_SHIFT = 52
PRIMARY_SHIFT = 36
GENERATION_SHIFT = 24
SECONDARY_SHIFT = 12
FIELD_MASK_12 = 0xFFF
FIELD_MASK_16 = 0xFFFF


def encode_particle_id(
    vertex: np.ndarray,
    primary: np.ndarray,
    generation: np.ndarray,
    secondary: np.ndarray,
    process: np.ndarray,
) -> np.ndarray:
    """Pack the particle_id bit fields (vertex 52-63, primary 36-51, generation 24-35,
    secondary 12-23, process 0-11) into int64."""
    out = np.asarray(vertex, dtype=np.uint64) << np.uint64(VERTEX_SHIFT)
    out |= np.asarray(primary, dtype=np.uint64) << np.uint64(PRIMARY_SHIFT)
    out |= np.asarray(generation, dtype=np.uint64) << np.uint64(GENERATION_SHIFT)
    out |= np.asarray(secondary, dtype=np.uint64) << np.uint64(SECONDARY_SHIFT)
    out |= np.asarray(process, dtype=np.uint64)
    return out.astype(np.int64)


def decode_particle_id(particle_id: np.ndarray) -> dict[str, np.ndarray]:
    """Split particle ids into their bit fields: vertex, primary, generation, secondary, process."""
    pid = np.asarray(particle_id, dtype=np.int64).view(np.uint64)
    return {
        "vertex": (pid >> np.uint64(VERTEX_SHIFT)).astype(np.int64) & FIELD_MASK_12,
        "primary": (pid >> np.uint64(PRIMARY_SHIFT)).astype(np.int64) & FIELD_MASK_16,
        "generation": (pid >> np.uint64(GENERATION_SHIFT)).astype(np.int64) & FIELD_MASK_12,
        "secondary": (pid >> np.uint64(SECONDARY_SHIFT)).astype(np.int64) & FIELD_MASK_12,
        "process": pid.astype(np.int64) & FIELD_MASK_12,
    }


def _order_matrix() -> np.ndarray:
    """(21, 20) order weights indexed by (hits on the particle, hit rank), rows sum to 1."""
    matrix = np.zeros((ORDER_MAX_HITS + 1, ORDER_MAX_HITS))
    n_prop = len(ORDER_PROPOSAL)
    for nhits in range(ORDER_MIN_HITS, ORDER_MAX_HITS + 1):
        supports = np.arange(n_prop) * (nhits - 1) / (n_prop - 1)
        weights = np.interp(np.arange(nhits), supports, ORDER_PROPOSAL)
        matrix[nhits, :nhits] = weights / weights.sum()
    return matrix


ORDER_MATRIX = _order_matrix()


def weight_pt(pt: np.ndarray) -> np.ndarray:
    """Transverse-momentum weight: 0.2 up to 0.5 GeV, linear to 1 at 3 GeV, 1 above."""
    return np.interp(pt, [0.05, 0.5, 3.0], [0.2, 0.2, 1.0], left=0.0, right=1.0)


def phase2_weights(
    hit_particle_id: np.ndarray,
    hit_tz: np.ndarray,
    particle_id: np.ndarray,
    particle_vz: np.ndarray,
    particle_pt: np.ndarray,
    particle_nhits: np.ndarray,
) -> np.ndarray:
    """Per-hit TrackML phase-2 weights (float64, summing to 1 unless every weight is 0).

    ``hit_particle_id`` is 0 for noise; every other id must be in ``particle_id``.
    """
    n = len(hit_particle_id)
    weights = np.zeros(n)
    signal = np.flatnonzero(hit_particle_id != 0)
    if len(signal) == 0:
        return weights
    order = np.argsort(particle_id, kind="stable")
    row = order[np.searchsorted(particle_id, hit_particle_id[signal], sorter=order)]
    abs_dz = np.abs(hit_tz[signal] - particle_vz[row])
    # Rank of each hit among its particle's hits by distance from the production vertex.
    by_particle = np.lexsort((abs_dz, row))
    sorted_row = row[by_particle]
    start = np.ones(len(sorted_row), dtype=bool)
    start[1:] = sorted_row[1:] != sorted_row[:-1]
    group_start = np.maximum.accumulate(np.where(start, np.arange(len(sorted_row)), 0))
    rank = np.empty(len(signal), dtype=np.int64)
    rank[by_particle] = np.arange(len(sorted_row)) - group_start

    nhits = np.minimum(particle_nhits[row], ORDER_MAX_HITS)
    usable = (rank < ORDER_MAX_HITS) & (particle_nhits[row] >= ORDER_MIN_HITS)
    w_order = np.where(usable, ORDER_MATRIX[nhits, np.minimum(rank, ORDER_MAX_HITS - 1)], 0.0)
    primary = decode_particle_id(particle_id[row])["generation"] == 0
    weights[signal] = np.where(primary, weight_pt(particle_pt[row]) * w_order, 0.0)
    total = weights.sum()
    return weights / total if total > 0 else weights
