"""Benchmark: graph building and edge filtering per event at increasing pile-up.

For each mu, simulates an event (not timed), builds its features, and measures, each stage in a
fresh process (as the pipeline runs them: two rules) so that the peak resident memory is the
stage's own:

* ``build_graph``: the stage function (embedding, radius graph, labels, file write);
* ``filter_graph``: the stage function on that graph (chunked filter inference, cut, write);
* ``radius_search``: FAISS against the brute-force torch search on the same embedding, side by
  side in one process, with the ratio of median times and whether the edge sets are equal.

Models: trained checkpoints when ``--embedding-ckpt`` and ``--filter-ckpt`` are given, otherwise
freshly initialised networks of the config's size (``"models": "fresh"`` in the output). A fresh
embedding is not a trained one's geometry, so with fresh models the radius defaults to
``inf``: every hit gets its ``k_max`` nearest neighbours, the densest graph the config allows
(an upper bound on time and memory for any trained model). ``--radius`` overrides.

Prints one JSON line per measurement (medians over ``--repeats``); ``peak_rss_mb`` is the whole
process (Python, torch, the model and the event), ``baseline_rss_mb`` the same before the stage.

    python bench/graph_construction.py --quick
    python bench/graph_construction.py --mu 20 50 100 200 --repeats 3
    python bench/graph_construction.py --embedding-ckpt results/default/models/embedding.ckpt \
        --filter-ckpt results/default/models/filter.ckpt
"""

from __future__ import annotations

import argparse
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

import torch

from trackgnn.config import config_from_dict
from trackgnn.features import build_features
from trackgnn.geometry import Detector
from trackgnn.io import save_tensors
from trackgnn.models.embedding import EmbeddingNet
from trackgnn.models.filter import FilterNet
from trackgnn.process import peak_rss_mb
from trackgnn.simulation import simulate_event


def fresh_checkpoint(kind: str, model: torch.nn.Module, path: Path) -> None:
    """Save an untrained network in the checkpoint layout the stages load."""
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": {"model_kind": kind, "model": model.hparams, "resume_key": ""},
        },
        path,
    )


def run_stage(task: dict[str, Any]) -> dict[str, Any]:
    """Child process: run one stage on one event; time it and report peak RSS."""
    from trackgnn.graph.construction import build_graph, filter_graph

    torch.set_num_threads(task["threads"])
    cfg = config_from_dict(task["config"])
    baseline = peak_rss_mb()
    start = time.perf_counter()
    if task["stage"] == "build_graph":
        metrics = build_graph(cfg, task["embedding"], task["features"], task["graph"])
    else:
        metrics = filter_graph(cfg, task["filter"], task["graph"], task["filtered"])
    return {
        "time_s": time.perf_counter() - start,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": peak_rss_mb(),
        "metrics": metrics,
    }


def in_fresh_process(task: dict[str, Any]) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(run_stage, task).result()


def time_radius_search(
    emb: torch.Tensor, r: torch.Tensor, cfg: Any, repeats: int
) -> dict[str, Any]:
    """FAISS and torch radius graphs on one embedding: median times, ratio, equality."""
    from trackgnn.graph.radius import radius_graph

    times: dict[str, list[float]] = {"faiss": [], "torch": []}
    graphs = {}
    for _ in range(repeats):
        for backend in ("faiss", "torch"):  # interleaved so drifts hit both alike
            start = time.perf_counter()
            graphs[backend] = radius_graph(
                emb, r, cfg.graph.radius, cfg.graph.k_max, cfg.graph.chunk_size, backend
            )
            times[backend].append(time.perf_counter() - start)
    faiss_s = statistics.median(times["faiss"])
    torch_s = statistics.median(times["torch"])
    return {
        "faiss_s": faiss_s,
        "torch_s": torch_s,
        "torch_over_faiss": torch_s / faiss_s,
        "same_edges": bool(torch.equal(graphs["faiss"], graphs["torch"])),
        "edges_per_hit": graphs["faiss"].shape[1] / len(r),
    }


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record, sort_keys=True), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mu", type=float, nargs="+", default=[20, 50, 100, 200])
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--embedding-ckpt", type=Path, help="trained embedding checkpoint")
    parser.add_argument("--filter-ckpt", type=Path, help="trained filter checkpoint")
    parser.add_argument("--config", type=Path, help="config YAML (default: embedded default)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--radius", type=float, help="graph radius (default: config; inf if fresh)")
    parser.add_argument("--quick", action="store_true", help="mu = 20, one repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.mu, args.repeats = [20.0], 1
    if (args.embedding_ckpt is None) != (args.filter_ckpt is None):
        parser.error("give both --embedding-ckpt and --filter-ckpt, or neither")

    import yaml

    raw = yaml.safe_load(args.config.read_text()) if args.config else {}
    raw = {**(raw or {}), "device": "cpu"}
    models = "trained" if args.embedding_ckpt else "fresh"
    radius = args.radius if args.radius is not None else (math.inf if models == "fresh" else None)
    if radius is not None:
        # JSON has no inf: a radius beyond any embedding distance makes k_max decide alone.
        raw["graph"] = {**raw.get("graph", {}), "radius": min(radius, 1e30)}
    cfg = config_from_dict(raw)
    detector = Detector.load()
    with tempfile.TemporaryDirectory(prefix="bench-graph-") as tmp_name:
        tmp = Path(tmp_name)
        if models == "fresh":
            torch.manual_seed(args.seed)
            emb_cfg, flt_cfg = cfg.embedding, cfg.filter
            embedding = EmbeddingNet(
                8,
                emb_cfg.emb_dim,
                emb_cfg.hidden,
                emb_cfg.n_layers,
                emb_cfg.activation,
                emb_cfg.layer_norm,
            )
            filter_net = FilterNet(
                8, flt_cfg.hidden, flt_cfg.n_layers, flt_cfg.activation, flt_cfg.layer_norm
            )
            args.embedding_ckpt, args.filter_ckpt = tmp / "embedding.ckpt", tmp / "filter.ckpt"
            fresh_checkpoint("embedding", embedding, args.embedding_ckpt)
            fresh_checkpoint("filter", filter_net, args.filter_ckpt)
        from trackgnn.models.checkpoint import load_model

        embedding, _ = load_model(args.embedding_ckpt, "embedding", EmbeddingNet)
        for mu in args.mu:
            event, _ = simulate_event(detector, 1000, mu, args.seed)
            features = build_features(event)
            n_hits = len(features.hit_id)
            feature_file = tmp / f"features-mu{mu:g}.pt"
            save_tensors(features, feature_file)
            common = {
                "bench": "graph_construction",
                "mu": mu,
                "n_hits": n_hits,
                "models": models,
                "radius": cfg.graph.radius,
                "k_max": cfg.graph.k_max,
                "threads": args.threads,
            }
            task = {
                "config": raw,
                "threads": args.threads,
                "embedding": str(args.embedding_ckpt),
                "filter": str(args.filter_ckpt),
                "features": str(feature_file),
                "graph": str(tmp / f"graph-mu{mu:g}.pt"),
                "filtered": str(tmp / f"filtered-mu{mu:g}.pt"),
            }
            for stage in ("build_graph", "filter_graph"):
                runs = [in_fresh_process({**task, "stage": stage}) for _ in range(args.repeats)]
                metrics = runs[-1]["metrics"]
                record = {
                    **common,
                    "stage": stage,
                    "time_s": statistics.median(run["time_s"] for run in runs),
                    "peak_rss_mb": statistics.median(run["peak_rss_mb"] for run in runs),
                    "baseline_rss_mb": statistics.median(run["baseline_rss_mb"] for run in runs),
                    "edges_per_hit": metrics["edges_per_hit"],
                    "n_edges": metrics["n_edges"],
                    "signal_efficiency": metrics["efficiency"],
                    "purity": metrics["purity"],
                }
                if stage == "filter_graph":
                    record["n_edges_in"] = metrics["n_edges_in"]
                emit(record)
            torch.set_num_threads(args.threads)
            with torch.no_grad():
                emb = embedding.embed(features.x, cfg.graph.chunk_size)
            emit(
                {
                    **common,
                    "stage": "radius_search",
                    **time_radius_search(emb, features.r, cfg, args.repeats),
                }
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
