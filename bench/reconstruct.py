"""Benchmark: one-process reconstruction (``trackgnn reconstruct``) per event at increasing pile-up.

For each mu, events are simulated first (not timed, in their own process). Then a fresh process
per mu loads the trained models once and reconstructs each event with
:func:`trackgnn.reconstruct.reconstruct_event`, the function the command runs, timing every
stage: ``read`` (TrackML CSVs), ``features``, ``embedding``, ``radius`` (radius graph and
labels), ``filter``, ``gnn``, ``tracks``, and their sum ``total``. ``peak_rss_mb`` is the
process's peak resident memory after the stage (Python, torch, the models and the event).

Side by side in the same process, on the same embedding: the configured radius search
(``graph.backend``, by default the k-d tree on the CPU) against the exact flat FAISS index
(``IndexFlatL2``, the search before), with the ratio of their times and the recall of the
configured graph's edges, and of its signal truth edges, against the flat search's graph.

Prints one JSON line per measurement (keys ``mu``, ``n_hits``, ``stage``, ``seconds``,
``peak_rss_mb``), per-mu medians (``"statistic": "median"``), and a final summary line with the
median total at the largest mu, the exponent of total time against hits (a least-squares fit of
log time on log hits over all events) and the lowest recalls.

    python bench/reconstruct.py --quick                     # about two minutes
    python bench/reconstruct.py --models results/default/models --mu 20 50 100 200 --events 3
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import multiprocessing
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trackgnn.config import Config, config_from_dict
from trackgnn.features import build_features
from trackgnn.graph.construction import evaluation_cuts, signal_hits
from trackgnn.graph.radius import radius_graph, resolve_backend
from trackgnn.io import event_prefix, read_event
from trackgnn.models.checkpoint import resolve_device
from trackgnn.reconstruct import (
    STAGES,
    load_models,
    reconstruct_config,
    reconstruct_event,
)
from trackgnn.simulation import simulate_events


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    try:
        import faiss
    except ImportError:  # the flat search then runs as brute-force torch (--flat-backend)
        return
    faiss.omp_set_num_threads(threads)


def simulate(task: dict[str, Any]) -> None:
    simulate_events(
        task["events"], task["mu"], task["seed"], task["directory"], task["first_event_id"]
    )


def edge_keys(edges: torch.Tensor, n_hits: int) -> np.ndarray:
    return (edges[0] * n_hits + edges[1]).cpu().numpy()


def compare_searches(
    cfg: Config, models: Any, prefix: Path, flat_backend: str = "faiss"
) -> dict[str, Any]:
    """Time the configured radius search and the exact flat one on one embedding; recalls."""
    data = build_features(read_event(prefix))
    with torch.no_grad():
        emb = models.embedding.embed(data.x.to(resolve_device(cfg.device)), cfg.graph.chunk_size)
    g = cfg.graph
    graphs, seconds = {}, {}
    for name, backend in (("configured", g.backend), ("flat", flat_backend)):
        start = time.perf_counter()
        graphs[name] = radius_graph(emb, data.r, g.radius, g.k_max, g.chunk_size, backend)
        seconds[name] = time.perf_counter() - start
    n_hits = len(emb)
    fast, exact = edge_keys(graphs["configured"], n_hits), edge_keys(graphs["flat"], n_hits)
    kept = np.isin(exact, fast)
    # Signal truth edges of the exact graph: truth-graph edges between hits of signal particles.
    cuts = evaluation_cuts(cfg)
    signal = signal_hits(data.particle_id, data.pt, data.nhits, cuts.signal_pt, cuts.min_hits)
    truth = data.truth_edges
    truth = truth[:, signal[truth[0]] & signal[truth[1]]]
    truth_keys = np.union1d(edge_keys(truth, n_hits), edge_keys(truth.flip(0), n_hits))
    signal_exact = np.isin(exact, truth_keys)
    return {
        "backend": resolve_backend(g.backend, emb.device),
        "configured_s": seconds["configured"],
        "flat_s": seconds["flat"],
        "n_edges_flat": len(exact),
        "n_edges": len(fast),
        "edge_recall": float(kept.mean()) if len(exact) else 1.0,
        "n_signal_edges_flat": int(signal_exact.sum()),
        "signal_edge_recall": float(kept[signal_exact].mean()) if signal_exact.any() else 1.0,
    }


def reconstruct_mu(task: dict[str, Any]) -> list[dict[str, Any]]:
    """In a fresh process: load the models, reconstruct the events, compare the searches."""
    set_threads(task["threads"])
    cfg = reconstruct_config(task["models"], task["config"])
    # Neither the search backend (every backend is exact) nor the filter's chunk size (tile-padded
    # chunks) changes the result; a training run's resolved config pins its own.
    cfg = dataclasses.replace(
        cfg,
        graph=dataclasses.replace(cfg.graph, backend=task["backend"]),
        filter=dataclasses.replace(cfg.filter, chunk_edges=task["chunk_edges"]),
        device=task["device"] or cfg.device,
    )
    models = load_models(task["models"], resolve_device(cfg.device))
    records = []
    for i, event_id in enumerate(task["event_ids"]):
        prefix = event_prefix(task["directory"], event_id)
        result = reconstruct_event(cfg, models, prefix)
        n_hits = int(result.figures["n_hits"])
        base = {"mu": task["mu"], "event_id": event_id, "n_hits": n_hits}
        for stage in STAGES:
            records.append(
                {
                    **base,
                    "stage": stage,
                    "seconds": result.seconds[stage],
                    "peak_rss_mb": result.peak_rss_mb[stage],
                }
            )
        records.append(
            {
                **base,
                "stage": "total",
                "seconds": sum(result.seconds.values()),
                "peak_rss_mb": max(result.peak_rss_mb.values()),
                "n_candidate_edges": int(result.figures["n_candidate_edges"]),
                "n_filtered_edges": int(result.figures["n_filtered_edges"]),
                "n_tracks": int(result.figures["n_tracks"]),
            }
        )
        if i < task["compare_events"]:
            comparison = compare_searches(cfg, models, prefix, task["flat_backend"])
            peak = records[-1]["peak_rss_mb"]
            for name in ("configured", "flat"):
                backend = comparison["backend"] if name == "configured" else "flat"
                records.append(
                    {
                        **base,
                        "stage": f"radius_search:{backend}",
                        "seconds": comparison[f"{name}_s"],
                        "peak_rss_mb": peak,
                    }
                )
            records.append(
                {
                    **base,
                    "stage": "radius_search:comparison",
                    "seconds": comparison["configured_s"],
                    "peak_rss_mb": peak,
                    "flat_over_configured": comparison["flat_s"] / comparison["configured_s"],
                    **{k: v for k, v in comparison.items() if not k.endswith("_s")},
                }
            )
    return records


def in_fresh_process(fn, task: dict[str, Any]) -> Any:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(fn, task).result()


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def fit_exponent(n_hits: list[int], seconds: list[float]) -> float | None:
    """Slope of log(seconds) against log(hits), least squares; None with fewer than 2 sizes."""
    if len(set(n_hits)) < 2:
        return None
    slope, _ = np.polyfit(np.log(n_hits), np.log(seconds), 1)
    return float(slope)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path("results/default/models"))
    parser.add_argument("--config", type=Path, help="default: the training run's config")
    parser.add_argument("--mu", type=float, nargs="+", default=[20, 50, 100, 200])
    parser.add_argument("--events", type=int, default=3, help="events per mu (median)")
    parser.add_argument(
        "--compare-events", type=int, default=1, help="events per mu timed with the flat search"
    )
    parser.add_argument("--threads", type=int, default=2)
    defaults = config_from_dict({}, "defaults")
    parser.add_argument(
        "--backend", default=defaults.graph.backend, help="radius search (overrides the config)"
    )
    parser.add_argument(
        "--chunk-edges",
        type=int,
        default=defaults.filter.chunk_edges,
        help="filter inference chunk (overrides the config)",
    )
    parser.add_argument("--device", help="cpu or cuda (overrides the config)")
    parser.add_argument(
        "--flat-backend",
        default="faiss" if importlib.util.find_spec("faiss") else "torch",
        help="the exact flat search compared with (faiss, or brute-force torch)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="mu 20 and 200, one event each")
    args = parser.parse_args(argv)
    if args.quick:
        args.mu, args.events, args.compare_events = [20, 200], 1, 1

    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-reconstruct-") as tmp:
        for number, mu in enumerate(args.mu):
            directory = Path(tmp) / f"mu{mu:g}"
            first = 100_000 * (number + 1)
            task = {
                "events": args.events,
                "mu": mu,
                "seed": args.seed,
                "directory": str(directory),
                "first_event_id": first,
            }
            in_fresh_process(simulate, task)
            task = {
                "mu": mu,
                "directory": str(directory),
                "event_ids": list(range(first, first + args.events)),
                "models": str(args.models),
                "config": None if args.config is None else str(args.config),
                "threads": args.threads,
                "backend": args.backend,
                "chunk_edges": args.chunk_edges,
                "compare_events": args.compare_events,
                "device": args.device,
                "flat_backend": args.flat_backend,
            }
            mu_records = in_fresh_process(reconstruct_mu, task)
            for record in mu_records:
                emit(record)
            records.extend(mu_records)
            for stage in (*STAGES, "total"):
                rows = [r for r in mu_records if r["stage"] == stage]
                emit(
                    {
                        "mu": mu,
                        "statistic": "median",
                        "n_events": len(rows),
                        "n_hits": statistics.median(r["n_hits"] for r in rows),
                        "stage": stage,
                        "seconds": statistics.median(r["seconds"] for r in rows),
                        "peak_rss_mb": max(r["peak_rss_mb"] for r in rows),
                    }
                )

    totals = [r for r in records if r["stage"] == "total"]
    comparisons = [r for r in records if r["stage"] == "radius_search:comparison"]
    top = max(args.mu)
    top_comparisons = [r for r in comparisons if r["mu"] == top]
    summary = {
        "summary": True,
        f"mu{top:g}_total_s": statistics.median(r["seconds"] for r in totals if r["mu"] == top),
        "exponent": fit_exponent([r["n_hits"] for r in totals], [r["seconds"] for r in totals]),
        "edge_recall": min(r["edge_recall"] for r in comparisons),
        "signal_edge_recall": min(r["signal_edge_recall"] for r in comparisons),
        f"mu{top:g}_flat_over_configured": statistics.median(
            r["flat_over_configured"] for r in top_comparisons
        ),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in totals),
        "threads": args.threads,
        "backend": args.backend,
        "chunk_edges": args.chunk_edges,
        "device": args.device,
        "flat_backend": args.flat_backend,
        "events_per_mu": args.events,
        "models": str(args.models),
    }
    emit(summary)
    return 0 if all(math.isfinite(r["seconds"]) for r in totals) else 1


if __name__ == "__main__":
    sys.exit(main())
