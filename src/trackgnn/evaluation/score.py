"""The TrackML challenge score and the hit-counting primitive behind every track-level metric.

A submission assigns one non-negative ``track_id`` to every hit. A (track, particle) pair counts
when the particle holds strictly more than half of the track's hits and the track holds strictly
more than half of the particle's hits (double majority); the score is the summed weight of the hits
of all counting pairs divided by the total weight. Noise hits (particle 0) are treated like any
other "particle" here, exactly as the challenge's reference implementation does; their weight is
zero in TrackML, so they never add to the score. At most one particle can hold more than half of a
track, so no tie-breaking is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from trackgnn.errors import TrackGNNError


@dataclass(frozen=True)
class PairCounts:
    """Hit counts of every distinct (track, particle) pair of an event; arrays are per pair."""

    track: np.ndarray  # track label of the pair
    particle: np.ndarray  # particle id of the pair
    hits: np.ndarray  # hits shared by the track and the particle
    weight: np.ndarray  # summed hit weight of those hits (zeros when no weights were given)
    track_size: np.ndarray  # hits of the pair's track
    particle_size: np.ndarray  # hits of the pair's particle

    @property
    def track_majority(self) -> np.ndarray:
        """The particle holds strictly more than half of the track's hits."""
        return 2 * self.hits > self.track_size

    @property
    def double_majority(self) -> np.ndarray:
        """Track majority, and the track holds strictly more than half of the particle's hits."""
        return self.track_majority & (2 * self.hits > self.particle_size)


def count_pairs(
    track: np.ndarray, particle: np.ndarray, weight: np.ndarray | None = None
) -> PairCounts:
    """Count hits per (track, particle) pair over all hits of one event.

    Args:
        track: track label of each hit (any integers).
        particle: particle id of each hit (0 = noise).
        weight: optional hit weights, summed per pair.

    Sizes are counted over the arrays given, so pass every hit of the event: a particle's size is
    its number of hits in the event, not in the tracks.
    """
    track = np.asarray(track, dtype=np.int64)
    particle = np.asarray(particle, dtype=np.int64)
    if track.shape != particle.shape or track.ndim != 1:
        raise TrackGNNError(
            f"count_pairs: track {list(track.shape)} and particle {list(particle.shape)} differ"
        )
    track_codes, track_inverse = np.unique(track, return_inverse=True)
    particle_codes, particle_inverse = np.unique(particle, return_inverse=True)
    n_particles = max(len(particle_codes), 1)
    pair_key = track_inverse.astype(np.int64) * n_particles + particle_inverse
    keys, pair_inverse, pair_hits = np.unique(pair_key, return_inverse=True, return_counts=True)
    pair_t, pair_p = np.divmod(keys, n_particles)
    pair_weight = (
        np.bincount(pair_inverse, weights=np.asarray(weight, np.float64), minlength=len(keys))
        if weight is not None
        else np.zeros(len(keys))
    )
    return PairCounts(
        track=track_codes[pair_t],
        particle=particle_codes[pair_p],
        hits=pair_hits,
        weight=pair_weight,
        track_size=np.bincount(track_inverse, minlength=len(track_codes))[pair_t],
        particle_size=np.bincount(particle_inverse, minlength=len(particle_codes))[pair_p],
    )


def _column(frame: pd.DataFrame, name: str, what: str) -> np.ndarray:
    if name not in frame.columns:
        raise TrackGNNError(f"{what}: missing column {name}")
    return frame[name].to_numpy()


def submission_tracks(truth_hit_id: np.ndarray, submission: pd.DataFrame) -> np.ndarray:
    """Validate a submission against the event's hit ids; return its track ids in truth order.

    Raises TrackGNNError when a hit is missing, duplicated or unknown, or a track id is negative
    or not an integer.
    """
    hit_id = _column(submission, "hit_id", "submission").astype(np.int64)
    track_id = _column(submission, "track_id", "submission")
    if not np.issubdtype(track_id.dtype, np.integer):
        raise TrackGNNError(f"submission: track_id must be integer, got {track_id.dtype}")
    if len(track_id) and track_id.min() < 0:
        raise TrackGNNError("submission: track_id must be non-negative")
    sorted_hits, counts = np.unique(hit_id, return_counts=True)
    if (counts > 1).any():
        raise TrackGNNError(f"submission: hit_id {sorted_hits[counts > 1][0]} appears twice")
    missing = ~np.isin(truth_hit_id, hit_id)
    if missing.any():
        raise TrackGNNError(f"submission: hit {truth_hit_id[missing][0]} of the event has no track")
    unknown = ~np.isin(hit_id, truth_hit_id)
    if unknown.any():
        raise TrackGNNError(f"submission: hit_id {hit_id[unknown][0]} is not a hit of the event")
    order = np.argsort(hit_id, kind="stable")
    return track_id[order][np.searchsorted(hit_id[order], truth_hit_id)].astype(np.int64)


def trackml_score(truth: pd.DataFrame, submission: pd.DataFrame) -> float:
    """TrackML score of ``submission`` (``hit_id, track_id``) against ``truth``.

    Args:
        truth: one row per hit of the event with ``hit_id, particle_id, weight``.
        submission: one row per hit with ``hit_id, track_id`` (every hit exactly once).

    Returns:
        The score in [0, 1]: 1.0 for the truth assignment, 0 for all hits in one track (of a
        multi-particle event) or for one hit per track (when all weighted particles have >= 2 hits).
    """
    truth_hit_id = _column(truth, "hit_id", "truth").astype(np.int64)
    particle = _column(truth, "particle_id", "truth")
    weight = _column(truth, "weight", "truth").astype(np.float64)
    if len(np.unique(truth_hit_id)) != len(truth_hit_id):
        raise TrackGNNError("truth: duplicate hit_id")
    if not np.isfinite(weight).all() or (weight < 0).any():
        raise TrackGNNError("truth: weights must be finite and non-negative")
    total = weight.sum()
    if not total > 0:
        raise TrackGNNError("truth: total hit weight is zero; the TrackML score is undefined")
    pairs = count_pairs(submission_tracks(truth_hit_id, submission), particle, weight)
    return float(pairs.weight[pairs.double_majority].sum() / total)
