"""Track- and edge-level metrics per event, and their aggregation over events.

Statistical errors:

- ratios of counts (efficiencies, purities, duplicate rate) pool the counts of all events and quote
  the binomial error ``sqrt(p (1 - p) / n)`` of the pooled ratio ``p = k / n``;
- per-event figures that are not ratios of counts (TrackML score, ROC AUC, edges per hit) quote the
  mean over events and its standard error ``std(ddof=1) / sqrt(n_events)``; with one event the
  error is None (undefined), not zero.

An :data:`Estimate` is ``{"value": float | None, "error": float | None}``; ``value`` is None when
the denominator is empty (e.g. no signal particle in the events).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from trackgnn.errors import TrackGNNError
from trackgnn.evaluation.matching import (
    DEFAULT_CUTS,
    EvaluationCuts,
    EventMatch,
    event_counts,
    match_event,
)
from trackgnn.evaluation.score import trackml_score

if TYPE_CHECKING:
    from trackgnn.event_data import EventGraph

Estimate = dict[str, float | None]

# Ratio metrics: name -> (numerator count, denominator count), counts from event_counts.
TRACK_RATIOS: dict[str, tuple[str, str]] = {
    "physics_efficiency": ("n_selected_matched", "n_selected"),
    "technical_efficiency": ("n_reconstructable_matched", "n_reconstructable"),
    "purity": ("n_tracks_matched", "n_tracks"),
    "duplicate_rate": ("n_duplicate_tracks", "n_tracks"),
}
TRACK_METRICS = (*TRACK_RATIOS, "trackml_score")


PT_BIN_EDGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.2, 1.5, 2.0, 3.0, 5.0, 10.0, 100.0)
ETA_BIN_EDGES = tuple(np.round(np.linspace(-4.0, 4.0, 21), 6))


def ratio_estimate(numerator: float, denominator: float) -> Estimate:
    """Pooled ratio with its binomial error; None values for an empty denominator."""
    if denominator <= 0:
        return {"value": None, "error": None}
    p = numerator / denominator
    return {"value": float(p), "error": float(np.sqrt(max(p * (1.0 - p), 0.0) / denominator))}


def mean_estimate(values: Sequence[float | None]) -> Estimate:
    """Mean over events and its standard error; None entries (undefined per event) are skipped."""
    finite = np.array([v for v in values if v is not None], dtype=np.float64)
    if finite.size == 0:
        return {"value": None, "error": None}
    error = float(finite.std(ddof=1) / np.sqrt(finite.size)) if finite.size > 1 else None
    return {"value": float(finite.mean()), "error": error}


# --------------------------------------------------------------------------- track level


def event_track_metrics(
    truth: pd.DataFrame,
    particles: pd.DataFrame,
    submission: pd.DataFrame,
    cuts: EvaluationCuts = DEFAULT_CUTS,
) -> tuple[dict[str, Any], EventMatch]:
    """Counts and TrackML scores of one event, plus the matching they came from.

    The returned dict holds :func:`~trackgnn.evaluation.matching.event_counts` and
    ``trackml_score.all`` (the challenge score) and ``trackml_score.<signal>``: the same rule with
    the weight of every hit not from a signal particle set to zero, i.e. the fraction of the signal
    particles' weight that is reconstructed (None when they carry no weight).
    """
    match = match_event(truth, particles, submission, cuts)
    result: dict[str, Any] = dict(event_counts(match, cuts))
    result["trackml_score.all"] = trackml_score(truth, submission)
    signal_ids = match.particles.loc[match.particles["signal"], "particle_id"].to_numpy()
    signal_truth = truth.assign(
        weight=np.where(truth["particle_id"].isin(signal_ids), truth["weight"], 0.0)
    )
    signal_weight = float(signal_truth["weight"].sum())
    result[f"trackml_score.{cuts.signal_key}"] = (
        trackml_score(signal_truth, submission) if signal_weight > 0 else None
    )
    return result, match


def aggregate_track_metrics(
    per_event: Sequence[Mapping[str, Any]], cuts: EvaluationCuts = DEFAULT_CUTS
) -> dict[str, dict[str, Estimate]]:
    """``{metric: {signal_key: Estimate, "all": Estimate}}`` over events (see module docstring)."""
    result: dict[str, dict[str, Estimate]] = {}
    for variant in (cuts.signal_key, "all"):
        for name, (numerator, denominator) in TRACK_RATIOS.items():
            k = sum(event[f"{numerator}.{variant}"] for event in per_event)
            n = sum(event[f"{denominator}.{variant}"] for event in per_event)
            result.setdefault(name, {})[variant] = ratio_estimate(k, n)
        scores = [event[f"trackml_score.{variant}"] for event in per_event]
        result.setdefault("trackml_score", {})[variant] = mean_estimate(scores)
    return result


def efficiency_table(
    particles: pd.DataFrame, variable: str, bin_edges: Sequence[float]
) -> pd.DataFrame:
    """Physics and technical efficiency in bins of a particle variable (``pt`` or ``eta``).

    Args:
        particles: matched-particle tables (:class:`EventMatch` ``particles``) of one or more
            events, already restricted to the particles of interest (e.g. signal for ``eta``).
        variable: the column to bin.
        bin_edges: increasing bin edges; particles outside are left out.

    Returns:
        One row per bin: ``bin_low, bin_high, n_selected, n_selected_matched, physics_efficiency,
        physics_efficiency_error, n_reconstructable, n_reconstructable_matched,
        technical_efficiency, technical_efficiency_error`` (efficiencies NaN in empty bins).
    """
    edges = np.asarray(bin_edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or not np.all(np.diff(edges) > 0):
        raise TrackGNNError(f"efficiency_table: bin edges for {variable} must increase")
    values = particles[variable].to_numpy(np.float64)
    # Right-open bins [low, high), with the last edge included like numpy.histogram.
    bin_index = np.searchsorted(edges, values, side="right") - 1
    bin_index[values == edges[-1]] = edges.size - 2
    inside = (bin_index >= 0) & (bin_index < edges.size - 1)
    n_bins = edges.size - 1
    table = {"bin_low": edges[:-1], "bin_high": edges[1:]}
    matched = particles["matched"].to_numpy(bool)
    for kind, flag in (("physics", "selected"), ("technical", "reconstructable")):
        denominator_mask = particles[flag].to_numpy(bool) & inside
        total = np.bincount(bin_index[denominator_mask], minlength=n_bins)
        hit = np.bincount(bin_index[denominator_mask & matched], minlength=n_bins)
        with np.errstate(divide="ignore", invalid="ignore"):
            efficiency = hit / total
            error = np.sqrt(efficiency * (1.0 - efficiency) / total)
        table[f"n_{flag}"] = total
        table[f"n_{flag}_matched"] = hit
        table[f"{kind}_efficiency"] = efficiency
        table[f"{kind}_efficiency_error"] = error
    return pd.DataFrame(table)


# --------------------------------------------------------------------------- edge level


def roc_auc(scores: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties).

    Returns None when the labels hold only one class.
    """
    scores = np.asarray(scores.cpu() if isinstance(scores, torch.Tensor) else scores, np.float64)
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, bool)
    if scores.shape != labels.shape:
        raise TrackGNNError(f"roc_auc: scores {scores.shape} and labels {labels.shape} differ")
    n_positive = int(labels.sum())
    n_negative = labels.size - n_positive
    if n_positive == 0 or n_negative == 0:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # 1-based rank of a tied group = mean of the ranks it spans.
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0
    rank_sum = average_rank[inverse][labels].sum()
    u_statistic = rank_sum - n_positive * (n_positive + 1) / 2.0
    return float(u_statistic / (n_positive * n_negative))


def _undirected_keys(edges: torch.Tensor, n_hits: int) -> torch.Tensor:
    low = torch.minimum(edges[0], edges[1]).long()
    high = torch.maximum(edges[0], edges[1]).long()
    return torch.unique(low * n_hits + high)


def edge_metrics(
    graph: EventGraph,
    score_cut: float | None = None,
    cuts: EvaluationCuts = DEFAULT_CUTS,
    source: str = "graph",
) -> dict[str, Any]:
    """Edge-level figures of one event's graph at one stage.

    Edges with ``score > score_cut`` are kept (all edges when ``score_cut`` is None).

    Returns a dict with the counts ``n_hits, n_edges, n_true, n_same_particle, n_signal_truth,
    n_signal_truth_found`` and the figures ``efficiency`` (signal truth-graph edges found among the
    kept edges, in either direction, over all signal truth-graph edges; signal = pT > signal_pt and
    at least min_hits hits), ``purity`` (kept edges in the truth graph), ``purity_pid`` (kept edges
    joining two hits of one non-noise particle), ``edges_per_hit`` and ``auc`` (ROC AUC of the
    scores of all edges against ``y``; None without scores).
    """
    scores = graph.scores
    if score_cut is not None and scores is None:
        raise TrackGNNError(f"{source}: a score cut was given but the graph has no 'scores'")
    edge_index = graph.edge_index
    keep = (
        scores > score_cut
        if score_cut is not None
        else torch.ones(edge_index.shape[1], dtype=torch.bool)
    )
    n_hits = graph.n_hits
    kept_edges = edge_index[:, keep]

    truth_edges = graph.truth_edges
    first_hit = truth_edges[0]
    is_signal = (
        (graph.particle_id[first_hit] != 0)
        & (graph.pt[first_hit] > cuts.signal_pt)
        & (graph.nhits[first_hit] >= cuts.min_hits)
    )
    signal_keys = _undirected_keys(truth_edges[:, is_signal], n_hits)
    found = torch.isin(signal_keys, _undirected_keys(kept_edges, n_hits))

    n_edges = int(keep.sum())
    counts = {
        "n_hits": n_hits,
        "n_edges": n_edges,
        "n_true": int(graph.y[keep].sum()),
        "n_same_particle": int(graph.y_pid[keep].sum()),
        "n_signal_truth": int(signal_keys.numel()),
        "n_signal_truth_found": int(found.sum()),
    }
    return {
        **counts,
        "efficiency": ratio_estimate(counts["n_signal_truth_found"], counts["n_signal_truth"])[
            "value"
        ],
        "purity": ratio_estimate(counts["n_true"], n_edges)["value"],
        "purity_pid": ratio_estimate(counts["n_same_particle"], n_edges)["value"],
        "edges_per_hit": n_edges / n_hits if n_hits else None,
        "auc": roc_auc(scores, graph.y) if scores is not None else None,
    }


EDGE_METRICS = ("efficiency", "purity", "purity_pid", "edges_per_hit", "auc")


def aggregate_edge_metrics(per_event: Sequence[Mapping[str, Any]]) -> dict[str, Estimate]:
    """Pool the edge counts of events (binomial errors); average edges per hit and AUC.

    ``n_edges`` is the total over the events (no error).
    """
    total = {
        key: sum(event[key] for event in per_event)
        for key in (
            "n_edges",
            "n_true",
            "n_same_particle",
            "n_signal_truth",
            "n_signal_truth_found",
        )
    }
    return {
        "efficiency": ratio_estimate(total["n_signal_truth_found"], total["n_signal_truth"]),
        "purity": ratio_estimate(total["n_true"], total["n_edges"]),
        "purity_pid": ratio_estimate(total["n_same_particle"], total["n_edges"]),
        "edges_per_hit": mean_estimate([event["edges_per_hit"] for event in per_event]),
        "auc": mean_estimate([event["auc"] for event in per_event]),
        "n_edges": {"value": float(total["n_edges"]), "error": None},
    }
