"""Peak memory of one GNN training step: full-graph versus ShaDow minibatch, mu = 20 ... 200.

Each measurement runs in a fresh subprocess so its peak RSS (``ru_maxrss``) belongs to that step
alone: the child builds the event graph, records its peak RSS, runs one forward + backward +
optimizer step, and reports the growth of the peak. Graphs are truth graphs of simulated events
with random fake edges added to a filter-like density (``--edges-per-hit``), so the bench needs no
trained models. One JSON line per measurement, then the ratio lines.

    python bench/training_memory.py            # mu = 20, 50, 100, 200
    python bench/training_memory.py --quick    # mu = 20, 50 (under a minute)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _child(mode: str, mu: float, edges_per_hit: float, seed: int, device: str) -> dict:
    import torch

    from trackgnn.config import config_from_dict
    from trackgnn.features import build_features
    from trackgnn.geometry import Detector
    from trackgnn.models.edges import hit_edge_features
    from trackgnn.models.interaction_gnn import InteractionGNN
    from trackgnn.process import peak_rss_mb
    from trackgnn.simulation import simulate_event

    torch.manual_seed(seed)
    cfg = config_from_dict({})
    event, _ = simulate_event(Detector.load(), event_id=1, mu=mu, seed=seed)
    feats = build_features(event)
    n = feats.x.shape[0]
    true_edges = feats.truth_edges
    n_fake = max(0, int(edges_per_hit * n) - true_edges.shape[1])
    fake = torch.randint(0, n, (2, n_fake))
    edge_index = torch.cat([true_edges, fake], 1)
    y = torch.cat([torch.ones(true_edges.shape[1]), torch.zeros(n_fake)])
    edge_attr = hit_edge_features(feats.r, feats.phi, feats.z, feats.eta, edge_index)
    g = cfg.gnn
    model = InteractionGNN(
        feats.x.shape[1], hidden=g.hidden, n_iterations=g.n_iterations, mlp_layers=g.mlp_layers
    ).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=g.lr)
    x = feats.x.to(device)
    if mode == "shadow":
        from trackgnn.graph.csr import build_sampling_graph
        from trackgnn.graph.shadow import make_sampler

        sc = g.shadow
        sampler = make_sampler(
            "bulk",
            build_sampling_graph(edge_index, n),
            sc.depth,
            sc.fanout,
            sc.batch_size,
            k=1,
            device=device,
        )
        gen = torch.Generator(device=device).manual_seed(seed)
        roots = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: sc.batch_size]
        batch = sampler.sample(roots.to(device), gen)[0]
        x_b, ea_b = x[batch.node_ids], edge_attr.to(device)[batch.edge_ids]
        ei_b, y_b = batch.edge_index, y.to(device)[batch.edge_ids]
    else:
        x_b, ea_b, ei_b, y_b = x, edge_attr.to(device), edge_index.to(device), y.to(device)
    # warm-up step on a tiny graph so allocator/optimizer state is not counted as step memory
    tiny = slice(0, 8)
    loss = model(x_b[:4], ea_b[tiny][:0], ei_b[:, :0]).sum()
    (loss * 0).backward()
    optimizer.zero_grad()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = peak_rss_mb()
    start = time.perf_counter()
    logits = model(x_b, ea_b, ei_b)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y_b)
    loss.backward()
    optimizer.step()
    step_s = time.perf_counter() - start
    after = peak_rss_mb()
    out = {
        "mode": mode,
        "mu": mu,
        "device": device,
        "event_hits": n,
        "event_edges": int(edge_index.shape[1]),
        "step_edges": int(ei_b.shape[1]),
        "step_nodes": int(x_b.shape[0]),
        "step_peak_mb": round(after - before, 1),
        "process_peak_mb": round(after, 1),
        "step_s": round(step_s, 3),
        "threads": torch.get_num_threads(),
    }
    if device == "cuda":
        out["step_peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="mu = 20, 50 only")
    parser.add_argument("--mu", type=float, nargs="+", default=None)
    parser.add_argument("--edges-per-hit", type=float, default=6.0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "MU"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, mu = args.child
        print(json.dumps(_child(mode, float(mu), args.edges_per_hit, args.seed, args.device)))
        return
    mus = args.mu or ([20, 50] if args.quick else [20, 50, 100, 200])
    results: dict[tuple[str, float], dict] = {}
    for mu in mus:
        for mode in ("full", "shadow"):  # side by side, same event and seed
            cmd = [
                sys.executable,
                __file__,
                "--child",
                mode,
                str(mu),
                "--edges-per-hit",
                str(args.edges_per_hit),
                "--seed",
                str(args.seed),
                "--device",
                args.device,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
            if proc.returncode != 0:
                error = proc.stderr.strip()[-500:]
                if proc.returncode < 0:  # killed: SIGKILL is the kernel's out-of-memory killer
                    error = f"killed by signal {-proc.returncode} (out of memory?) {error}".strip()
                print(json.dumps({"mode": mode, "mu": mu, "error": error}))
                continue
            line = json.loads(proc.stdout.strip().splitlines()[-1])
            results[(mode, mu)] = line
            print(json.dumps(line), flush=True)
    lo, hi = min(mus), max(mus)
    for mode in ("full", "shadow"):
        if (mode, lo) in results and (mode, hi) in results:
            a, b = results[(mode, lo)]["step_peak_mb"], results[(mode, hi)]["step_peak_mb"]
            print(
                json.dumps(
                    {
                        "ratio": f"{mode}_step_peak_mu{hi:g}_over_mu{lo:g}",
                        "value": round(b / max(a, 1e-9), 2),
                    }
                )
            )
    if ("full", hi) in results and ("shadow", hi) in results:
        print(
            json.dumps(
                {
                    "ratio": f"full_over_shadow_step_peak_mu{hi:g}",
                    "value": round(
                        results[("full", hi)]["step_peak_mb"]
                        / max(results[("shadow", hi)]["step_peak_mb"], 1e-9),
                        2,
                    ),
                }
            )
        )


if __name__ == "__main__":
    main()
