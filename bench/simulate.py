"""Benchmark of the embedded event generator: time and memory per stage versus pile-up.

Runs on one core (BLAS/OpenMP threads pinned to 1) and prints one JSON line per measurement:

- ``{"kind": "event", ...}`` per simulated event: hits, wall and CPU seconds, seconds per stage;
- ``{"kind": "memory", ...}`` per pile-up value: peak traced memory (MB) per stage, from a
  separate run under tracemalloc (which slows numpy down, so it is not timed);
- ``{"kind": "summary", ...}`` per pile-up value: medians, the ratio to the lowest pile-up and to
  the 5 s budget at mu = 200;
- ``{"kind": "fit", ...}``: the exponent b of time = a * hits^b (least squares in log-log over the
  per-mu medians), for wall and for CPU time.

- with ``--fidelity``, instead: ``{"kind": "fidelity", ...}`` per event (hits per volume, pixel
  cells per hit, overlap fractions, secondaries) and their mean over the events, the figures that
  docs/generator-validation.md compares with real TrackML events.

Usage: ``python bench/simulate.py [--quick] [--events N] [--mu 20 50 100 200] [--seed S]``.
``--quick`` (one event per mu) finishes in well under a minute.
Fidelity: ``python bench/simulate.py --fidelity --mu 200 --events 6``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from trackgnn.geometry import Detector  # noqa: E402
from trackgnn.io import Event  # noqa: E402
from trackgnn.process import peak_rss_mb  # noqa: E402
from trackgnn.simulation import simulate_event  # noqa: E402
from trackgnn.simulation.weights import decode_particle_id  # noqa: E402

BUDGET_S = 5.0


def emit(record: dict) -> None:
    print(json.dumps(record, sort_keys=True), flush=True)


def fidelity(event: Event) -> dict:
    """The figures of one event that real TrackML events are compared on."""
    df = event.hits.merge(event.truth, on="hit_id", validate="one_to_one")
    df["ncells"] = df["hit_id"].map(event.cells.groupby("hit_id").size())
    signal = df[df.particle_id != 0]
    size = signal.groupby(["particle_id", "volume_id", "layer_id"]).hit_id.transform("size")
    particles = event.particles
    secondary = decode_particle_id(particles.particle_id.to_numpy())["generation"] > 0
    radius = np.hypot(particles.vx, particles.vy)[secondary]
    nhits = particles.nhits[particles.nhits > 0]
    by_volume = df.groupby("volume_id")
    return {
        "n_hits": len(df),
        "noise_fraction": float((df.particle_id == 0).mean()),
        "n_particles": len(particles),
        "secondary_fraction": float(secondary.mean()),
        "secondary_median_radius_mm": float(np.median(radius)) if len(radius) else float("nan"),
        "hits_per_particle_mean": float(nhits.mean()),
        "overlap_fraction": float((size > 1).mean()),
        "hits_by_volume": {int(k): int(v) for k, v in by_volume.size().items()},
        "noise_fraction_by_volume": {
            int(k): round(float(v), 4)
            for k, v in (df.particle_id == 0).groupby(df.volume_id).mean().items()
        },
        "cells_per_hit_by_volume": {
            int(k): round(float(v), 3) for k, v in by_volume.ncells.mean().items()
        },
        "overlap_by_volume": {
            int(k): round(float(v), 4)
            for k, v in (size > 1).groupby(signal.volume_id).mean().items()
        },
    }


def run_fidelity(detector: Detector, args: argparse.Namespace, n_events: int) -> None:
    for mu in args.mu:
        records = []
        for i in range(n_events):
            event, _ = simulate_event(detector, 1000 + i, mu, args.seed, args.generator, args.field)
            record = fidelity(event)
            records.append(record)
            emit({"kind": "fidelity", "mu": mu, "event_id": 1000 + i, **record})
        flat = pd.json_normalize(records)
        mean = {k: round(float(v), 4) for k, v in flat.mean(numeric_only=True).items()}
        emit({"kind": "fidelity_mean", "mu": mu, "events": n_events, "seed": args.seed, **mean})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one event per mu (< 1 minute)")
    parser.add_argument("--events", type=int, default=3, help="events per mu (default 3)")
    parser.add_argument("--mu", type=float, nargs="+", default=[20.0, 50.0, 100.0, 200.0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--generator", default="parametric", choices=["parametric", "pythia8"])
    parser.add_argument("--field", default="solenoid", choices=["solenoid", "uniform"])
    parser.add_argument(
        "--fidelity", action="store_true", help="print fidelity figures instead of timings"
    )
    args = parser.parse_args()
    n_events = 1 if args.quick else args.events

    detector = Detector.load()
    if args.fidelity:
        run_fidelity(detector, args, n_events)
        return
    simulate_event(detector, 0, 5.0, args.seed, args.generator, args.field)  # warm caches

    medians = []
    for mu in args.mu:
        walls, cpus, hits = [], [], []
        for i in range(n_events):
            event_id = 1000 + i
            cpu_start = time.process_time()
            event, timings = simulate_event(
                detector, event_id, mu, args.seed, args.generator, args.field
            )
            cpu = time.process_time() - cpu_start
            walls.append(timings["total"])
            cpus.append(cpu)
            hits.append(len(event.hits))
            emit(
                {
                    "kind": "event",
                    "mu": mu,
                    "event_id": event_id,
                    "n_hits": len(event.hits),
                    "n_particles": len(event.particles),
                    "n_cells": len(event.cells),
                    "wall_s": round(timings["total"], 4),
                    "cpu_s": round(cpu, 4),
                    "stages_s": {k: round(v, 4) for k, v in timings.items() if k != "total"},
                }
            )
        stage_memory: dict[str, int] = {}
        tracemalloc.start()
        simulate_event(
            detector, 1000, mu, args.seed, args.generator, args.field, 0.15, stage_memory
        )
        tracemalloc.stop()
        emit(
            {
                "kind": "memory",
                "mu": mu,
                "peak_traced_mb": {k: round(v / 2**20, 1) for k, v in stage_memory.items()},
                "max_rss_mb": round(peak_rss_mb(), 1),
            }
        )
        medians.append(
            (mu, statistics.median(hits), statistics.median(walls), statistics.median(cpus))
        )

    base = medians[0]
    for mu, n_hits, wall, cpu in medians:
        record = {
            "kind": "summary",
            "mu": mu,
            "events": n_events,
            "median_hits": n_hits,
            "median_wall_s": round(wall, 4),
            "median_cpu_s": round(cpu, 4),
            f"wall_ratio_to_mu_{base[0]:g}": round(wall / base[2], 3),
            f"hits_ratio_to_mu_{base[0]:g}": round(n_hits / base[1], 3),
        }
        if mu == 200:
            record["wall_fraction_of_5s_budget"] = round(wall / BUDGET_S, 3)
            record["cpu_fraction_of_5s_budget"] = round(cpu / BUDGET_S, 3)
        emit(record)

    if len(medians) >= 2:
        log_hits = np.log([m[1] for m in medians])
        fit = {"kind": "fit", "model": "time = a * hits^b", "points": len(medians)}
        for name, column in (("wall", 2), ("cpu", 3)):
            slope, intercept = np.polyfit(log_hits, np.log([m[column] for m in medians]), 1)
            fit[f"exponent_{name}"] = round(float(slope), 3)
            fit[f"a_{name}_s"] = float(f"{np.exp(intercept):.4g}")
        emit(fit)


if __name__ == "__main__":
    main()
