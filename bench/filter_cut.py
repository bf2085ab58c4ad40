"""Benchmark: the filter cut's trade-off between edge reduction and truth-edge efficiency.

Takes a finished run (its resolved config, candidate graphs and filter checkpoint), scores the
candidate graphs of the chosen split (the validation events by default, so a cut chosen from this
table never sees the test events) with the run's filter, in memory, and prints for each cut the
pooled edge reduction (candidate edges / kept edges), edges per hit, and the kept fraction of the
truth graph's edges (all particles, and signal particles as ``trackgnn evaluate`` defines them),
counted against the whole truth graph so the graph stage's losses are included.

Prints one JSON line per cut and a table.

    python bench/filter_cut.py --config results/default/configs/config-<hash>.yaml
    python bench/filter_cut.py --config ... --split test --cuts 0.1 0.17
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from trackgnn.config import load_config
from trackgnn.event_data import load_graph
from trackgnn.graph.construction import evaluation_cuts, filter_scores, stage_edge_metrics
from trackgnn.models.checkpoint import load_model
from trackgnn.models.filter import FilterNet
from trackgnn.workflow import WorkflowContext

DEFAULT_CUTS = (0.05, 0.08, 0.1, 0.12, 0.15, 0.17, 0.2, 0.25, 0.3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="the run's resolved config")
    parser.add_argument("--split", choices=["train", "val", "test"], default="val")
    parser.add_argument("--cuts", type=float, nargs="+", default=list(DEFAULT_CUTS))
    args = parser.parse_args(argv)

    cfg = load_config(args.config)
    context = WorkflowContext(cfg)
    cuts = evaluation_cuts(cfg)
    model, _ = load_model(cfg.run_dir / "models" / "filter.ckpt", "filter", FilterNet)
    totals = {cut: {"kept": 0, "true": 0, "signal_kept": 0} for cut in args.cuts}
    n_edges = n_hits = n_truth = n_signal = 0
    for event_id in context.event_ids(args.split):
        graph = load_graph(cfg.run_dir / "graph" / f"event{event_id}.pt")
        scores = filter_scores(model, graph, cfg.filter.chunk_edges)
        whole = stage_edge_metrics(graph, cuts)
        n_edges += graph.n_edges
        n_hits += graph.n_hits
        n_truth += whole["n_truth"]
        n_signal += whole["n_signal_truth"]
        for cut in args.cuts:
            kept = stage_edge_metrics(graph.keep_edges(scores >= cut, scores), cuts)
            totals[cut]["kept"] += kept["n_edges"]
            totals[cut]["true"] += kept["n_true"]
            totals[cut]["signal_kept"] += kept["n_signal_truth_found"]
    rows = []
    for cut in args.cuts:
        t = totals[cut]
        row = {
            "split": args.split,
            "cut": cut,
            "edge_reduction": n_edges / max(t["kept"], 1),
            "edges_per_hit": t["kept"] / max(n_hits, 1),
            "efficiency_all": t["true"] / max(n_truth, 1),
            "efficiency_signal": t["signal_kept"] / max(n_signal, 1),
        }
        rows.append(row)
        print(json.dumps(row))
    print(
        f"\n{'cut':>6} {'reduction':>10} {'edges/hit':>10} {'eff (all)':>10} {'eff (signal)':>13}"
    )
    for row in rows:
        print(
            f"{row['cut']:>6.3f} {row['edge_reduction']:>9.1f}x {row['edges_per_hit']:>10.2f} "
            f"{row['efficiency_all']:>10.4f} {row['efficiency_signal']:>13.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
