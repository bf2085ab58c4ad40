"""Validation edge precision and recall per epoch: ShaDow minibatches vs full-graph training.

The claim tested (Figure 4 of the ShaDow scaling paper): after the same number of epochs, ShaDow
minibatch training reaches at least the precision and recall of full-graph training. All modes
train the same InteractionGNN (same seed, initial weights, loss and learning-rate schedule) on
the same filtered event graphs of a finished run (default: ``results/default/filter``) and are
validated after every epoch on the same validation events (score cut 0.5, label ``y_pid``):

* ``full``: one whole event graph per step;
* ``sectors``: full mode with ``gnn.phi_sectors`` azimuthal sectors per event (what the default
  config trains on a CPU);
* ``shadow``: ShaDow subgraph minibatches (``gnn.shadow``: depth, fanout, batch size, bulk
  sampler), every vertex a root once per epoch.

One JSON line per (mode, epoch), then one line per mode comparison with the ratios, and a PNG
with the curves. A ShaDow epoch trains on every vertex's subgraph: with the default depth 3 and
fanout 6 on these graphs (about 7 edges per hit) that is some 200 times the edges of a full-graph
epoch, more than a 2-core CPU affords; pass a smaller ``--depth`` / ``--fanout`` and a subset of
the events there.

    python bench/shadow_vs_full.py --train-events 2 --epochs 3 --depth 2 --fanout 6
    python bench/shadow_vs_full.py --quick      # 2 train events, 2 epochs, small ShaDow (~1 min)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _train(mode: str, cfg, train_graphs, val_graphs, phi_col: int, epochs: int, seed: int):
    import torch

    from trackgnn.scoring import edge_classification_metrics
    from trackgnn.training.gnn import (
        FullGraphStream,
        GNNModule,
        ShadowStream,
        split_phi_sectors,
        union_graph,
    )
    from trackgnn.training.schedule import one_cycle_scheduler

    g = cfg.gnn
    torch.manual_seed(seed)
    if mode == "shadow":
        stream = ShadowStream(union_graph(train_graphs), cfg, torch.device("cpu"), 0, 1)
    else:
        n_sectors = g.phi_sectors if mode == "sectors" else 1
        parts = [
            part
            for graph in train_graphs
            for part in split_phi_sectors(graph, graph.x[:, phi_col] * torch.pi, n_sectors)
        ]
        stream = FullGraphStream(parts, seed, 0, 1)
    model_args = {
        "node_features": int(train_graphs[0].x.shape[1]),
        "hidden": g.hidden,
        "n_iterations": g.n_iterations,
        "mlp_layers": g.mlp_layers,
        "angle_columns": [phi_col],
    }
    torch.manual_seed(seed)  # same initial weights in every mode
    module = GNNModule(
        model=model_args,
        lr=g.lr,
        pos_weight=g.pos_weight,
        compile=False,
        mode=mode,
        resume_key="",
        total_steps=epochs * len(stream),
    )
    optimizer = torch.optim.AdamW(module.parameters(), lr=g.lr)
    scheduler = one_cycle_scheduler(optimizer, epochs * len(stream))
    curve = []
    for epoch in range(epochs):
        stream.epoch = epoch
        start = time.perf_counter()
        module.train()
        edges = 0
        for batch in stream:
            loss = module._loss(module(batch), batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            edges += batch.edge_index.shape[1]
        train_s = time.perf_counter() - start
        module.eval()
        with torch.no_grad():
            logits = torch.cat([module(v) for v in val_graphs])
        y = torch.cat([v.y for v in val_graphs])
        metrics = edge_classification_metrics(logits, y)
        row = {
            "mode": mode,
            "epoch": epoch + 1,
            "steps": len(stream),
            "edges_trained": edges,
            "train_s": round(train_s, 2),
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
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--modes", default="full,sectors,shadow")
    parser.add_argument("--plot", default="results/shadow_vs_full.png")
    parser.add_argument("--depth", type=int, help="ShaDow depth (default: config)")
    parser.add_argument("--fanout", type=int, help="ShaDow fanout (default: config)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()

    import torch

    from trackgnn.config import config_from_dict, load_config
    from trackgnn.io import load_tensors
    from trackgnn.models.mlp import angle_columns
    from trackgnn.scoring import load_event_graph
    from trackgnn.workflow import WorkflowContext

    cfg = load_config(args.config)
    raw = cfg.to_dict()
    if args.quick:
        args.train_events, args.epochs = 2, 2
        raw["gnn"]["shadow"].update(depth=2, fanout=4)
    for key in ("depth", "fanout"):
        if getattr(args, key) is not None:
            raw["gnn"]["shadow"][key] = getattr(args, key)
    cfg = config_from_dict(raw)
    ctx = WorkflowContext(cfg)
    run = Path(args.run)

    def files(split: str, count: int) -> list[Path]:
        return [run / "filter" / Path(f).name for f in ctx.stage_files("filter", split)][:count]

    train_files = files("train", args.train_events)
    val_files = files("val", args.val_events)
    missing = [str(f) for f in train_files + val_files if not f.exists()]
    if missing:
        sys.exit(f"{missing[0]}: missing; run the pipeline first (make run)")
    train_graphs = [load_event_graph(f) for f in train_files]
    val_graphs = [load_event_graph(f) for f in val_files]
    phi_col = angle_columns(load_tensors(train_files[0]).get("feature_names"))[0]
    print(
        json.dumps(
            {
                "train_events": len(train_graphs),
                "val_events": len(val_graphs),
                "edges_per_event": sum(g.edge_index.shape[1] for g in train_graphs)
                / len(train_graphs),
                "threads": torch.get_num_threads(),
                "shadow": raw["gnn"]["shadow"],
                "phi_sectors": cfg.gnn.phi_sectors,
            }
        ),
        flush=True,
    )
    curves = {
        mode: _train(mode, cfg, train_graphs, val_graphs, phi_col, args.epochs, cfg.seed)
        for mode in args.modes.split(",")
    }
    last = {mode: curve[-1] for mode, curve in curves.items()}
    if "full" in last:
        for mode, row in last.items():
            if mode == "full":
                continue
            # None where full-graph training has not left zero yet (no edge above the cut).
            ratios = {
                f"{k}_vs_full": round(row[k] / last["full"][k], 3) if last["full"][k] else None
                for k in ("precision", "recall", "auc", "train_s")
            }
            print(json.dumps({"comparison": f"{mode}/full", "epochs": args.epochs, **ratios}))
    _plot(curves, args.plot)


def _plot(curves: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for mode, curve in curves.items():
        epochs = [row["epoch"] for row in curve]
        for ax, key in zip(axes, ("precision", "recall", "auc"), strict=True):
            ax.plot(epochs, [row[key] for row in curve], marker="o", label=mode)
            ax.set_xlabel("epoch")
            ax.set_title(f"validation edge {key}")
    axes[0].legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    print(json.dumps({"plot": path}))


if __name__ == "__main__":
    main()
