"""ShaDow subgraph sampling throughput and memory: reference vs pyg vs bulk (k = 1, 4, 16).

Each measurement samples the same number of roots (``--roots``, a multiple of 16 * b) with one
sampler and gathers what a training step needs: node features ``x[node_ids]`` and edge labels
``y[edge_ids]`` of every batch. Samplers run interleaved, round robin (the order rotates each
round) after an untimed warm-up, and the medians over rounds are reported. Roots come from
``epoch_roots`` over all vertices, drawn by ``draw_roots`` as in training.

Torch runs with ``--threads`` intra-op threads (default 1; recorded in every line).

Peak memory is the process's peak resident set during the measurement (Linux: ``VmHWM`` after
resetting it through ``/proc/self/clear_refs``; elsewhere the process-lifetime peak).

Graphs: ``synthetic`` (100k vertices, 1M directed edges, each vertex linked to 10 distinct
vertices among the next 64 ids, a detector-like local structure whose induced subgraphs are dense),
and, with ``--graph-file path.pt``, a real event graph (``torch.save`` dict with ``edge_index`` and
``x``, optional ``y``).

Output (stdout): one JSON line per (graph, sampler, k) with ``sampler``, ``k``, ``graph``,
``subgraphs_per_s``, ``edges_per_s``, ``peak_rss_mb``, ``threads`` and more; a ``pyg`` line with
``skipped`` when torch-sparse is missing; then per graph a ``summary`` line with
``bulk_over_reference`` (best k) and ``bulk_over_pyg``.

    python bench/sampling.py --quick          # < 1 minute
    python bench/sampling.py                  # a few minutes
    python bench/sampling.py --graph-file results/run/graphs/event000001000.pt
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from trackgnn.errors import TrackGNNError
from trackgnn.event_data import load_graph
from trackgnn.graph.csr import SamplingGraph, build_sampling_graph
from trackgnn.graph.shadow import ShadowSampler, epoch_roots, make_sampler
from trackgnn.process import peak_rss_mb

NODE_FEATURES = 12
TARGET_OVER_REFERENCE = 4.0
TARGET_OVER_PYG = 2.5


def synthetic_graph(num_nodes: int, out_degree: int, window: int, seed: int) -> torch.Tensor:
    """Directed edges i -> i + d, ``out_degree`` distinct d per vertex drawn from 1..window."""
    rng = np.random.default_rng(seed)
    steps = np.argsort(rng.random((num_nodes, window)), axis=1)[:, :out_degree] + 1
    src = np.repeat(np.arange(num_nodes), out_degree)
    dst = src + steps.ravel()
    # wrap around so every vertex has the same out-degree and the edge count is exact
    return torch.from_numpy(np.stack([src, dst % num_nodes]))


def load_graph_file(path: Path) -> tuple[torch.Tensor, int, torch.Tensor, torch.Tensor | None]:
    """``edge_index``, vertex count, ``x`` and same-particle labels ``y`` of an event graph file."""
    graph = load_graph(path)
    return graph.edge_index, graph.n_hits, graph.x, graph.y_pid


class PeakRSS:
    """Peak resident set size (MiB) of this process between ``__enter__`` and ``__exit__``."""

    def __init__(self) -> None:
        self.peak_mb = float("nan")
        self.start_mb = float("nan")
        self.scope = "measurement"

    @staticmethod
    def _status_kb(field: str) -> int | None:
        try:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith(field + ":"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None

    def __enter__(self) -> PeakRSS:
        rss = self._status_kb("VmRSS")
        self.start_mb = rss / 1024 if rss is not None else float("nan")
        try:
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")  # resets VmHWM to the current RSS
        except OSError:
            self.scope = "process"
        return self

    def __exit__(self, *exc: object) -> None:
        hwm = self._status_kb("VmHWM") if self.scope == "measurement" else None
        if hwm is None:
            self.scope = "process"
            self.peak_mb = peak_rss_mb()
        else:
            self.peak_mb = hwm / 1024


def measure(
    sampler: ShadowSampler,
    roots: torch.Tensor,
    generator: torch.Generator,
    x: torch.Tensor,
    y: torch.Tensor,
) -> dict[str, float]:
    """Sample ``roots`` once, gather features and labels, and time it."""
    with PeakRSS() as rss:
        cpu_start = time.process_time()
        start = time.perf_counter()
        batches = sampler.sample(roots, generator)
        edges = 0
        for batch in batches:
            node_x = x.index_select(0, batch.node_ids.to(x.device))
            edge_y = y.index_select(0, batch.edge_ids.to(y.device))
            edges += batch.num_edges
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu_start
    del node_x, edge_y
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "subgraphs": float(roots.numel()),
        "edges": float(edges),
        "peak_rss_mb": rss.peak_mb,
        "start_rss_mb": rss.start_mb,
        "rss_scope": rss.scope,
    }


def run_graph(
    name: str,
    graph: SamplingGraph,
    x: torch.Tensor,
    y: torch.Tensor,
    args: argparse.Namespace,
) -> None:
    """Interleaved measurements of every sampler on one graph; prints JSON lines."""
    configs: list[tuple[str, int]] = [("reference", 1)]
    try:
        make_sampler("pyg", graph, args.depth, args.fanout, args.batch_size)
        configs.append(("pyg", 1))
    except TrackGNNError as error:
        print(
            json.dumps({"sampler": "pyg", "k": 1, "graph": name, "skipped": str(error)}),
            flush=True,
        )
    configs += [("bulk", k) for k in args.k]

    samplers = {
        (s, k): make_sampler(
            s, graph, args.depth, args.fanout, args.batch_size, k=k, device=args.device
        )
        for s, k in configs
    }
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    # roots drawn as in training: one shuffled epoch after another
    root_stream = _roots_forever(graph.num_nodes, args.roots, generator)
    results: dict[tuple[str, int], list[dict[str, float]]] = {c: [] for c in configs}
    for round_index in range(args.warmup + args.rounds):
        shift = round_index % len(configs)
        for config in configs[shift:] + configs[:shift]:
            roots = next(root_stream)
            result = measure(samplers[config], roots, generator, x, y)
            if round_index >= args.warmup:
                results[config].append(result)

    medians, cpu_medians = {}, {}
    for (sampler_name, k), runs in results.items():
        rates = [r["subgraphs"] / r["seconds"] for r in runs]
        edge_rates = [r["edges"] / r["seconds"] for r in runs]
        cpu_rates = [r["subgraphs"] / r["cpu_seconds"] for r in runs]
        medians[(sampler_name, k)] = statistics.median(rates)
        cpu_medians[(sampler_name, k)] = statistics.median(cpu_rates)
        line = {
            "sampler": sampler_name,
            "k": k,
            "graph": name,
            "subgraphs_per_s": round(statistics.median(rates), 1),
            "edges_per_s": round(statistics.median(edge_rates), 1),
            # per second of this process's CPU time: insensitive to other load on the machine
            "subgraphs_per_cpu_s": round(statistics.median(cpu_rates), 1),
            "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs), 1),
            # what the sampler itself adds on top of the resident graph, features and labels
            "peak_rss_over_start_mb": round(
                max(r["peak_rss_mb"] - r["start_rss_mb"] for r in runs), 1
            ),
            "rss_scope": runs[0]["rss_scope"],
            "threads": torch.get_num_threads(),
            "device": str(args.device) if sampler_name == "bulk" else "cpu",
            "rounds": len(runs),
            "roots_per_round": args.roots,
            "batch_size": args.batch_size,
            "depth": args.depth,
            "fanout": args.fanout,
            "mean_edges_per_subgraph": round(
                sum(r["edges"] for r in runs) / sum(r["subgraphs"] for r in runs), 1
            ),
            "subgraphs_per_s_runs": [round(v, 1) for v in rates],
        }
        print(json.dumps(line), flush=True)

    bulk = {k: v for (s, k), v in medians.items() if s == "bulk"}
    best_k = max(bulk, key=bulk.get)
    reference = medians[("reference", 1)]
    # paired per-round ratio too: robust to load that drifts between rounds
    paired = [
        (b["subgraphs"] / b["seconds"]) / (r["subgraphs"] / r["seconds"])
        for b, r in zip(results[("bulk", best_k)], results[("reference", 1)], strict=True)
    ]
    summary = {
        "summary": True,
        "graph": name,
        "threads": torch.get_num_threads(),
        "best_bulk_k": best_k,
        "bulk_over_reference": round(bulk[best_k] / reference, 2),
        "bulk_over_reference_paired_median": round(statistics.median(paired), 2),
        "bulk_over_reference_cpu_time": round(
            cpu_medians[("bulk", best_k)] / cpu_medians[("reference", 1)], 2
        ),
        "target_bulk_over_reference": TARGET_OVER_REFERENCE,
        "bulk_over_pyg": (
            round(bulk[best_k] / medians[("pyg", 1)], 2) if ("pyg", 1) in medians else None
        ),
        "target_bulk_over_pyg": TARGET_OVER_PYG,
    }
    summary["meets_target_over_reference"] = summary["bulk_over_reference"] >= TARGET_OVER_REFERENCE
    if ("pyg", 1) in medians:
        summary["meets_target_over_pyg"] = summary["bulk_over_pyg"] >= TARGET_OVER_PYG
    else:
        summary["pyg"] = "skipped: torch-sparse not installed"
    print(json.dumps(summary), flush=True)


def _roots_forever(num_nodes: int, count: int, generator: torch.Generator):
    while True:
        yield from epoch_roots(num_nodes, count, generator, drop_last=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, < 1 minute")
    parser.add_argument("--graph-file", type=Path, help="real event graph (.pt) to add")
    parser.add_argument("--no-synthetic", action="store_true", help="only the --graph-file graph")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1, like the single-threaded reference; 0 keeps "
        "torch's default, which on a shared, loaded machine can slow torch ops 100-fold)",
    )
    parser.add_argument("--device", default="cpu", help="device of the bulk sampler")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--fanout", type=int, default=6)
    parser.add_argument("--roots", type=int, help="roots per measurement (multiple of max k * b)")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--out-degree", type=int, default=10, help="synthetic out-degree")
    parser.add_argument("--window", type=int, default=64, help="synthetic: targets among next W")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    group = max(args.k) * args.batch_size
    if args.roots is None:
        args.roots = group if args.quick else 2 * group
    if args.roots % group:
        parser.error(f"--roots must be a multiple of max(k) * batch_size = {group}")
    if args.rounds is None:
        args.rounds = 3 if args.quick else 9

    graphs = []
    try:
        if not args.no_synthetic:
            edge_index = synthetic_graph(args.nodes, args.out_degree, args.window, args.seed)
            graphs.append(("synthetic", edge_index, args.nodes, None, None))
        if args.graph_file is not None:
            edge_index, num_nodes, x, y = load_graph_file(args.graph_file)
            graphs.append((args.graph_file.name, edge_index, num_nodes, x, y))
        for name, edge_index, num_nodes, x, y in graphs:
            graph = build_sampling_graph(edge_index, num_nodes)
            gen = torch.Generator().manual_seed(args.seed)
            if x is None:
                x = torch.randn(num_nodes, NODE_FEATURES, generator=gen)
            if y is None:
                y = (torch.rand(graph.num_edges, generator=gen) < 0.3).float()
            run_graph(name, graph, x.to(args.device), y.to(args.device), args)
    except TrackGNNError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
