"""Evaluation: TrackML score, matching definitions, metrics, aggregation and the report."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from trackgnn.errors import InputError, TrackGNNError
from trackgnn.evaluation import (
    EvaluationCuts,
    aggregate_edge_metrics,
    aggregate_track_metrics,
    edge_metrics,
    efficiency_table,
    event_counts,
    event_track_metrics,
    match_event,
    roc_auc,
    trackml_score,
)
from trackgnn.evaluation.metrics import mean_estimate, ratio_estimate
from trackgnn.evaluation.report import (
    EventInputs,
    evaluate_events,
    format_table,
    read_timing,
    summarize_timing,
)
from trackgnn.event_data import EventGraph, save_event
from trackgnn.io import Event, write_event

# --------------------------------------------------------------------------- hand-made event
# particle_id: (pT [GeV], eta, charge, hits in the event)
PARTICLES = {
    1: (1.0, 0.0, 1, 10),  # split into tracks of 6 and 4 hits: matched + one duplicate
    2: (0.3, 0.5, -1, 6),  # 3 hits share a track half/half with particle 3: not matched
    3: (2.0, -1.0, 1, 4),  # too few hits to be reconstructable
    4: (1.0, 0.2, 0, 5),  # neutral: not selected, though perfectly tracked
    5: (0.05, 0.0, 1, 5),  # below min_pt: not selected
    6: (1.0, 0.0, 1, 0),  # listed without hits: not a particle of the event
    7: (1.0, 4.5, 1, 5),  # |eta| > 4: not selected
    8: (0.8, 1.5, 1, 5),  # perfect track
    9: (0.4, -2.0, 1, 5),  # perfect track, below the signal pT
    10: (0.7, 3.0, -1, 5),  # tracks of 3 (matched) and 2 hits (too short to count)
}
N_NOISE = 6
# (track_id, [(particle_id, number of its hits)]) in hit order; remaining hits are singletons.
TRACKS = [
    (11, [(1, 6)]),
    (12, [(1, 4)]),
    (13, [(2, 3), (3, 3)]),
    (14, [(0, 4)]),
    (15, [(4, 5)]),
    (16, [(8, 5)]),
    (17, [(9, 5)]),
    (18, [(10, 3)]),
    (19, [(10, 2)]),
    (20, [(7, 5)]),
]


def make_particles() -> pd.DataFrame:
    rows = []
    for pid, (pt, eta, q, nhits) in PARTICLES.items():
        rows.append(
            {"particle_id": pid, "px": pt, "py": 0.0, "pz": pt * math.sinh(eta), "q": q}
            | {"nhits": nhits}
        )
    return pd.DataFrame(rows)


def make_truth() -> pd.DataFrame:
    """Hits numbered 1.. by particle (noise last); weight 1 per particle hit, 0 for noise."""
    particle = [pid for pid, (*_, nhits) in PARTICLES.items() for _ in range(nhits)]
    particle += [0] * N_NOISE
    particle = np.array(particle, dtype=np.int64)
    return pd.DataFrame(
        {
            "hit_id": np.arange(1, len(particle) + 1),
            "particle_id": particle,
            "weight": (particle != 0).astype(np.float64),
        }
    )


def make_submission(truth: pd.DataFrame) -> pd.DataFrame:
    """Assign TRACKS in hit order per particle; every other hit gets its own track id."""
    track = np.full(len(truth), -1, dtype=np.int64)
    used = dict.fromkeys(np.unique(truth["particle_id"]), 0)
    particle = truth["particle_id"].to_numpy()
    for track_id, content in TRACKS:
        for pid, count in content:
            rows = np.flatnonzero(particle == pid)[used[pid] : used[pid] + count]
            assert len(rows) == count
            track[rows] = track_id
            used[pid] += count
    alone = track < 0
    track[alone] = 1000 + np.arange(alone.sum())
    return pd.DataFrame({"hit_id": truth["hit_id"], "track_id": track})


# --------------------------------------------------------------------------- TrackML score


def reference_trackml_score(truth: pd.DataFrame, submission: pd.DataFrame) -> float:
    """The challenge library's algorithm: per track, its most frequent particle, then both cuts."""
    merged = truth.merge(submission, on="hit_id")
    particle_hits = merged.groupby("particle_id").size()
    total = 0.0
    for _, hits in merged.groupby("track_id"):
        counts = hits.groupby("particle_id").size().sort_values(ascending=False, kind="stable")
        major = counts.index[0]
        if 2 * counts.iloc[0] > len(hits) and 2 * counts.iloc[0] > particle_hits[major]:
            total += hits.loc[hits["particle_id"] == major, "weight"].sum()
    return total / truth["weight"].sum()


def random_truth(rng: np.random.Generator, n_particles: int = 40) -> pd.DataFrame:
    nhits = rng.integers(1, 12, n_particles)
    particle = np.repeat(np.arange(1, n_particles + 1), nhits)
    particle = np.concatenate([particle, np.zeros(15, dtype=np.int64)])
    weight = np.where(particle != 0, rng.random(len(particle)), 0.0)
    return pd.DataFrame(
        {
            "hit_id": rng.permutation(len(particle)) + 1,
            "particle_id": particle,
            "weight": weight / weight.sum(),
        }
    )


def test_trackml_score_of_the_truth_is_exactly_one():
    truth = random_truth(np.random.default_rng(0))
    submission = pd.DataFrame({"hit_id": truth["hit_id"], "track_id": truth["particle_id"]})
    assert trackml_score(truth, submission) == pytest.approx(1.0, abs=1e-12)


def test_trackml_score_is_zero_for_one_track_and_for_singletons():
    truth = random_truth(np.random.default_rng(1))
    # Singletons score only particles with one hit; give them no weight as TrackML does (< 4 hits).
    small = truth.groupby("particle_id")["hit_id"].transform("size") < 4
    truth = truth.assign(weight=np.where(small, 0.0, truth["weight"]))
    one_track = pd.DataFrame({"hit_id": truth["hit_id"], "track_id": 0})
    assert trackml_score(truth, one_track) == 0.0
    singletons = pd.DataFrame({"hit_id": truth["hit_id"], "track_id": np.arange(len(truth))})
    assert trackml_score(truth, singletons) == 0.0


def test_trackml_score_hand_computed_event():
    truth = make_truth()
    submission = make_submission(truth)
    # Double-majority pairs: 11 (6 of particle 1), 15 (5), 16 (5), 17 (5), 18 (3), 20 (5)
    # -> 29 of the 50 unit weights; noise has no weight.
    assert trackml_score(truth, submission) == pytest.approx(29 / 50)
    # Row order of the submission must not matter.
    shuffled = submission.sample(frac=1.0, random_state=3)
    assert trackml_score(truth, shuffled) == pytest.approx(29 / 50)


def test_trackml_score_tiny_events_with_ties():
    truth = pd.DataFrame(
        {"hit_id": [1, 2, 3, 4, 5, 6], "particle_id": [7, 7, 7, 8, 8, 0], "weight": [0.1] * 5 + [0]}
    )
    # Track {1,2,4,5}: exactly half from each particle -> nothing; hit 3 alone: 1 of 3 hits.
    half = pd.DataFrame({"hit_id": [1, 2, 3, 4, 5, 6], "track_id": [0, 0, 1, 0, 0, 2]})
    assert trackml_score(truth, half) == 0.0
    # Track {1,2,6}: particle 7 holds 2 of 3 track hits and 2 of its 3 hits -> 0.2 / 0.5;
    # hits 4 and 5 alone hold exactly half of particle 8 each -> nothing.
    majority = pd.DataFrame({"hit_id": [1, 2, 3, 4, 5, 6], "track_id": [0, 0, 1, 2, 3, 0]})
    assert trackml_score(truth, majority) == pytest.approx(0.4)


@pytest.mark.parametrize("seed", range(3))
def test_trackml_score_equals_reference_algorithm(seed):
    rng = np.random.default_rng(seed)
    truth = random_truth(rng)
    # A noisy reconstruction: the truth with a third of the hits moved to random tracks.
    track = truth["particle_id"].to_numpy().copy()
    moved = rng.random(len(track)) < 0.33
    track[moved] = rng.integers(0, 60, moved.sum())
    submission = pd.DataFrame({"hit_id": truth["hit_id"], "track_id": track})
    assert trackml_score(truth, submission) == pytest.approx(
        reference_trackml_score(truth, submission), abs=1e-12
    )


def test_trackml_score_rejects_bad_submissions():
    truth = pd.DataFrame({"hit_id": [1, 2, 3], "particle_id": [1, 1, 1], "weight": [1.0] * 3})
    cases = {
        "has no track": {"hit_id": [1, 2], "track_id": [0, 0]},
        "appears twice": {"hit_id": [1, 2, 3, 3], "track_id": [0, 0, 0, 0]},
        "not a hit of the event": {"hit_id": [1, 2, 3, 4], "track_id": [0, 0, 0, 0]},
        "non-negative": {"hit_id": [1, 2, 3], "track_id": [0, -1, 0]},
        "must be integer": {"hit_id": [1, 2, 3], "track_id": [0.0, 1.5, 0.0]},
    }
    for message, columns in cases.items():
        with pytest.raises(TrackGNNError, match=message):
            trackml_score(truth, pd.DataFrame(columns))
    with pytest.raises(TrackGNNError, match="total hit weight is zero"):
        trackml_score(truth.assign(weight=0.0), pd.DataFrame({"hit_id": [1, 2, 3], "track_id": 0}))


# --------------------------------------------------------------------------- matching


def test_particle_flags_follow_the_definitions():
    match = match_event(make_truth(), make_particles(), make_submission(make_truth()))
    table = match.particles.set_index("particle_id")
    assert 6 not in table.index  # no hits in the event
    assert sorted(table.index[table["selected"]]) == [1, 2, 3, 8, 9, 10]
    assert sorted(table.index[table["reconstructable"]]) == [1, 2, 8, 9, 10]
    assert sorted(table.index[table["matched"]]) == [1, 4, 7, 8, 9, 10]
    assert table.loc[1, "n_majority_tracks"] == 2
    assert table.loc[10, "n_hits"] == 5
    assert table.loc[8, "pt"] == pytest.approx(0.8)
    assert table.loc[8, "eta"] == pytest.approx(1.5)


def test_track_flags_follow_the_definitions():
    match = match_event(make_truth(), make_particles(), make_submission(make_truth()))
    tracks = match.tracks.set_index("track_id")
    # Short track 19 (2 hits) and singletons are not tracks.
    assert sorted(tracks.index) == [11, 12, 13, 14, 15, 16, 17, 18, 20]
    # Exactly half of track 13 comes from particle 2: no majority particle, not matched.
    assert tracks.loc[13, "majority_particle"] == 0
    assert not tracks.loc[13, "matched"]
    # Noise-only track: never matched, never a duplicate.
    assert tracks.loc[14, "majority_particle"] == 0
    assert not tracks.loc[14, ["matched", "duplicate"]].any()
    # Particle 1 split 6 + 4: the 6-hit track is matched, the 4-hit one a duplicate.
    assert tracks.loc[11, "matched"] and not tracks.loc[11, "duplicate"]
    assert not tracks.loc[12, "matched"] and tracks.loc[12, "duplicate"]
    assert tracks.loc[12, "majority_particle"] == 1
    # A neutral particle's track matches it, but it is not a selected particle.
    assert tracks.loc[15, "matched"] and not tracks.loc[15, "majority_selected"]
    assert list(tracks.loc[[11, 16, 18], "n_hits"]) == [6, 5, 3]


def test_event_counts_hand_computed():
    counts = event_counts(
        match_event(make_truth(), make_particles(), make_submission(make_truth()))
    )
    assert counts == {
        "n_selected.all": 6,
        "n_selected_matched.all": 4,
        "n_reconstructable.all": 5,
        "n_reconstructable_matched.all": 4,
        "n_tracks.all": 9,
        "n_tracks_matched.all": 4,
        "n_duplicate_tracks.all": 1,
        # signal: selected particles 1, 3, 8, 10; the track of particle 9 (0.4 GeV) leaves the
        # track population, the fakes 13 and 14 and the unselected 15 and 20 stay.
        "n_selected.pt>0.5": 4,
        "n_selected_matched.pt>0.5": 3,
        "n_reconstructable.pt>0.5": 3,
        "n_reconstructable_matched.pt>0.5": 3,
        "n_tracks.pt>0.5": 8,
        "n_tracks_matched.pt>0.5": 3,
        "n_duplicate_tracks.pt>0.5": 1,
    }


def test_particle_split_in_equal_halves_is_unmatched_with_one_duplicate():
    truth = pd.DataFrame({"hit_id": np.arange(1, 11), "particle_id": 1, "weight": 0.1})
    particles = pd.DataFrame({"particle_id": [1], "px": [1.0], "py": [0.0], "pz": [0.0], "q": [1]})
    submission = pd.DataFrame({"hit_id": np.arange(1, 11), "track_id": [0] * 5 + [1] * 5})
    counts = event_counts(match_event(truth, particles, submission))
    assert counts["n_selected_matched.all"] == 0
    assert counts["n_duplicate_tracks.all"] == 1
    assert counts["n_tracks.all"] == 2


def test_no_tracks_at_all():
    truth = make_truth()
    singletons = pd.DataFrame({"hit_id": truth["hit_id"], "track_id": np.arange(len(truth))})
    result, match = event_track_metrics(truth, make_particles(), singletons)
    assert len(match.tracks) == 0
    assert result["n_tracks.all"] == 0
    assert result["n_selected_matched.all"] == 0
    assert result["n_selected.all"] == 6
    metrics = aggregate_track_metrics([result])
    assert metrics["purity"]["all"] == {"value": None, "error": None}
    assert metrics["physics_efficiency"]["all"] == {"value": 0.0, "error": 0.0}


def test_min_track_length_is_configurable():
    truth = make_truth()
    cuts = EvaluationCuts(min_track_length=2)
    counts = event_counts(match_event(truth, make_particles(), make_submission(truth), cuts), cuts)
    assert counts["n_tracks.all"] == 10  # track 19 now counts
    assert counts["n_duplicate_tracks.all"] == 2  # ... as a duplicate of particle 10


def test_signal_trackml_score_only_weighs_signal_particles():
    truth = make_truth()
    result, _ = event_track_metrics(truth, make_particles(), make_submission(truth))
    assert result["trackml_score.all"] == pytest.approx(29 / 50)
    # pT > 0.5: particles 1, 3, 4, 7, 8, 10 carry 34 unit weights; 6 + 5 + 5 + 5 + 3 found.
    assert result["trackml_score.pt>0.5"] == pytest.approx(24 / 34)


def test_truth_particle_missing_from_particles_table_is_an_error():
    truth = make_truth()
    particles = make_particles()
    particles = particles[particles["particle_id"] != 8]
    with pytest.raises(TrackGNNError, match="particle_id 8"):
        match_event(truth, particles, make_submission(truth))


def test_evaluation_cuts_validate():
    with pytest.raises(TrackGNNError, match="max_eta"):
        EvaluationCuts(max_eta=0.0)
    with pytest.raises(TrackGNNError, match="min_hits"):
        EvaluationCuts(min_hits=0)
    assert EvaluationCuts(signal_pt=1.0).signal_key == "pt>1"


# --------------------------------------------------------------------------- aggregation


def test_ratio_and_mean_estimates():
    assert ratio_estimate(3, 4) == {
        "value": 0.75,
        "error": pytest.approx(math.sqrt(0.75 * 0.25 / 4)),
    }
    assert ratio_estimate(0, 0) == {"value": None, "error": None}
    assert mean_estimate([0.5, 0.7, None]) == {
        "value": pytest.approx(0.6),
        "error": pytest.approx(np.std([0.5, 0.7], ddof=1) / math.sqrt(2)),
    }
    assert mean_estimate([0.4]) == {"value": 0.4, "error": None}
    assert mean_estimate([None]) == {"value": None, "error": None}


def test_aggregation_pools_counts_over_events():
    truth = make_truth()
    first, _ = event_track_metrics(truth, make_particles(), make_submission(truth))
    perfect = pd.DataFrame({"hit_id": truth["hit_id"], "track_id": truth["particle_id"]})
    second, _ = event_track_metrics(truth, make_particles(), perfect)
    metrics = aggregate_track_metrics([first, second])
    # Pooled: (4 + 6) / (6 + 6), not the mean of per-event ratios.
    p = 10 / 12
    assert metrics["physics_efficiency"]["all"]["value"] == pytest.approx(p)
    assert metrics["physics_efficiency"]["all"]["error"] == pytest.approx(
        math.sqrt(p * (1 - p) / 12)
    )
    # The truth puts all 6 noise hits in one track (no majority), 10 tracks of >= 3 hits remain
    # (particles 1, 2, 4, 5, 7, 8, 9, 10 and noise; particle 3 has 4 hits too) -> counted below.
    assert second["n_tracks.all"] == 10
    assert metrics["purity"]["all"]["value"] == pytest.approx((4 + 6) / (9 + 10))
    scores = [first["trackml_score.all"], second["trackml_score.all"]]
    assert scores[1] == pytest.approx(1.0)
    assert metrics["trackml_score"]["all"]["value"] == pytest.approx(np.mean(scores))
    assert metrics["trackml_score"]["all"]["error"] == pytest.approx(
        np.std(scores, ddof=1) / math.sqrt(2)
    )


def test_efficiency_table_bins_and_errors():
    particles = pd.DataFrame(
        {
            "pt": [0.15, 0.15, 0.15, 0.6, 0.6, 50.0, 100.0, 200.0],
            "selected": True,
            "reconstructable": [True, True, False, True, True, True, True, True],
            "matched": [True, False, True, True, True, False, True, True],
        }
    )
    table = efficiency_table(particles, "pt", [0.1, 0.5, 1.0, 100.0])
    assert table["n_selected"].tolist() == [3, 2, 2]  # 200 GeV is outside, 100 in the last bin
    assert table["n_selected_matched"].tolist() == [2, 2, 1]
    assert table["physics_efficiency"].tolist() == pytest.approx([2 / 3, 1.0, 0.5])
    assert table["n_reconstructable"].tolist() == [2, 2, 2]
    assert table["technical_efficiency"].tolist() == pytest.approx([0.5, 1.0, 0.5])
    assert table["technical_efficiency_error"][0] == pytest.approx(math.sqrt(0.25 / 2))
    empty = efficiency_table(particles.iloc[:0], "pt", [0.1, 1.0])
    assert empty["n_selected"].tolist() == [0] and np.isnan(empty["physics_efficiency"][0])
    with pytest.raises(TrackGNNError, match="must increase"):
        efficiency_table(particles, "pt", [1.0, 0.5])


# --------------------------------------------------------------------------- edge level


def test_roc_auc_matches_pair_counting():
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 10, 300) / 10.0  # many ties
    labels = rng.random(300) < 0.3
    pos, neg = scores[labels], scores[~labels]
    expected = (
        (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    ) / (len(pos) * len(neg))
    assert roc_auc(torch.from_numpy(scores), torch.from_numpy(labels)) == pytest.approx(expected)
    assert roc_auc(np.array([0.1, 0.9]), np.array([False, True])) == 1.0
    assert roc_auc(np.array([0.9, 0.1]), np.array([False, True])) == 0.0
    assert roc_auc(np.array([0.5, 0.5]), np.array([False, True])) == 0.5
    assert roc_auc(np.array([0.5, 0.7]), np.array([True, True])) is None


def make_graph(with_scores: bool = True, **changes: torch.Tensor) -> EventGraph:
    """Six hits: particle 1 (signal) on hits 0-2, particle 2 (0.3 GeV) on 3-4, noise on 5."""
    return EventGraph.from_dict(graph_contents(with_scores) | changes, "g.pt")


def graph_contents(with_scores: bool = True) -> dict[str, torch.Tensor]:
    graph = {
        "event_id": torch.tensor(1),
        "x": torch.zeros(6, 3),
        "r": torch.arange(1.0, 7.0),
        "phi": torch.zeros(6),
        "z": torch.zeros(6),
        "eta": torch.zeros(6),
        "hit_id": torch.arange(1, 7),
        "particle_id": torch.tensor([1, 1, 1, 2, 2, 0]),
        "pt": torch.tensor([1.0, 1.0, 1.0, 0.3, 0.3, 0.0]),
        "particle_eta": torch.zeros(6),
        "nhits": torch.tensor([5, 5, 5, 5, 5, 0]),
        "primary": torch.ones(6, dtype=torch.bool),
        "truth_edges": torch.tensor([[0, 1, 3], [1, 2, 4]]),
        # (1, 0) is a truth edge stored the other way round.
        "edge_index": torch.tensor([[1, 1, 3, 0, 2, 0], [0, 2, 4, 5, 3, 2]]),
        "y": torch.tensor([True, True, True, False, False, False]),
        "y_pid": torch.tensor([True, True, True, False, False, True]),
    }
    if with_scores:
        graph["scores"] = torch.tensor([0.9, 0.5, 0.8, 0.7, 0.1, 0.6])
    return graph


def test_edge_metrics_hand_computed():
    result = edge_metrics(make_graph(), score_cut=0.5)
    # Kept (score > 0.5): (1,0) (3,4) (0,5) (0,2); (1,2) sits exactly at the cut and is dropped.
    assert result["n_edges"] == 4
    assert result["efficiency"] == 0.5  # signal truth edges 0-1 (found reversed) and 1-2 (lost)
    assert result["purity"] == 0.5
    assert result["purity_pid"] == 0.75
    assert result["edges_per_hit"] == pytest.approx(4 / 6)
    assert result["auc"] == pytest.approx(7 / 9)

    everything = edge_metrics(make_graph(with_scores=False))
    assert everything["efficiency"] == 1.0
    assert everything["purity"] == 0.5
    assert everything["edges_per_hit"] == 1.0
    assert everything["auc"] is None
    with pytest.raises(TrackGNNError, match="no 'scores'"):
        edge_metrics(make_graph(with_scores=False), score_cut=0.5)


def test_edge_metrics_signal_needs_enough_hits():
    graph = make_graph(nhits=torch.tensor([4, 4, 4, 5, 5, 0]))
    result = edge_metrics(graph, score_cut=0.5)
    assert result["n_signal_truth"] == 0 and result["efficiency"] is None


def test_graph_contents_are_checked_with_the_file_named():
    contents = graph_contents()
    del contents["y_pid"]
    with pytest.raises(TrackGNNError, match=r"g\.pt: missing key\(s\) y_pid"):
        EventGraph.from_dict(contents, "g.pt")
    with pytest.raises(TrackGNNError, match=r"g\.pt: scores must have shape \[6\]"):
        make_graph(scores=torch.ones(3))
    with pytest.raises(TrackGNNError, match=r"edge_index refers to hits outside 0\.\.5"):
        make_graph(edge_index=graph_contents()["edge_index"] + 3)
    with pytest.raises(TrackGNNError, match="truth_edges must be int64"):
        make_graph(truth_edges=torch.tensor([[0.0], [1.0]]))
    with pytest.raises(TrackGNNError, match="pt must have shape"):
        make_graph(pt=torch.ones(5))


def test_aggregate_edge_metrics_pools_counts():
    first = edge_metrics(make_graph(), score_cut=0.5)
    second = edge_metrics(make_graph(), score_cut=0.0)
    pooled = aggregate_edge_metrics([first, second])
    assert pooled["efficiency"]["value"] == pytest.approx((1 + 2) / (2 + 2))
    assert pooled["purity"]["value"] == pytest.approx((2 + 3) / (4 + 6))
    assert pooled["edges_per_hit"]["value"] == pytest.approx((4 / 6 + 1.0) / 2)
    assert pooled["auc"]["value"] == pytest.approx(7 / 9)
    assert pooled["auc"]["error"] == 0.0


# --------------------------------------------------------------------------- report


def write_trackml_event(directory, event_id: int) -> str:
    """Write the hand-made event as TrackML CSVs and return its prefix."""
    truth = make_truth()
    particles = make_particles()
    n = len(truth)
    hits = pd.DataFrame(
        {
            "hit_id": truth["hit_id"].astype("int32"),
            "x": np.linspace(30, 1000, n, dtype=np.float32),
            "y": np.zeros(n, np.float32),
            "z": np.zeros(n, np.float32),
            "volume_id": np.full(n, 8, np.int32),
            "layer_id": np.full(n, 2, np.int32),
            "module_id": np.arange(1, n + 1, dtype=np.int32),
        }
    )
    full_truth = truth.assign(
        **{c: np.float32(0) for c in ("tx", "ty", "tz", "tpx", "tpy", "tpz")}
    ).astype({"hit_id": "int32", "weight": "float32"})
    full_particles = particles.assign(particle_type=211, vx=0.0, vy=0.0, vz=0.0).astype(
        {"q": "int32", "nhits": "int32", "particle_type": "int32"}
    )
    prefix = directory / f"event{event_id:09d}"
    write_event(Event(event_id, hits, None, full_particles, full_truth), prefix)
    return prefix


def test_evaluate_events_writes_the_full_report(tmp_path):
    events = []
    for event_id, perfect in ((1, False), (2, True)):
        prefix = write_trackml_event(tmp_path / "events", event_id)
        truth = make_truth()
        submission = (
            pd.DataFrame({"hit_id": truth["hit_id"], "track_id": truth["particle_id"]})
            if perfect
            else make_submission(truth)
        )
        tracks = tmp_path / "tracks" / f"event{event_id:09d}.csv"
        tracks.parent.mkdir(exist_ok=True)
        submission.to_csv(tracks, index=False)
        graphs = {}
        for stage in ("gnn", "graph", "filter"):  # not in pipeline order: the report sorts
            graphs[stage] = tmp_path / stage / f"event{event_id:09d}.pt"
            save_event(make_graph(with_scores=stage != "graph"), graphs[stage])
        events.append(EventInputs(prefix, tracks, graphs))
    timing = {
        "graph": [tmp_path / "t_graph.json"],
        "gnn": [tmp_path / "t_gnn1.json", tmp_path / "t_gnn2.json"],
    }
    (tmp_path / "t_graph.json").write_text(json.dumps({"wall_s": 0.5, "peak_memory_mb": 100}))
    (tmp_path / "t_gnn1.json").write_text(json.dumps({"wall_s": 3.0, "n_events": 2}))
    (tmp_path / "t_gnn2.json").write_text(json.dumps({"wall_s": 1.0}))

    out = tmp_path / "report"
    summary = evaluate_events(
        events, out, score_cuts={"filter": 0.5, "gnn": 0.5}, timing_files=timing
    )
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["n_events"] == 2
    for name in ("physics_efficiency", "technical_efficiency", "purity", "duplicate_rate"):
        assert set(on_disk[name]) == {"pt>0.5", "all"}
    assert on_disk["physics_efficiency"]["all"]["value"] == pytest.approx(10 / 12)
    assert on_disk["technical_efficiency"]["pt>0.5"]["value"] == pytest.approx(1.0)
    assert on_disk["duplicate_rate"]["all"]["value"] == pytest.approx(1 / 19)
    assert on_disk["trackml_score"]["all"]["value"] == pytest.approx((29 / 50 + 1.0) / 2)
    assert set(on_disk["edge_metrics"]) == {"graph", "filter", "gnn"}
    assert on_disk["edge_metrics"]["gnn"]["efficiency"]["value"] == 0.5
    assert on_disk["edge_metrics"]["graph"]["efficiency"]["value"] == 1.0
    assert on_disk["edge_metrics"]["graph"]["auc"]["value"] is None
    assert on_disk["edge_metrics"]["filter"]["auc"]["value"] == pytest.approx(7 / 9)
    # pooled edges of a stage against the stage before: 2 x 6 graph edges, 2 x 4 after the cut
    assert on_disk["edge_metrics"]["graph"]["n_edges"]["value"] == 12
    assert "edge_reduction" not in on_disk["edge_metrics"]["graph"]
    assert on_disk["edge_metrics"]["filter"]["edge_reduction"]["value"] == pytest.approx(1.5)
    assert on_disk["edge_metrics"]["gnn"]["edge_reduction"]["value"] == pytest.approx(1.0)
    assert on_disk["timing_s"] == {"graph": 0.5, "gnn": pytest.approx(4.0 / 3)}
    assert on_disk["peak_memory_mb"] == {"graph": 100.0}
    assert on_disk["counts"]["n_selected.all"] == 12

    for name in ("efficiency_vs_pt.png", "efficiency_vs_eta.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pt_table = pd.read_csv(out / "efficiency_vs_pt.csv")
    assert pt_table["n_selected"].sum() == 12
    assert pt_table["n_selected_matched"].sum() == 10
    eta_table = pd.read_csv(out / "efficiency_vs_eta.csv")
    assert eta_table["n_selected"].sum() == 8  # selected signal particles 1, 3, 8, 10 twice
    assert len(pd.read_csv(out / "per_event.csv")) == 2
    assert len(pd.read_csv(out / "edge_metrics.csv")) == 6
    # A rerun replaces the evaluation's files and leaves the studies' reports beside them.
    (out / "pileup").mkdir()
    (out / "pileup" / "pileup.csv").write_text("mu\n200\n")
    (out / "summary.json").write_text("{}")
    evaluate_events(events, out, score_cuts={"filter": 0.5, "gnn": 0.5}, timing_files=timing)
    assert (out / "pileup" / "pileup.csv").read_text() == "mu\n200\n"
    assert json.loads((out / "summary.json").read_text()) == on_disk
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]

    table = format_table(summary)
    assert "over 2 event(s)" in table
    assert "physics efficiency" in table and "0.8333 ± 0.1076" in table
    assert "gnn" in table and "n/a" in table  # the graph stage has no AUC
    assert "edge_reduction" in table and "1.50" in table
    # stages in pipeline order, also from the key-sorted summary.json
    on_disk_table = format_table(on_disk).splitlines()
    stage_rows = [
        line.split()[0]
        for line in on_disk_table
        if line.split()[:1] in (["graph"], ["filter"], ["gnn"])
    ]
    assert stage_rows == ["graph", "filter", "gnn"]
    assert "gnn 1.33" in table
    assert "peak memory (MB)" in table and "graph 100" in table

    # A bad track file fails the whole evaluation and leaves the previous report untouched.
    before = (out / "summary.json").read_bytes()
    pd.DataFrame({"hit_id": [1], "track_id": [0]}).to_csv(events[0].tracks, index=False)
    with pytest.raises(InputError, match=r"event000000001\.csv: hit 2 of the event has no track"):
        evaluate_events(events, out)
    assert (out / "summary.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_evaluate_events_needs_events(tmp_path):
    with pytest.raises(TrackGNNError, match="no events"):
        evaluate_events([], tmp_path / "report")


def test_timing_files_are_validated(tmp_path):
    path = tmp_path / "t.json"
    for content, message in (
        ("{", "not valid JSON"),
        ("[1]", "JSON object"),
        ("{}", "missing key wall_s"),
        ('{"wall_s": "fast"}', "wall_s must be a number"),
        ('{"wall_s": -1}', "wall_s must be >= 0"),
        ('{"wall_s": 1, "n_events": 0}', "n_events must be >= 1"),
        ('{"wall_s": 1, "n_events": 1.5}', "n_events must be an integer"),
    ):
        path.write_text(content)
        with pytest.raises(InputError, match=message):
            read_timing(path)
    with pytest.raises(InputError, match="does not exist"):
        read_timing(tmp_path / "missing.json")
    path.write_text('{"wall_s": 2.0}')
    # The same file listed twice is one execution.
    assert summarize_timing({"gnn": [path, path]}) == ({"gnn": 2.0}, {})
