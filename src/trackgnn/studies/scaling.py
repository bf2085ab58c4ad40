"""Scaling study of data-parallel Interaction GNN training (``trackgnn study scaling``).

As in "Scalable GNN Training for Track Finding" (Calafiura et al.): train the GNN for a fixed
workload at world sizes P = 1, 2, 4 ... and compare times. Two studies:

* **strong** scaling: the global work is fixed (ShaDow: a global batch of ``B`` roots per step,
  ``B / P`` per rank, ``M`` steps; full graphs: ``M`` event graphs, ``M / P`` steps of one graph
  per rank). Ideal: the time falls as 1 / P. ``speedup = T1 / TP``, ``efficiency = speedup / P``.
* **weak** scaling: the work per rank is fixed (ShaDow: ``B`` roots per rank per step; full
  graphs: one graph per rank per step; ``M`` steps). Ideal: constant time.
  ``efficiency = T1 / TP`` and the scaled ``speedup = P * T1 / TP``.

Samplers (``SAMPLERS``): the bulk matrix sampler drawing ``k`` = 1, 4, 16 minibatches per call,
the per-root reference sampler, and full-graph training (no sampling).

``measure_scaling`` runs one configuration under the real launcher (torchrun locally, srun on
SLURM), with the same strategy, module and streams as ``trackgnn train gnn``, but without
validation or checkpoint I/O, and writes its figures to a JSON file (rank 0). The "epoch" of a
study is its fixed workload; its first ``warmup`` steps (one bulk draw, at least one step) are
run but not timed. The training events are repeated until one epoch of the data covers the whole
workload, so no epoch boundary (reshuffle, short last bulk draw) falls inside the timed window.

``report_scaling`` turns the measurements into speedup and parallel efficiency against P = 1,
writes ``scaling.csv`` / ``scaling.json`` and one plot per study, and logs one MLflow run per
configuration, nested under one run of the study (through :mod:`trackgnn.tracking` only).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trackgnn.atomic import atomic_path, write_json_atomic, write_text_atomic
from trackgnn.errors import InputError, TrackGNNError

__all__ = [
    "SAMPLERS",
    "SCALINGS",
    "SamplerChoice",
    "add_scaling_parser",
    "measure_scaling",
    "parse_sampler",
    "report_scaling",
    "scaling_rows",
    "world_sizes",
]

#: Sampler labels of the study: bulk with k minibatches per draw, the reference sampler, and
#: full-graph training.
SAMPLERS = ("bulk-k1", "bulk-k4", "bulk-k16", "reference", "full")
SCALINGS = ("strong", "weak")
_SAMPLER_LABEL = re.compile(r"^(bulk-k(?P<k>[1-9][0-9]*)|reference|full)$")
#: Figures every measurement file must hold (the report refuses anything less).
_MEASURED = ("epoch_time_s", "sampling_time_s", "steps", "world_size", "global_batch")


@dataclass(frozen=True)
class SamplerChoice:
    """A study sampler: training ``mode`` (full/shadow), ShaDow ``sampler`` name and ``k``."""

    label: str
    mode: str
    sampler: str
    k: int


def parse_sampler(label: str) -> SamplerChoice:
    """``bulk-k4`` -> shadow/bulk/k=4, ``reference`` -> shadow/reference, ``full`` -> full."""
    match = _SAMPLER_LABEL.match(label)
    if match is None:
        raise TrackGNNError(
            f"scaling study: unknown sampler {label!r}; use bulk-k<K>, reference or full"
        )
    if label == "full":
        return SamplerChoice(label, "full", "bulk", 1)
    if label == "reference":
        return SamplerChoice(label, "shadow", "reference", 1)
    return SamplerChoice(label, "shadow", "bulk", int(match["k"]))


def world_sizes(available: int) -> list[int]:
    """1, 2, 4, ... up to ``available`` processes (GPUs, or CPU cores)."""
    if available < 1:
        raise TrackGNNError(f"scaling study: {available} processes available, need at least 1")
    return [2**i for i in range(int(math.log2(available)) + 1)]


# ---------------------------------------------------------------------------------- measuring


def _study_config(cfg: Any, choice: SamplerChoice, world: int, global_batch: int) -> Any:
    """The pipeline config with the study's mode, sampler, k, world size and global batch."""
    from trackgnn.config import config_from_dict

    raw = cfg.to_dict()
    raw["gnn"].update(mode=choice.mode, world_size=world)
    raw["gnn"]["shadow"].update(sampler=choice.sampler, k=choice.k, batch_size=global_batch)
    return config_from_dict(raw, "scaling study config")


def _max_over_ranks(values: list[float], device: Any) -> list[float]:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def measure_scaling(
    cfg: Any,
    train_files: Sequence[str | Path],
    sampler: str,
    scaling: str,
    world_size: int,
    steps: int,
    output: str | Path,
    batch_size: int | None = None,
    threads_per_rank: int | None = None,
) -> dict[str, Any]:
    """Train one study configuration for a fixed workload; write and return its figures.

    Must run under a launcher that starts ``world_size`` ranks (or as one plain process for
    ``world_size == 1``). ``steps`` is the timed workload M (a multiple of every world size for
    strong full-graph scaling); ``batch_size`` the ShaDow roots B (default: the config's
    ``gnn.shadow.batch_size``). ``threads_per_rank`` (CPU): torch threads of each rank, the same
    for every P of a study so that it measures ranks, not threads (default: the config's
    ``threads``, else the cores shared out among this launch's ranks). Only rank 0 writes
    ``output``.
    """
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader

    from trackgnn.event_data import load_graph
    from trackgnn.models.checkpoint import resolve_device
    from trackgnn.models.mlp import angle_columns
    from trackgnn.process import process_rank
    from trackgnn.scoring import KIND
    from trackgnn.training.driver import train_stage
    from trackgnn.training.gnn import (
        EpochStats,
        GNNModule,
        gnn_model_args,
        gnn_trainer_args,
        quiet_gnn_training,
    )
    from trackgnn.training.gnn_streams import FullGraphStream, ShadowStream, union_graph

    choice = parse_sampler(sampler)
    if scaling not in SCALINGS:
        raise TrackGNNError(f"scaling study: scaling must be one of {SCALINGS}, not {scaling!r}")
    if world_size < 1 or steps < 1:
        raise TrackGNNError("scaling study: world size and steps must be at least 1")
    base_batch = batch_size or cfg.gnn.shadow.batch_size
    strong = scaling == "strong"
    if choice.mode == "full":
        if strong and steps % world_size:
            raise TrackGNNError(
                f"scaling study: strong full-graph scaling splits {steps} graphs over "
                f"{world_size} ranks; use a multiple of {world_size} steps"
            )
        # One graph per rank per step: fixed total graphs (strong) or steps (weak).
        rank_steps = steps // world_size if strong else steps
        global_batch = world_size
    else:
        if strong and base_batch < world_size:
            raise TrackGNNError(
                f"scaling study: a global batch of {base_batch} roots cannot feed "
                f"{world_size} ranks"
            )
        rank_steps = steps
        global_batch = base_batch if strong else base_batch * world_size
    warmup = max(1, choice.k)
    total_steps = warmup + rank_steps

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    quiet_gnn_training()
    warnings.filterwarnings("ignore", message=".*val_dataloader.*")  # no validation here
    study_cfg = _study_config(cfg, choice, world_size, global_batch)
    device = torch.device(resolve_device(cfg.device))
    if device.type == "cpu":
        # P ranks share the node's cores; oversubscribed threads would measure contention.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        torch.set_num_threads(
            threads_per_rank or cfg.threads or max(1, (os.cpu_count() or 1) // local_world)
        )
    rank = process_rank() if world_size > 1 else 0
    if not train_files:
        raise TrackGNNError("scaling study: no training events")
    events = [load_graph(f) for f in train_files]
    graphs = [event.to_batch() for event in events]
    phi_columns = angle_columns(events[0].feature_names)

    # Repeat the events until one pass over the data covers warm-up plus workload: the timed
    # window then never crosses an epoch boundary. Repeats share tensors (full) or are copies
    # in one disjoint union (ShaDow); either way the per-step work is that of real events.
    if choice.mode == "full":
        repeats = math.ceil(total_steps * world_size / len(graphs))
        stream: Any = FullGraphStream(graphs * repeats, cfg.seed, rank, world_size)
    else:
        union = union_graph(graphs)
        roots = int(
            (torch.bincount(union.edge_index.flatten(), minlength=union.x.shape[0]) > 0).sum()
        )
        repeats = max(1, math.ceil((total_steps + 1) * global_batch / max(roots, 1)))
        stream = ShadowStream(union_graph(graphs * repeats), study_cfg, device, rank, world_size)
    module = GNNModule(
        model=gnn_model_args(cfg, int(graphs[0].x.shape[1]), phi_columns),
        settings=study_cfg.gnn,
        total_steps=total_steps,
        resume_key="scaling-study",
    )
    # The same driver, module, strategy and streams as `trackgnn train gnn`; no checkpoints or
    # validation, and the epoch figures leave out the warm-up steps.
    trained = train_stage(
        module,
        KIND,
        train_loader=DataLoader(stream, batch_size=None, num_workers=0),
        epochs=-1,
        device=device.type,
        ckpt_path=None,
        callbacks=[EpochStats(warmup_steps=warmup)],
        max_steps=total_steps,
        limit_val_batches=0,
        **gnn_trainer_args(study_cfg, device, world_size),
    )
    trainer, measured = trained.trainer, trained.metrics
    if trainer.global_step <= warmup or "epoch_time_s" not in measured:
        raise TrackGNNError(f"scaling study: {sampler}/{scaling}/P={world_size} never warmed up")
    epoch_s = measured["epoch_time_s"]
    peak_rss, peak_gpu, sampling_s = _max_over_ranks(
        [
            measured["peak_rss_mb"],
            measured.get("peak_gpu_mb", 0.0),
            measured["sampling_time_s"],
        ],
        trainer.strategy.root_device,
    )
    figures = {
        "sampler": choice.label,
        "mode": choice.mode,
        "k": choice.k,
        "scaling": scaling,
        "world_size": world_size,
        "threads_per_rank": torch.get_num_threads(),
        "device": device.type,
        "steps": rank_steps,
        "warmup_steps": warmup,
        "global_batch": global_batch,
        "data_repeats": repeats,
        "epoch_time_s": epoch_s,
        "step_time_ms": 1e3 * epoch_s / rank_steps,
        "sampling_time_s": sampling_s,
        "sampling_share": sampling_s / epoch_s if epoch_s > 0 else 0.0,
        "allreduce_ms": measured["allreduce_ms"],
        "allreduce_calls_per_step": measured["allreduce_calls_per_step"],
        "samples_per_s": measured["samples_per_s"],
        "peak_rss_mb": peak_rss,
        "peak_gpu_mb": peak_gpu,
    }
    if trainer.is_global_zero:
        write_json_atomic(output, figures)
        print(
            f"[scaling] {scaling} {choice.label} P={world_size}: "
            f"{epoch_s:.3f} s for {rank_steps} steps, sampling {figures['sampling_share']:.0%}, "
            f"{figures['allreduce_calls_per_step']:.0f} all-reduce/step",
            flush=True,
        )
    return figures


# ---------------------------------------------------------------------------------- reporting


def _load_measurement(path: Path) -> dict[str, Any]:
    try:
        figures = json.loads(path.read_text())
    except OSError as err:
        raise InputError(path, f"cannot read scaling measurement ({err.strerror})") from None
    except ValueError:
        raise InputError(path, "not a JSON scaling measurement") from None
    missing = [key for key in _MEASURED if key not in figures]
    if not isinstance(figures, dict) or missing:
        raise InputError(path, f"scaling measurement lacks {', '.join(missing) or 'figures'}")
    return figures


def scaling_rows(measurements: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (study, sampler, world size) with speedup and parallel efficiency.

    A P = 1 measurement is the baseline of both studies (their workloads coincide at P = 1);
    it may be labelled either way. Raises TrackGNNError when a sampler has no P = 1 baseline.
    """
    baseline: dict[str, dict[str, Any]] = {}
    for m in measurements:
        if m["world_size"] == 1:
            baseline[m["sampler"]] = m
    rows = []
    for study in SCALINGS:
        for m in measurements:
            if m["world_size"] != 1 and m["scaling"] != study:
                continue
            base = baseline.get(m["sampler"])
            if base is None:
                raise TrackGNNError(f"scaling study: no P=1 measurement for sampler {m['sampler']}")
            p, t1, tp = m["world_size"], base["epoch_time_s"], m["epoch_time_s"]
            ratio = t1 / tp if tp > 0 else float("nan")
            speedup = ratio if study == "strong" else p * ratio
            rows.append(
                {
                    **m,
                    "scaling": study,
                    "speedup": speedup,
                    "parallel_efficiency": speedup / p,
                }
            )
    rows.sort(key=lambda r: (SCALINGS.index(r["scaling"]), r["sampler"], r["world_size"]))
    return rows


def _plot_study(rows: list[dict[str, Any]], study: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        ("epoch_time_s", "epoch time (s)"),
        ("speedup", "speedup" if study == "strong" else "scaled speedup"),
        ("parallel_efficiency", "parallel efficiency"),
        ("sampling_share", "sampling share of epoch"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), layout="constrained")
    samplers = sorted({r["sampler"] for r in rows}, key=lambda s: (*SAMPLERS, s).index(s))
    worlds = sorted({r["world_size"] for r in rows})
    for ax, (key, label) in zip(axes, panels, strict=True):
        for sampler in samplers:
            points = sorted((r["world_size"], r[key]) for r in rows if r["sampler"] == sampler)
            ax.plot(*zip(*points, strict=True), marker="o", label=sampler)
        if key == "speedup":
            ax.plot(worlds, worlds, color="grey", linestyle=":", label="ideal")
        if key == "parallel_efficiency":
            ax.axhline(1.0, color="grey", linestyle=":")
        ax.set_xscale("log", base=2)
        ax.set_xticks(worlds, [str(w) for w in worlds])
        ax.set_xlabel("processes P")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.suptitle(f"{study} scaling of Interaction GNN training")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


#: Figures of one configuration, logged as MLflow metrics.
_METRICS = (
    "epoch_time_s",
    "speedup",
    "parallel_efficiency",
    "step_time_ms",
    "sampling_share",
    "allreduce_ms",
    "allreduce_calls_per_step",
    "samples_per_s",
    "peak_rss_mb",
    "peak_gpu_mb",
)
_CSV_COLUMNS = ("scaling", "sampler", "world_size", "device", "steps", "global_batch", *_METRICS)


def format_rows(rows: Sequence[dict[str, Any]]) -> str:
    """A fixed-width table of the study's main figures."""
    head = f"{'study':6} {'sampler':9} {'P':>3} {'epoch s':>8} {'speedup':>7} {'eff':>5} "
    head += f"{'sampling':>8} {'RSS MB':>7}"
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['scaling']:6} {r['sampler']:9} {r['world_size']:>3} {r['epoch_time_s']:>8.3f} "
            f"{r['speedup']:>7.2f} {r['parallel_efficiency']:>5.2f} "
            f"{r['sampling_share']:>8.1%} {r['peak_rss_mb']:>7.0f}"
        )
    return "\n".join(lines)


def report_scaling(
    cfg: Any, inputs: Sequence[str | Path], output_dir: str | Path
) -> list[dict[str, Any]]:
    """Write the study's table, JSON and one PNG per study; log the runs to MLflow.

    Files first: ``scaling.csv``, ``scaling.json``, ``scaling_strong.png``, ``scaling_weak.png``
    in ``output_dir``; then one MLflow run per configuration (tag ``trackgnn.kind=study``)
    nested under one ``scaling_study`` run that holds the files as artifacts.
    """
    from trackgnn import tracking

    measurements = [_load_measurement(Path(p)) for p in inputs]
    rows = scaling_rows(measurements)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / "scaling.csv", buffer.getvalue())
    write_json_atomic(out / "scaling.json", rows)
    plots = []
    for study in SCALINGS:
        study_rows = [r for r in rows if r["scaling"] == study]
        if study_rows:
            plots.append(out / f"scaling_{study}.png")
            _plot_study(study_rows, study, plots[-1])

    target = tracking.Target.from_config(cfg)
    study_params = {
        "samplers": sorted({r["sampler"] for r in rows}),
        "world_sizes": sorted({r["world_size"] for r in rows}),
        "device": cfg.device,
        "gnn": cfg.section("gnn"),
    }
    with tracking.stage_run(
        target, "scaling_study", study_params, tags={tracking.KIND_TAG: "study"}
    ) as parent:
        for row in rows:
            tags = {
                tracking.KIND_TAG: "study",
                "trackgnn.study": row["scaling"],
                "trackgnn.sampler": row["sampler"],
            }
            if parent.run_id:
                tags[tracking.PARENT_RUN_TAG] = parent.run_id
            params = {
                k: row[k] for k in ("scaling", "sampler", "world_size", "steps", "global_batch")
            }
            name = f"{row['scaling']}-{row['sampler']}-P{row['world_size']}"
            with tracking.stage_run(target, "scaling", params, run_name=name, tags=tags) as run:
                run.log_metrics(
                    {k: row[k] for k in _METRICS if isinstance(row.get(k), int | float)}
                )
        for artifact in (out / "scaling.csv", out / "scaling.json", *plots):
            parent.log_artifact(artifact)
    return rows


# ---------------------------------------------------------------------------------- command line


def _config(args: argparse.Namespace) -> Any:
    from trackgnn.config import config_from_dict, load_config

    return load_config(args.config) if args.config else config_from_dict({}, "default config")


def _cmd_measure(args: argparse.Namespace) -> None:
    measure_scaling(
        _config(args),
        args.train,
        args.sampler,
        args.scaling,
        args.world_size,
        args.steps,
        args.output,
        batch_size=args.batch_size,
        threads_per_rank=args.threads_per_rank,
    )


def _cmd_report(args: argparse.Namespace) -> None:
    rows = report_scaling(_config(args), args.inputs, args.output_dir)
    print(format_rows(rows))


def add_scaling_parser(
    kinds: Any,
    with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
    positive_int: Callable[[str], int],
) -> None:
    """Add ``study scaling measure|report`` to the ``trackgnn study`` parser."""
    scaling = kinds.add_parser("scaling", help="data-parallel scaling of GNN training")
    actions = scaling.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = with_config(actions.add_parser("measure", help="train one configuration, time it"))
    p.add_argument("--train", nargs="+", required=True, help="training event graphs (filter)")
    p.add_argument("--sampler", required=True, help="bulk-k<K>, reference or full")
    p.add_argument("--scaling", required=True, choices=SCALINGS)
    p.add_argument("--world-size", type=positive_int, required=True, help="ranks launched")
    p.add_argument("--steps", type=positive_int, required=True, help="timed steps (workload)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="ShaDow roots B")
    p.add_argument(
        "--threads-per-rank", type=positive_int, default=None, help="CPU: torch threads per rank"
    )
    p.add_argument("--output", type=Path, required=True, help="figures JSON to write")
    p.set_defaults(func=_cmd_measure)

    p = with_config(actions.add_parser("report", help="speedup, efficiency, plots, MLflow"))
    p.add_argument("--inputs", nargs="+", type=Path, required=True, help="measurement JSONs")
    p.add_argument("--output-dir", type=Path, required=True, help="report directory")
    p.set_defaults(func=_cmd_report)
