"""Benchmark: track-building method and score cut, chosen on the validation events only.

Takes a finished run (its resolved config, filtered graphs and GNN checkpoint), scores the
filtered graphs of its validation and test events with the run's GNN (in memory; nothing in the
run is written), then builds tracks with every method and cut given and evaluates each event as
``trackgnn evaluate`` does (same matching, same TrackML score). The cut is chosen per method
on the validation events (highest mean TrackML score over all particles); the test events'
figures are then reported at that cut, so the choice never sees the test events.

Prints one JSON line per (split, method, cut) with pooled technical efficiency (pT > signal
cut), purity and mean TrackML score, then one ``"statistic": "chosen"`` line per method, and a
table, and per method why the test events' unmatched tracks at the chosen cut are unmatched
(fragments of a split particle, or no majority particle).

    python bench/track_building.py --config results/default/configs/config-<hash>.yaml
    python bench/track_building.py --config ... --methods components --cuts 0.5 0.9
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from trackgnn.config import load_config
from trackgnn.evaluation import EvaluationCuts, event_track_metrics, match_event
from trackgnn.event_data import load_graph
from trackgnn.graph.components import build_tracks, submission_frame
from trackgnn.io import read_event
from trackgnn.models.checkpoint import load_model
from trackgnn.models.interaction_gnn import InteractionGNN
from trackgnn.scoring import KIND, gnn_logits
from trackgnn.workflow import WorkflowContext

DEFAULT_CUTS = (0.3, 0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97)


def scored_events(config: Path, split: str) -> list[tuple[Any, Any, torch.Tensor]]:
    """(event, graph, scores) of each event of ``split``, scored with the run's GNN."""
    cfg = load_config(config)
    context = WorkflowContext(cfg)
    model, _ = load_model(cfg.run_dir / "models" / "gnn.ckpt", KIND, InteractionGNN)
    result = []
    for event_id in context.event_ids(split):
        graph = load_graph(cfg.run_dir / "filter" / f"event{event_id}.pt")
        scores = torch.sigmoid(gnn_logits(model, graph).float())
        event = read_event(context.event_prefix(event_id), require_truth=True)
        result.append((event, graph, scores))
    return result


def _submission(
    event: Any, graph: Any, edge_scores: torch.Tensor, method: str, cut: float, cuts: EvaluationCuts
) -> Any:
    """The event's tracks built by ``method`` at ``cut``, as a TrackML submission."""
    labels = build_tracks(
        graph.n_hits,
        graph.edge_index,
        edge_scores,
        score_cut=cut,
        min_length=cuts.min_track_length,
        method=method,  # type: ignore[arg-type]
    )
    return submission_frame(graph.hit_id, labels, "bench", event.truth["hit_id"].to_numpy())


def evaluate(
    events: list[tuple[Any, Any, torch.Tensor]],
    method: str,
    cut: float,
    cuts: EvaluationCuts,
) -> dict[str, float]:
    """Pooled technical efficiency and purity, mean TrackML score, over ``events``."""
    signal = cuts.signal_key
    totals = {"tech_k": 0, "tech_n": 0, "pur_k": 0, "pur_n": 0}
    scores = []
    for event, graph, edge_scores in events:
        submission = _submission(event, graph, edge_scores, method, cut, cuts)
        counts, _ = event_track_metrics(event.truth, event.particles, submission, cuts)
        totals["tech_k"] += counts[f"n_reconstructable_matched.{signal}"]
        totals["tech_n"] += counts[f"n_reconstructable.{signal}"]
        totals["pur_k"] += counts["n_tracks_matched.all"]
        totals["pur_n"] += counts["n_tracks.all"]
        scores.append(counts["trackml_score.all"])
    return {
        "technical_efficiency": totals["tech_k"] / max(totals["tech_n"], 1),
        "purity": totals["pur_k"] / max(totals["pur_n"], 1),
        "trackml_score": statistics.fmean(scores),
    }


def unmatched_tracks(
    events: list[tuple[Any, Any, torch.Tensor]], method: str, cut: float, cuts: EvaluationCuts
) -> dict[str, int]:
    """Why tracks are unmatched: ``fragment`` (its majority particle's hits are split, the track
    holds at most half of them) or ``no_majority`` (no particle holds more than half of the
    track: merged tracks, or noise), with ``particle_unmatched``: fragments whose particle has
    no matched track at all."""
    counts = {"tracks": 0, "unmatched": 0, "fragment": 0, "no_majority": 0}
    counts["particle_unmatched"] = 0
    for event, graph, edge_scores in events:
        submission = _submission(event, graph, edge_scores, method, cut, cuts)
        match = match_event(event.truth, event.particles, submission, cuts)
        tracks, particles = match.tracks, match.particles.set_index("particle_id")
        unmatched = tracks[~tracks["matched"]]
        has_majority = unmatched["majority_particle"] != 0
        majority = particles.loc[unmatched.loc[has_majority, "majority_particle"]]
        counts["tracks"] += len(tracks)
        counts["unmatched"] += len(unmatched)
        counts["no_majority"] += int((~has_majority).sum())
        counts["fragment"] += int(has_majority.sum())
        counts["particle_unmatched"] += int((~majority["matched"].to_numpy()).sum())
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="the run's resolved config")
    parser.add_argument("--methods", nargs="+", default=["components", "walkthrough"])
    parser.add_argument("--cuts", nargs="+", type=float, default=list(DEFAULT_CUTS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    cuts = EvaluationCuts.from_config(cfg)

    results: dict[tuple[str, str, float], dict[str, float]] = {}
    for split in ("val", "test"):
        events = scored_events(args.config, split)
        for method in args.methods:
            for cut in args.cuts:
                figures = evaluate(events, method, cut, cuts)
                results[split, method, cut] = figures
                row = {"split": split, "events": len(events), "method": method, "cut": cut}
                print(json.dumps({**row, **figures}), flush=True)

    print(
        f"\n{'method':<12} {'cut (val)':>9} {'val score':>9} {'test eff':>8} "
        f"{'test purity':>11} {'test score':>10}"
    )
    for method in args.methods:
        best = max(args.cuts, key=lambda c: results["val", method, c]["trackml_score"])
        test = results["test", method, best]
        chosen = {"statistic": "chosen", "method": method, "cut": best}
        chosen["val_trackml_score"] = results["val", method, best]["trackml_score"]
        print(json.dumps({**chosen, **{f"test_{k}": v for k, v in test.items()}}), flush=True)
        print(
            f"{method:<12} {best:>9.2f} {chosen['val_trackml_score']:>9.4f} "
            f"{test['technical_efficiency']:>8.4f} {test['purity']:>11.4f} "
            f"{test['trackml_score']:>10.4f}"
        )
        why = unmatched_tracks(events, method, best, cuts)  # the test events
        print(json.dumps({"statistic": "unmatched_test_tracks", "method": method, **why}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
