"""Validation edge precision, recall and AUC against training seconds: ShaDow vs full-graph modes.

Equal wall-clock time, not equal epochs: each mode trains the same InteractionGNN (same seed,
initial weights, loss, learning rate) on the same filtered event graphs of a finished run for the
same budget of training seconds, and is validated at evenly spaced points of its training clock
(the clock stops while it is validated) on the same whole validation events (score cut 0.5,
label ``y_pid``). The pipeline's one-cycle learning-rate schedule runs over the budget's seconds
(warm-up and decay by the training clock), so every mode ends its schedule with its budget. Modes:

* ``shadow``: ShaDow subgraph minibatches from the config's sampler (``gnn.shadow``: depth,
  fanout, batch size, ``roots_per_epoch`` drawn afresh each epoch);
* ``sectors``: full mode with ``gnn.phi_sectors`` azimuthal sectors per event (``--sectors``);
* ``full``: one whole event graph per step (at mu = 200 it needs more than 24 GB on a CPU: leave
  it out there).

One JSON line per validation point, one per mode with its final figures and their ratios to the
first mode's, then a Markdown table and a PNG of the curves.

    python bench/shadow_vs_full.py --run results/mu200-cpu --config config/mu200-cpu.yaml \
        --modes shadow,sectors --seconds 600
    python bench/shadow_vs_full.py --quick      # the default run, 2 train events, 40 s per mode
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path


def _stream(mode: str, cfg, train_graphs, phi_col: int, sectors: int, device):
    import torch

    from trackgnn.training.gnn_streams import (
        FullGraphStream,
        ShadowStream,
        split_phi_sectors,
        union_graph,
    )

    if mode == "shadow":
        return ShadowStream(union_graph(train_graphs), cfg, device, 0, 1)
    n_sectors = sectors if mode == "sectors" else 1
    parts = [
        part
        for graph in train_graphs
        for part in split_phi_sectors(graph, graph.x[:, phi_col] * torch.pi, n_sectors)
    ]
    return FullGraphStream(parts, cfg.seed, 0, 1)


def _batches(stream):
    """Minibatches across epochs, forever (the stream's epoch advances each pass)."""
    epoch = 0
    while True:
        stream.epoch = epoch
        yield from stream
        epoch += 1


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _train(mode: str, cfg, train_graphs, val_graphs, phi_col: int, args, device) -> list[dict]:
    import torch

    from trackgnn.scoring import edge_classification_metrics
    from trackgnn.training.gnn import GNNModule
    from trackgnn.training.schedule import one_cycle_factor

    g = cfg.gnn
    torch.manual_seed(cfg.seed)
    stream = _stream(mode, cfg, train_graphs, phi_col, args.sectors, device)
    model_args = {
        "node_features": int(train_graphs[0].x.shape[1]),
        "hidden": g.hidden,
        "n_iterations": g.n_iterations,
        "mlp_layers": g.mlp_layers,
        "angle_columns": [phi_col],
    }
    torch.manual_seed(cfg.seed)  # same initial weights in every mode
    module = GNNModule(model_args, dataclasses.replace(g, compile=False, mode=mode)).to(device)
    optimizer = torch.optim.AdamW(module.parameters(), lr=g.lr)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=g.amp)

    def timed_step(batches) -> float:
        """Draw a minibatch and take one optimizer step; its seconds."""
        start = time.perf_counter()
        batch = next(batches).to(device)
        with amp:
            loss = module._loss(module(batch), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        _sync(device)
        return time.perf_counter() - start

    batches = _batches(stream)
    curve, clock, steps = [], 0.0, 0
    marks = [args.seconds * (i + 1) / args.points for i in range(args.points)]
    for mark in marks:
        module.train()
        while clock < mark:
            # The pipeline's one-cycle schedule, over training seconds instead of steps.
            factor = one_cycle_factor(round(clock * 1000), round(args.seconds * 1000))
            for group in optimizer.param_groups:
                group["lr"] = g.lr * factor
            clock += timed_step(batches)
            steps += 1
        module.eval()
        with torch.no_grad(), amp:
            logits = torch.cat([module(v.to(device)).float().cpu() for v in val_graphs])
        y = torch.cat([v.y for v in val_graphs])
        metrics = edge_classification_metrics(logits, y)
        row = {
            "mode": mode,
            "train_s": round(clock, 2),
            "steps": steps,
            "epochs": round(steps / max(1, len(stream)), 3),
            **{k: round(v, 5) for k, v in metrics.items()},
        }
        print(json.dumps(row), flush=True)
        curve.append(row)
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="results/default", help="a finished run directory")
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--train-events", type=int, default=4)
    parser.add_argument("--val-events", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=300.0, help="training seconds per mode")
    parser.add_argument("--points", type=int, default=8, help="validation points per mode")
    parser.add_argument("--modes", default="shadow,sectors,full")
    parser.add_argument("--sectors", type=int, help="sectors per event (default: gnn.phi_sectors)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--plot", default="results/shadow_vs_full.png")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()

    import torch

    from trackgnn.config import load_config
    from trackgnn.event_data import load_graph
    from trackgnn.io import load_tensors
    from trackgnn.models.mlp import angle_columns
    from trackgnn.workflow import WorkflowContext

    if args.quick:
        args.train_events, args.seconds, args.points = 2, 40.0, 4
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    args.sectors = args.sectors or max(cfg.gnn.phi_sectors, 2)
    device = torch.device(args.device)
    ctx = WorkflowContext(cfg)
    run = Path(args.run)

    def files(split: str, count: int) -> list[Path]:
        return [run / "filter" / Path(f).name for f in ctx.stage_files("filter", split)][:count]

    train_files = files("train", args.train_events)
    val_files = files("val", args.val_events)
    missing = [str(f) for f in train_files + val_files if not f.exists()]
    if missing:
        sys.exit(f"{missing[0]}: missing; run the pipeline of {args.config} first")
    train_graphs = [load_graph(f).to_batch() for f in train_files]
    val_graphs = [load_graph(f).to_batch() for f in val_files]
    phi_col = angle_columns(load_tensors(train_files[0]).get("feature_names"))[0]
    setup = {
        "config": args.config,
        "device": str(device),
        "train_events": len(train_graphs),
        "val_events": len(val_graphs),
        "nodes_per_event": sum(g.x.shape[0] for g in train_graphs) / len(train_graphs),
        "edges_per_event": sum(g.edge_index.shape[1] for g in train_graphs) / len(train_graphs),
        "threads": torch.get_num_threads(),
        "seconds": args.seconds,
        "shadow": cfg.to_dict()["gnn"]["shadow"],
        "sectors": args.sectors,
        "amp": cfg.gnn.amp,
    }
    print(json.dumps(setup), flush=True)
    modes = args.modes.split(",")
    curves = {m: _train(m, cfg, train_graphs, val_graphs, phi_col, args, device) for m in modes}
    last = {mode: curve[-1] for mode, curve in curves.items()}
    base = modes[0]
    for mode, row in last.items():
        ratios = {
            f"{k}_vs_{base}": round(row[k] / last[base][k], 3) if last[base][k] else None
            for k in ("precision", "recall", "auc")
        }
        print(json.dumps({"final": mode, **row, **ratios}), flush=True)
    print(_table(setup, last))
    _plot(curves, args.plot, setup)


def _table(setup: dict, last: dict) -> str:
    lines = [
        f"{setup['seconds']:.0f} training seconds per mode on {setup['device']}:",
        "",
        "| mode | steps | epochs | precision | recall | AUC |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for mode, row in last.items():
        lines.append(
            f"| {mode} | {row['steps']} | {row['epochs']} "
            f"| {row['precision']:.4f} | {row['recall']:.4f} | {row['auc']:.4f} |"
        )
    return "\n".join(lines)


def _plot(curves: dict, path: str, setup: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for mode, curve in curves.items():
        seconds = [row["train_s"] for row in curve]
        for ax, key in zip(axes, ("precision", "recall", "auc"), strict=True):
            ax.plot(seconds, [row[key] for row in curve], marker="o", label=mode)
            ax.set_xlabel(f"training seconds ({setup['device']})")
            ax.set_title(f"validation edge {key}")
    axes[0].legend()
    fig.suptitle(Path(setup["config"]).name, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    print(json.dumps({"plot": path}))


if __name__ == "__main__":
    main()
