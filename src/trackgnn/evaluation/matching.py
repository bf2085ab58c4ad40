"""Track-to-particle matching: the one definition every track-level metric is built on.

Definitions (Exa.TrkX, arXiv:2103.06995 section 4.1.1; thresholds in :class:`EvaluationCuts`):

- **particle**: a truth particle with at least one hit in the event (a generator particle that never
  reached the detector cannot be tracked and is not counted; Exa.TrkX builds its particle list from
  the hits too).
- **selected**: charged (``q != 0``), ``pT > min_pt`` and ``|eta| < max_eta``.
- **reconstructable**: selected with at least ``min_hits`` hits.
- **signal**: ``pT > signal_pt`` (the "pt>0.5" figures).
- **track**: a submitted track with at least ``min_track_length`` hits; shorter ones (singletons
  included) take part in no track-level metric except the TrackML score.
- **majority particle** of a track: the particle (never noise) holding strictly more than half of
  the track's hits; at most one exists.
- **matched**: a track and its majority particle when, in addition, the track holds strictly more
  than half of the particle's hits in the event (double majority). A particle is matched to at most
  one track. A track with exactly half of its hits from one particle has no majority particle.
- **duplicate**: a track whose majority particle is selected but which is not that particle's best
  track (the one holding most of its hits; the matched track when there is one; ties go to the
  lowest track id). A particle split into tracks of 6 and 4 of its 10 hits has one matched track and
  one duplicate; split 5 + 5 it has no matched track and one duplicate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from trackgnn.errors import TrackGNNError
from trackgnn.evaluation.score import PairCounts, count_pairs, submission_tracks

if TYPE_CHECKING:
    from trackgnn.config import Config

SHORT_TRACK = -1  # label given to hits of tracks below the minimum length (never a TrackML id)


@dataclass(frozen=True)
class EvaluationCuts:
    """Thresholds of the track- and edge-level metrics (GeV for momenta)."""

    min_pt: float = 0.1
    max_eta: float = 4.0
    min_hits: int = 5
    signal_pt: float = 0.5
    min_track_length: int = 3

    def __post_init__(self) -> None:
        if self.min_pt < 0 or self.signal_pt < 0:
            raise TrackGNNError("evaluation: min_pt and signal_pt must be >= 0")
        if self.max_eta <= 0:
            raise TrackGNNError("evaluation: max_eta must be > 0")
        if self.min_hits < 1 or self.min_track_length < 1:
            raise TrackGNNError("evaluation: min_hits and min_track_length must be >= 1")

    @classmethod
    def from_config(cls, cfg: Config) -> EvaluationCuts:
        """The ``evaluation`` section's cuts, with the track builder's minimum length."""
        ev = cfg.evaluation
        return cls(
            min_pt=ev.min_pt,
            max_eta=ev.max_eta,
            min_hits=ev.min_hits,
            signal_pt=ev.signal_pt,
            min_track_length=cfg.tracks.min_length,
        )

    @property
    def signal_key(self) -> str:
        """Key of the signal figures in reports, e.g. ``pt>0.5``."""
        return f"pt>{self.signal_pt:g}"


DEFAULT_CUTS = EvaluationCuts()


@dataclass(frozen=True)
class EventMatch:
    """Matching result of one event.

    ``particles`` columns: particle_id, pt, eta, q, n_hits, selected, reconstructable, signal,
    matched, n_majority_tracks. ``tracks`` columns (tracks of at least the minimum length):
    track_id, n_hits, majority_particle (0 = none), majority_hits, matched, majority_selected,
    majority_signal, duplicate.
    """

    particles: pd.DataFrame
    tracks: pd.DataFrame


def particle_kinematics(particles: pd.DataFrame) -> pd.DataFrame:
    """``particle_id, pt, eta, q`` from a TrackML particles table (``px, py, pz`` in GeV)."""
    missing = [c for c in ("particle_id", "px", "py", "pz", "q") if c not in particles.columns]
    if missing:
        raise TrackGNNError(f"particles: missing column(s) {', '.join(missing)}")
    px = particles["px"].to_numpy(np.float64)
    py = particles["py"].to_numpy(np.float64)
    pz = particles["pz"].to_numpy(np.float64)
    pt = np.hypot(px, py)
    # arcsinh(pz/pt) is eta; pT = 0 gives +-inf, which no |eta| cut accepts.
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.arcsinh(pz / pt)
    eta = np.where(pt > 0, eta, np.copysign(np.inf, pz))
    return pd.DataFrame(
        {
            "particle_id": particles["particle_id"].to_numpy(np.int64),
            "pt": pt,
            "eta": eta,
            "q": particles["q"].to_numpy(np.int64),
        }
    )


def match_event(
    truth: pd.DataFrame,
    particles: pd.DataFrame,
    submission: pd.DataFrame,
    cuts: EvaluationCuts = DEFAULT_CUTS,
) -> EventMatch:
    """Match the submitted tracks of one event to its particles (see the module docstring).

    Args:
        truth: TrackML truth (``hit_id, particle_id``), one row per hit of the event.
        particles: TrackML particles (``particle_id, px, py, pz, q``); may list particles
            without hits.
        submission: ``hit_id, track_id`` for every hit of the event.
        cuts: selection thresholds.
    """
    hit_id = truth["hit_id"].to_numpy(np.int64)
    hit_particle = truth["particle_id"].to_numpy(np.int64)
    kinematics = particle_kinematics(particles)
    if kinematics["particle_id"].duplicated().any():
        raise TrackGNNError("particles: duplicate particle_id")

    hit_track = submission_tracks(hit_id, submission)
    track_ids, track_inverse, track_sizes = np.unique(
        hit_track, return_inverse=True, return_counts=True
    )
    is_short = track_sizes[track_inverse] < cuts.min_track_length
    hit_track = np.where(is_short, SHORT_TRACK, hit_track)

    # Particles: those with hits in the event, with kinematics from the particles table.
    particle_ids, particle_hits = np.unique(hit_particle[hit_particle != 0], return_counts=True)
    known = np.isin(particle_ids, kinematics["particle_id"].to_numpy())
    if not known.all():
        raise TrackGNNError(
            f"particles: particle_id {particle_ids[~known][0]} of the truth is not listed"
        )
    table = (
        kinematics.set_index("particle_id")
        .loc[particle_ids]
        .reset_index()
        .assign(n_hits=particle_hits)
    )
    table["selected"] = (
        (table["q"] != 0) & (table["pt"] > cuts.min_pt) & (table["eta"].abs() < cuts.max_eta)
    )
    table["reconstructable"] = table["selected"] & (table["n_hits"] >= cuts.min_hits)
    table["signal"] = table["pt"] > cuts.signal_pt

    # (track, particle) pairs over all hits, so particle sizes are their event hit counts.
    pairs = count_pairs(hit_track, hit_particle)
    real = (pairs.track != SHORT_TRACK) & (pairs.particle != 0)
    majority = real & pairs.track_majority
    matched = real & pairs.double_majority

    table["matched"] = np.isin(particle_ids, pairs.particle[matched])
    majority_particle, majority_count = np.unique(pairs.particle[majority], return_counts=True)
    n_majority = np.zeros(len(particle_ids), dtype=np.int64)
    n_majority[np.searchsorted(particle_ids, majority_particle)] = majority_count
    table["n_majority_tracks"] = n_majority

    tracks = _track_table(pairs, majority, matched, track_ids[track_sizes >= cuts.min_track_length])
    flags = table.set_index("particle_id")
    has_majority = tracks["majority_particle"].to_numpy() != 0
    majority_ids = tracks["majority_particle"].to_numpy()[has_majority]
    for column, source in (("majority_selected", "selected"), ("majority_signal", "signal")):
        values = np.zeros(len(tracks), dtype=bool)
        values[has_majority] = flags.loc[majority_ids, source].to_numpy(bool)
        tracks[column] = values
    tracks["duplicate"] = _duplicates(pairs, majority, tracks) & tracks["majority_selected"]
    return EventMatch(particles=table, tracks=tracks)


def _track_table(
    pairs: PairCounts, majority: np.ndarray, matched: np.ndarray, kept_track_ids: np.ndarray
) -> pd.DataFrame:
    """One row per kept track with its size, majority particle and match flag."""
    sizes = np.zeros(len(kept_track_ids), dtype=np.int64)
    in_kept = pairs.track != SHORT_TRACK
    row = np.searchsorted(kept_track_ids, pairs.track[in_kept])
    sizes[row] = pairs.track_size[in_kept]
    majority_particle = np.zeros(len(kept_track_ids), dtype=np.int64)
    majority_hits = np.zeros(len(kept_track_ids), dtype=np.int64)
    row = np.searchsorted(kept_track_ids, pairs.track[majority])
    majority_particle[row] = pairs.particle[majority]
    majority_hits[row] = pairs.hits[majority]
    is_matched = np.zeros(len(kept_track_ids), dtype=bool)
    is_matched[np.searchsorted(kept_track_ids, pairs.track[matched])] = True
    return pd.DataFrame(
        {
            "track_id": kept_track_ids,
            "n_hits": sizes,
            "majority_particle": majority_particle,
            "majority_hits": majority_hits,
            "matched": is_matched,
        }
    )


def _duplicates(pairs: PairCounts, majority: np.ndarray, tracks: pd.DataFrame) -> np.ndarray:
    """Flag tracks whose majority particle has a better track (more of its hits, then lower id)."""
    particle = pairs.particle[majority]
    track = pairs.track[majority]
    hits = pairs.hits[majority]
    order = np.lexsort((track, -hits, particle))  # per particle: most hits first, then lowest id
    is_first = np.ones(len(order), dtype=bool)
    is_first[1:] = particle[order][1:] != particle[order][:-1]
    duplicate_tracks = track[order][~is_first]
    return np.isin(tracks["track_id"].to_numpy(), duplicate_tracks)


def event_counts(match: EventMatch, cuts: EvaluationCuts = DEFAULT_CUTS) -> dict[str, int]:
    """The integer counts behind every track-level ratio, for ``all`` and the signal selection.

    Keys are ``<count>.<variant>`` with variant ``all`` or ``cuts.signal_key``:

    - ``n_selected`` / ``n_selected_matched``: physics efficiency;
    - ``n_reconstructable`` / ``n_reconstructable_matched``: technical efficiency;
    - ``n_tracks`` / ``n_tracks_matched``: purity (tracks matched to a selected particle);
    - ``n_duplicate_tracks`` over ``n_tracks``: duplicate rate.

    For the signal variant the particles must also be signal; tracks whose majority particle is a
    selected particle below the signal pT are left out of the track population (they are real
    tracks of particles outside that selection), while fakes stay in it.
    """
    particles, tracks = match.particles, match.tracks
    majority_selected = tracks["majority_selected"].to_numpy(bool)
    majority_signal = tracks["majority_signal"].to_numpy(bool)
    variants = {
        "all": (np.ones(len(particles), bool), np.ones(len(tracks), bool), majority_selected),
        cuts.signal_key: (
            particles["signal"].to_numpy(bool),
            ~(majority_selected & ~majority_signal),
            majority_selected & majority_signal,
        ),
    }
    matched = particles["matched"].to_numpy(bool)
    counts: dict[str, int] = {}
    for variant, (particle_mask, track_population, track_of_interest) in variants.items():
        selected = particles["selected"].to_numpy(bool) & particle_mask
        reconstructable = particles["reconstructable"].to_numpy(bool) & particle_mask
        track_matched = tracks["matched"].to_numpy(bool) & track_of_interest
        track_duplicate = tracks["duplicate"].to_numpy(bool) & track_of_interest
        counts[f"n_selected.{variant}"] = int(selected.sum())
        counts[f"n_selected_matched.{variant}"] = int((selected & matched).sum())
        counts[f"n_reconstructable.{variant}"] = int(reconstructable.sum())
        counts[f"n_reconstructable_matched.{variant}"] = int((reconstructable & matched).sum())
        counts[f"n_tracks.{variant}"] = int(track_population.sum())
        counts[f"n_tracks_matched.{variant}"] = int((track_population & track_matched).sum())
        counts[f"n_duplicate_tracks.{variant}"] = int((track_population & track_duplicate).sum())
    return counts
