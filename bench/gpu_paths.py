"""The pipeline's CUDA paths, checked and timed side by side with its CPU paths on one event.

One simulated event (``--mu``, default 200) gives realistic hits and a filter-like graph (its
truth edges plus random fake edges up to ``--edges-per-hit``, as in ``training_memory.py``), so no
trained model is needed. On that event, each measured in one process, medians over ``--reps``:

* ``radius``: the radius graph of the hits' cartesian positions (metres) with the torch backend
  on ``--device`` against the CPU k-d tree (and FAISS where importable); equal edge sets required.
* ``components``: connected components of the edges above a random score cut: torch on
  ``--device``, SciPy on the CPU, cuGraph and CuPy's ``csgraph`` where importable; the partitions
  must be equal.
* ``sampler``: the bulk ShaDow sampler (k minibatches per call) on ``--device`` against the CPU.
* ``train_step``: one Interaction GNN optimizer step (forward, backward, AdamW) on the whole graph
  and on one ShaDow minibatch, per precision mode: ``fp32``, ``bf16`` autocast, ``fp16`` autocast
  with a gradient scaler, and ``torch.compile`` with fp32 and bf16. Each mode starts from the same
  weights; its first loss is compared with fp32's (``loss_rel_diff``).

One JSON line per measurement with ``check`` and, where two paths are compared, ``ratio``
(CPU time over ``--device`` time) and ``equal``. Exit status 1 when a compared result differs.

    python bench/gpu_paths.py --device cuda              # the GPU machine, a few minutes
    python bench/gpu_paths.py --device cpu --quick       # the same code on a CPU, mu = 20
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from trackgnn.config import config_from_dict
from trackgnn.features import build_features
from trackgnn.geometry import Detector
from trackgnn.graph.components import connected_components
from trackgnn.graph.csr import build_sampling_graph
from trackgnn.graph.radius import radius_graph
from trackgnn.graph.shadow import make_sampler
from trackgnn.models.edges import hit_edge_features
from trackgnn.models.interaction_gnn import InteractionGNN
from trackgnn.simulation import simulate_event

FAILED: list[str] = []


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, reps: int, warmup: int = 1) -> tuple:
    """(median seconds, last result) of ``fn`` after ``warmup`` untimed calls."""
    result = None
    for _ in range(warmup):
        result = fn()
    synchronize(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def edge_keys(edges: torch.Tensor, n: int) -> np.ndarray:
    return np.sort((edges[0].long().cpu() * n + edges[1].long().cpu()).numpy())


def check_environment(device: torch.device) -> None:
    record: dict[str, Any] = {"check": "environment", "torch": torch.__version__}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        record |= {"gpu": props.name, "gpu_memory_gb": round(props.total_memory / 2**30, 1)}
        record["bf16_supported"] = torch.cuda.is_bf16_supported()
    try:
        import faiss

        record["faiss"] = faiss.__version__
        record["faiss_gpu"] = hasattr(faiss, "StandardGpuResources")
    except ImportError:
        record["faiss"] = None
    for name in ("cugraph", "cupy"):
        record[name] = importlib.util.find_spec(name) is not None
    record["cpu_threads"] = torch.get_num_threads()
    emit(record)


def check_radius(pos: torch.Tensor, r: torch.Tensor, device: torch.device, reps: int) -> None:
    radius, k_max = 0.05, 32  # metres: a dense neighbourhood, every backend capped the same
    backends = [("kdtree", torch.device("cpu")), ("torch", device)]
    if importlib.util.find_spec("faiss"):
        backends.append(("faiss", device))
    graphs, seconds = {}, {}
    for backend, where in backends:
        emb, rr = pos.to(where), r.to(where)
        seconds[backend], graphs[backend] = timed(
            lambda emb=emb, rr=rr, backend=backend: radius_graph(
                emb, rr, radius, k_max, 100_000, backend
            ),
            where,
            reps,
        )
    reference = edge_keys(graphs["kdtree"], len(pos))
    for backend, where in backends[1:]:
        equal = bool(np.array_equal(edge_keys(graphs[backend], len(pos)), reference))
        if not equal:
            FAILED.append(f"radius:{backend}")
        emit(
            {
                "check": "radius",
                "backend": backend,
                "device": str(where),
                "n_hits": len(pos),
                "n_edges": int(graphs[backend].shape[1]),
                "seconds": seconds[backend],
                "kdtree_cpu_seconds": seconds["kdtree"],
                "ratio": seconds["kdtree"] / seconds[backend],
                "equal": equal,
            }
        )


def _components_cupy(num_nodes: int, edge_index: torch.Tensor) -> torch.Tensor:
    import cupy
    import cupyx.scipy.sparse
    import cupyx.scipy.sparse.csgraph

    src, dst = cupy.asarray(edge_index[0]), cupy.asarray(edge_index[1])
    adjacency = cupyx.scipy.sparse.coo_matrix(
        (cupy.ones(src.shape[0], dtype=cupy.float32), (src, dst)), shape=(num_nodes, num_nodes)
    ).tocsr()
    _, labels = cupyx.scipy.sparse.csgraph.connected_components(adjacency, directed=False)
    return torch.as_tensor(labels, device=edge_index.device).long()


def canonical(labels: torch.Tensor) -> np.ndarray:
    """Each node's label replaced by the smallest node index carrying it."""
    labels = labels.cpu().numpy()
    first = np.full(labels.max() + 1, len(labels), dtype=np.int64)
    np.minimum.at(first, labels, np.arange(len(labels)))
    return first[labels]


def check_components(n: int, edges: torch.Tensor, device: torch.device, reps: int) -> None:
    scores = torch.rand(edges.shape[1], generator=torch.Generator().manual_seed(1))
    kept = edges[:, scores > 0.3]
    paths: list[tuple[str, torch.device, Callable[[torch.Tensor], torch.Tensor]]] = [
        ("scipy", torch.device("cpu"), lambda e: connected_components(n, e, "scipy")),
        ("torch", device, lambda e: connected_components(n, e, "torch")),
    ]
    if device.type == "cuda" and importlib.util.find_spec("cugraph"):
        paths.append(("cugraph", device, lambda e: connected_components(n, e, "cugraph")))
    if device.type == "cuda" and importlib.util.find_spec("cupy"):
        paths.append(("cupy_csgraph", device, lambda e: _components_cupy(n, e)))
    results, seconds = {}, {}
    for name, where, fn in list(paths):
        e = kept.to(where)
        try:
            seconds[name], results[name] = timed(lambda fn=fn, e=e: fn(e), where, reps)
        except (ImportError, RuntimeError) as err:  # CuPy's csgraph needs pylibcugraph
            emit({"check": "components", "backend": name, "unavailable": str(err)})
            paths.remove((name, where, fn))
    reference = canonical(results["scipy"])
    for name, where, _ in paths[1:]:
        equal = bool(np.array_equal(canonical(results[name]), reference))
        if not equal:
            FAILED.append(f"components:{name}")
        emit(
            {
                "check": "components",
                "backend": name,
                "device": str(where),
                "n_nodes": n,
                "n_edges": int(kept.shape[1]),
                "seconds": seconds[name],
                "scipy_cpu_seconds": seconds["scipy"],
                "ratio": seconds["scipy"] / seconds[name],
                "equal": equal,
            }
        )


def check_sampler(n: int, edges: torch.Tensor, device: torch.device, reps: int, shadow) -> None:
    graph = build_sampling_graph(edges, n)
    k, b = 4, shadow.batch_size
    roots = torch.randperm(n, generator=torch.Generator().manual_seed(2))[: k * b]
    seconds = {}
    for where in dict.fromkeys([torch.device("cpu"), device]):
        sampler = make_sampler("bulk", graph, shadow.depth, shadow.fanout, b, k=k, device=where)
        gen = torch.Generator(device=where).manual_seed(3)
        r = roots.to(where)
        seconds[where.type], batches = timed(
            lambda s=sampler, r=r, g=gen: s.sample(r, g), where, reps
        )
        emit(
            {
                "check": "sampler",
                "device": str(where),
                "k": k,
                "batch_size": b,
                "seconds_per_call": seconds[where.type],
                "subgraphs_per_s": k * b / seconds[where.type],
                "edges_per_call": sum(batch.num_edges for batch in batches),
            }
        )
    if device.type == "cuda":
        emit({"check": "sampler", "ratio": seconds["cpu"] / seconds["cuda"]})


def check_train_step(
    feats: dict, edges: torch.Tensor, y: torch.Tensor, device: torch.device, reps: int, args
) -> None:
    cfg = config_from_dict({}, "defaults").gnn
    edge_attr = hit_edge_features(feats.r, feats.phi, feats.z, feats.eta, edges)
    x = feats.x
    n = x.shape[0]
    sampler = make_sampler(
        "bulk",
        build_sampling_graph(edges, n),
        cfg.shadow.depth,
        cfg.shadow.fanout,
        cfg.shadow.batch_size,
        k=1,
        device="cpu",
    )
    roots = torch.randperm(n, generator=torch.Generator().manual_seed(4))[: cfg.shadow.batch_size]
    batch = sampler.sample(roots, torch.Generator().manual_seed(5))[0]
    inputs = {
        "full": (x, edge_attr, edges, y),
        "shadow": (
            x[batch.node_ids],
            edge_attr[batch.edge_ids],
            batch.edge_index,
            y[batch.edge_ids],
        ),
    }
    torch.manual_seed(0)
    initial = InteractionGNN(
        x.shape[1], hidden=cfg.hidden, n_iterations=cfg.n_iterations, mlp_layers=cfg.mlp_layers
    ).state_dict()
    for graph_name, tensors in inputs.items():
        xb, eab, eib, yb = (t.to(device) for t in tensors)
        first_loss = {}
        for mode in args.modes:
            if device.type == "cpu" and mode == "fp16":
                continue  # fp16 autocast is a GPU mode
            model = InteractionGNN(
                x.shape[1],
                hidden=cfg.hidden,
                n_iterations=cfg.n_iterations,
                mlp_layers=cfg.mlp_layers,
            ).to(device)
            model.load_state_dict(initial)
            optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode.split("+")[-1])
            scaler = torch.amp.GradScaler(device.type, enabled=mode.endswith("fp16"))
            forward = torch.compile(model) if mode.startswith("compile") else model
            losses = []

            def step(
                forward=forward,
                optimizer=optimizer,
                dtype=dtype,
                scaler=scaler,
                losses=losses,
                batch=(xb, eab, eib, yb),
            ):
                xb_, eab_, eib_, yb_ = batch
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(
                    device.type, dtype=dtype or torch.float32, enabled=dtype is not None
                ):
                    logits = forward(xb_, eab_, eib_)
                    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), yb_)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                losses.append(loss.detach())

            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            first_s = time.perf_counter() - start
            first_loss[mode] = float(losses[0])
            seconds, _ = timed(step, device, reps, warmup=1)
            record = {
                "check": "train_step",
                "graph": graph_name,
                "mode": mode,
                "device": str(device),
                "n_nodes": int(xb.shape[0]),
                "n_edges": int(eib.shape[1]),
                "step_ms": 1000 * seconds,
                "first_step_s": first_s,
                "loss_rel_diff": abs(first_loss[mode] - first_loss.get("fp32", first_loss[mode]))
                / max(abs(first_loss.get("fp32", 1.0)), 1e-12),
            }
            if device.type == "cuda":
                record["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            emit(record)
            del model, optimizer, forward
            if device.type == "cuda":
                torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--mu", type=float, default=200)
    parser.add_argument("--edges-per-hit", type=float, default=6.0)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument(
        "--modes", nargs="+", default=["fp32", "bf16", "fp16", "compile+fp32", "compile+bf16"]
    )
    parser.add_argument(
        "--checks", nargs="+", default=["radius", "components", "sampler", "train_step"]
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="mu = 20, 2 repetitions")
    args = parser.parse_args(argv)
    if args.quick:
        args.mu, args.reps = 20, 2
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_paths.py: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    check_environment(device)
    start = time.perf_counter()
    event, _ = simulate_event(Detector.load(), event_id=1, mu=args.mu, seed=args.seed)
    feats = build_features(event)
    n = feats.x.shape[0]
    true_edges = feats.truth_edges
    n_fake = max(0, int(args.edges_per_hit * n) - true_edges.shape[1])
    fake = torch.randint(0, n, (2, n_fake), generator=torch.Generator().manual_seed(args.seed))
    fake = fake[:, fake[0] != fake[1]]
    edges = torch.cat([true_edges, fake], 1)
    y = torch.cat([torch.ones(true_edges.shape[1]), torch.zeros(fake.shape[1])])
    emit(
        {
            "check": "event",
            "mu": args.mu,
            "n_hits": n,
            "n_edges": int(edges.shape[1]),
            "seconds": time.perf_counter() - start,
        }
    )
    if "radius" in args.checks:
        phi, r, z = feats.phi, feats.r, feats.z
        pos = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], 1).float() / 1000.0
        check_radius(pos.contiguous(), r, device, args.reps)
    if "components" in args.checks:
        check_components(n, edges, device, args.reps)
    if "sampler" in args.checks:
        check_sampler(n, edges, device, args.reps, config_from_dict({}, "defaults").gnn.shadow)
    if "train_step" in args.checks:
        check_train_step(feats, edges, y, device, args.reps, args)
    emit({"check": "done", "failed": FAILED})
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
