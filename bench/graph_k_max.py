"""Benchmark: what the radius graph's neighbour cap ``k_max`` and radius cost in efficiency.

At high pile-up a hit has many neighbours inside the embedding radius and the cap decides which
are kept. For a trained embedding, simulates events at each mu (not the run's events: seeds of
the bench), embeds them once and builds the radius graph at every (radius, k_max) given,
printing the kept fraction of the truth graph's edges (all particles, and signal particles as
``trackgnn evaluate`` defines them), edges per hit and the share of hits with at least ``k_max``
edges (where the cap can bind), pooled over the events.

    python bench/graph_k_max.py --models results/default/models --mu 200
    python bench/graph_k_max.py --models ... --radius 0.1 0.15 --k-max 64 128 256
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from trackgnn.config import config_from_dict, load_config
from trackgnn.event_data import EventGraph
from trackgnn.features import build_features
from trackgnn.geometry import Detector
from trackgnn.graph.construction import evaluation_cuts, stage_edge_metrics
from trackgnn.graph.radius import radius_graph
from trackgnn.graph.truth import edge_labels
from trackgnn.models.checkpoint import load_model
from trackgnn.models.embedding import EmbeddingNet
from trackgnn.simulation import simulate_event


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("results/default/models"))
    parser.add_argument("--config", type=Path, help="run config (default: the embedded default)")
    parser.add_argument("--mu", type=float, nargs="+", default=[200.0])
    parser.add_argument("--events", type=int, default=2, help="events per mu")
    parser.add_argument("--radius", type=float, nargs="+", default=[0.1])
    parser.add_argument("--k-max", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)

    cfg = load_config(args.config) if args.config else config_from_dict({})
    cuts = evaluation_cuts(cfg)
    model, _ = load_model(args.models / "embedding.ckpt", "embedding", EmbeddingNet)
    detector = Detector.load()
    for mu in args.mu:
        totals: dict[tuple[float, int], dict[str, int]] = {}
        n_hits = 0
        for index in range(args.events):
            event, _ = simulate_event(detector, 5000 + index, mu, args.seed + index)
            hits = build_features(event)
            n_hits += len(hits.hit_id)
            with torch.no_grad():
                emb = model.embed(hits.x, cfg.graph.chunk_size)
            for radius in args.radius:
                for k_max in args.k_max:
                    edges = radius_graph(emb, hits.r, radius, k_max, cfg.graph.chunk_size, "kdtree")
                    y, y_pid = edge_labels(edges, hits.truth_edges, hits.particle_id)
                    metrics = stage_edge_metrics(EventGraph.from_hits(hits, edges, y, y_pid), cuts)
                    degree = torch.bincount(edges.flatten(), minlength=len(hits.hit_id))
                    t = totals.setdefault(
                        (radius, k_max),
                        dict.fromkeys(
                            ("edges", "true", "truth", "signal_found", "signal", "full"), 0
                        ),
                    )
                    t["edges"] += metrics["n_edges"]
                    t["true"] += metrics["n_true"]
                    t["truth"] += metrics["n_truth"]
                    t["signal_found"] += metrics["n_signal_truth_found"]
                    t["signal"] += metrics["n_signal_truth"]
                    t["full"] += int((degree >= k_max).sum())
        for (radius, k_max), t in totals.items():
            print(
                json.dumps(
                    {
                        "bench": "graph_k_max",
                        "mu": mu,
                        "events": args.events,
                        "hits_per_event": n_hits / args.events,
                        "radius": radius,
                        "k_max": k_max,
                        "edges_per_hit": t["edges"] / n_hits,
                        "efficiency_all": t["true"] / max(t["truth"], 1),
                        "efficiency_signal": t["signal_found"] / max(t["signal"], 1),
                        "hits_at_cap_share": t["full"] / n_hits,
                    }
                ),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
