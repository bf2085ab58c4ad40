"""Robustness studies: a trained pipeline applied unchanged to other pile-up and noise levels.

``trackgnn study pileup`` and ``trackgnn study noise`` (workflow targets ``pileup_study`` and
``noise_study``), after the studies of the Exa.TrkX paper ("Performance of a geometric deep
learning pipeline for HL-LHC particle tracking", arXiv:2103.06995): its Figure 6 (efficiency and
purity against the number of hits of an event, pile-up 0 to 200) and Table 1 and Figure 7
(efficiency and purity at noise fractions 0 to 20 %, and the relative efficiency against pT).

Each point of a study is the test split's event ids simulated anew at the point's pile-up or noise
fraction (everything else as in the run's ``simulate`` section), reconstructed in memory by the
run's three models (:func:`trackgnn.reconstruct.reconstruct_event`, every inference stage) and
matched to the truth with the evaluation's cuts. ``measure_point`` writes one point's JSON (per
event: hits, seconds, track figures; the pooled figures and the efficiency against pT);
``report_study`` turns the points into ``<study>.csv`` (one row per point), ``<study>_events.csv``
(one row per event), ``<study>.png``, and one MLflow run per point nested under a run of the study.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from trackgnn.atomic import atomic_path, write_json_atomic
from trackgnn.errors import InputError

#: Study name -> the simulation setting it varies.
STUDIES = {"pileup": "mu", "noise": "noise_fraction"}
_PREFIX = {"pileup": "mu", "noise": "noise"}
_POINT_COLUMNS = (
    "value",
    "n_events",
    "n_hits_per_event",
    "seconds_per_event",
    "technical_efficiency",
    "technical_efficiency_error",
    "physics_efficiency",
    "physics_efficiency_error",
    "purity",
    "purity_error",
    "trackml_score",
    "trackml_score_error",
)


def study_points(cfg: Any, study: str) -> dict[str, float]:
    """The points of a study: label (a file-name part, e.g. ``mu200``, ``noise0.05``) -> value."""
    values = cfg.studies.pileup_mu if study == "pileup" else cfg.studies.noise_fractions
    return {f"{_PREFIX[study]}{v:g}": float(v) for v in values}


def point_simulation(cfg: Any, study: str, value: float) -> dict[str, float]:
    """Pile-up and noise fraction of a point's events: the run's, with the study's one changed."""
    settings = {"mu": cfg.simulate.mu, "noise_fraction": cfg.simulate.noise_fraction}
    settings[STUDIES[study]] = value
    return settings


def measure_point(
    cfg: Any,
    study: str,
    value: float,
    models_dir: str | Path,
    prefixes: Sequence[str | Path],
    output: str | Path,
) -> dict[str, Any]:
    """Reconstruct and evaluate one point's events; write and return its figures."""
    import torch

    from trackgnn.evaluation.matching import EvaluationCuts
    from trackgnn.evaluation.metrics import (
        PT_BIN_EDGES,
        aggregate_track_metrics,
        efficiency_table,
        event_track_metrics,
    )
    from trackgnn.graph.components import submission_frame
    from trackgnn.models.checkpoint import resolve_device
    from trackgnn.reconstruct import load_models, reconstruct_event

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cuts = EvaluationCuts.from_config(cfg)
    models = load_models(models_dir, resolve_device(cfg.device))
    signal = cuts.signal_key
    events, counts, particles = [], [], []
    for prefix in prefixes:
        result = reconstruct_event(cfg, models, prefix, keep_truth=True)
        assert result.truth is not None and result.particles is not None
        submission = submission_frame(result.hit_id, result.labels, prefix)
        figures, match = event_track_metrics(result.truth, result.particles, submission, cuts)
        counts.append(figures)
        particles.append(match.particles)
        pooled = aggregate_track_metrics([figures], cuts)
        events.append(
            {
                "event_id": result.event_id,
                "n_hits": len(result.hit_id),
                "seconds": sum(result.seconds.values()),
                **{f"seconds_{stage}": s for stage, s in result.seconds.items()},
                "n_candidate_edges": int(result.figures["n_candidate_edges"]),
                "n_filtered_edges": int(result.figures["n_filtered_edges"]),
                "technical_efficiency": pooled["technical_efficiency"][signal]["value"],
                "physics_efficiency": pooled["physics_efficiency"][signal]["value"],
                "purity": pooled["purity"]["all"]["value"],
                "trackml_score": figures["trackml_score.all"],
            }
        )
    pooled = aggregate_track_metrics(counts, cuts)
    table = pd.concat(particles, ignore_index=True)
    pt_table = efficiency_table(table[table["selected"]], "pt", PT_BIN_EDGES)
    figures = {
        "technical_efficiency": pooled["technical_efficiency"][signal],
        "physics_efficiency": pooled["physics_efficiency"][signal],
        "purity": pooled["purity"]["all"],
        "trackml_score": pooled["trackml_score"]["all"],
    }
    point = {
        "study": study,
        "variable": STUDIES[study],
        "value": value,
        "signal": signal,
        "simulation": point_simulation(cfg, study, value),
        "events": events,
        "figures": figures,
        "efficiency_vs_pt": _records(pt_table),
    }
    write_json_atomic(output, point)
    return point


def _records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Table rows as JSON-safe dicts (NaN, in empty bins, as None)."""
    rows = table.to_dict(orient="records")
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for row in rows
    ]


def _load_point(path: Path, study: str) -> dict[str, Any]:
    import json

    try:
        point = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(path, f"not a study point: {err}") from None
    if not isinstance(point, dict) or point.get("study") != study or "events" not in point:
        raise InputError(path, f"not a point of the {study} study")
    return point


def point_rows(points: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per point (sorted by value): pooled figures with errors, hits and seconds."""
    rows = []
    for p in sorted(points, key=lambda p: p["value"]):
        n = len(p["events"])
        row = {
            "value": p["value"],
            "n_events": n,
            "n_hits_per_event": sum(e["n_hits"] for e in p["events"]) / n,
            "seconds_per_event": sum(e["seconds"] for e in p["events"]) / n,
        }
        for name, estimate in p["figures"].items():
            row[name], row[f"{name}_error"] = estimate["value"], estimate["error"]
        rows.append(row)
    return rows


def report_study(
    cfg: Any, study: str, inputs: Sequence[str | Path], output_dir: str | Path
) -> list[dict[str, Any]]:
    """Write the study's tables and plot, log its runs to MLflow; return the point rows."""
    from trackgnn import tracking

    points = [_load_point(Path(p), study) for p in inputs]
    rows = point_rows(points)
    variable = STUDIES[study]
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows, columns=list(_POINT_COLUMNS)).rename(columns={"value": variable})
    events = pd.DataFrame(
        [{variable: p["value"], **e} for p in points for e in p["events"]]
    ).sort_values([variable, "event_id"])
    files = [out / f"{study}.csv", out / f"{study}_events.csv", out / f"{study}.png"]
    for frame, path in zip((table, events), files, strict=False):
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False)
    _plot(study, points, rows, files[2])

    target = tracking.Target.from_config(cfg)
    params = {"variable": variable, "values": [r["value"] for r in rows]}
    tags = {tracking.KIND_TAG: "study", "trackgnn.study": study}
    with tracking.stage_run(target, f"{study}_study", params, tags=tags) as parent:
        for row in rows:
            point_tags = dict(tags)
            if parent.run_id:
                point_tags[tracking.PARENT_RUN_TAG] = parent.run_id
            name = f"{study}-{_PREFIX[study]}{row['value']:g}"
            with tracking.stage_run(
                target, study, {variable: row["value"]}, run_name=name, tags=point_tags
            ) as run:
                run.log_metrics(
                    {
                        f"physics/{k}": row[k]
                        for k in (
                            "technical_efficiency",
                            "physics_efficiency",
                            "purity",
                            "trackml_score",
                        )
                        if row[k] is not None
                    }
                    | {
                        "timing/seconds_per_event": row["seconds_per_event"],
                        "events/n_hits_per_event": row["n_hits_per_event"],
                    }
                )
        for artifact in files:
            parent.log_artifact(artifact)
    return rows


def format_rows(study: str, rows: Sequence[dict[str, Any]]) -> str:
    """The point table as aligned text for the log."""
    head = f"{STUDIES[study]:>14} {'hits/event':>10} {'s/event':>8} {'tech.eff':>8} "
    head += f"{'purity':>7} {'score':>7}"
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['value']:>14g} {r['n_hits_per_event']:>10.0f} {r['seconds_per_event']:>8.2f} "
            f"{_fmt(r['technical_efficiency'])} {_fmt(r['purity'], 7)} "
            f"{_fmt(r['trackml_score'], 7)}"
        )
    return "\n".join(lines)


def _fmt(value: float | None, width: int = 8) -> str:
    return f"{value:>{width}.4f}" if value is not None else f"{'-':>{width}}"


def _plot(study: str, points: list[dict[str, Any]], rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    variable = STUDIES[study]
    signal = points[0]["signal"]
    if study == "pileup":
        # The paper's Figure 6: per-event figures against the event's number of hits.
        for p in sorted(points, key=lambda p: p["value"]):
            hits = [e["n_hits"] for e in p["events"]]
            label = f"mu = {p['value']:g}"
            axes[0].scatter(hits, [e["technical_efficiency"] for e in p["events"]], label=label)
            axes[1].scatter(hits, [e["purity"] for e in p["events"]], label=label)
            axes[2].scatter(hits, [e["seconds"] for e in p["events"]], label=label)
        for ax, title in zip(
            axes,
            (f"technical efficiency ({signal})", "track purity", "seconds per event (all stages)"),
            strict=True,
        ):
            ax.set_xlabel("hits in the event")
            ax.set_title(title)
        axes[0].legend(fontsize=8)
    else:
        x = [r["value"] * 100 for r in rows]
        for ax, key, title in (
            (axes[0], "technical_efficiency", f"technical efficiency ({signal})"),
            (axes[1], "purity", "track purity"),
        ):
            ax.errorbar(x, [r[key] for r in rows], yerr=[r[f"{key}_error"] or 0 for r in rows])
            ax.set_xlabel("noise hits (%)")
            ax.set_title(title)
        # The paper's Figure 7: efficiency relative to the noiseless point, against pT.
        reference = min(points, key=lambda p: p["value"])
        base = [b["technical_efficiency"] for b in reference["efficiency_vs_pt"]]
        for p in sorted(points, key=lambda p: p["value"]):
            bins = p["efficiency_vs_pt"]
            centres = [math.sqrt(b["bin_low"] * b["bin_high"]) for b in bins]
            effs = [b["technical_efficiency"] for b in bins]
            pairs = zip(centres, effs, base, strict=True)
            kept = [(c, e / r) for c, e, r in pairs if e is not None and r]
            axes[2].plot(*zip(*kept, strict=True), marker="o", label=f"{p['value'] * 100:g} %")
        axes[2].set_xscale("log")
        axes[2].set_xlabel("pT (GeV)")
        axes[2].set_title(f"technical efficiency / at {reference['value'] * 100:g} % noise")
        axes[2].legend(fontsize=8)
    fig.suptitle(f"{study} study ({variable})", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


# ---------------------------------------------------------------------------------- command line


def add_robustness_parsers(
    kinds: Any, with_config: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]
) -> None:
    """Add ``study pileup|noise measure|report`` to the ``trackgnn study`` parser."""
    for study, variable in STUDIES.items():
        parser = kinds.add_parser(study, help=f"the trained pipeline at other {variable} values")
        actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
        p = with_config(actions.add_parser("measure", help="reconstruct and evaluate one point"))
        p.add_argument("--models", required=True, help="the run's models directory")
        p.add_argument("--events", nargs="+", required=True, help="event prefixes DIR/event#")
        p.add_argument("--value", type=float, required=True, help=f"the point's {variable}")
        p.add_argument("--output", type=Path, required=True, help="point JSON to write")
        p.set_defaults(func=_cmd_measure, study_name=study)
        p = with_config(actions.add_parser("report", help="tables, plot, MLflow runs"))
        p.add_argument("--inputs", nargs="+", type=Path, required=True, help="point JSONs")
        p.add_argument("--output-dir", type=Path, required=True, help="report directory")
        p.set_defaults(func=_cmd_report, study_name=study)


def _config(args: argparse.Namespace) -> Any:
    from trackgnn.config import config_from_dict, load_config

    return load_config(args.config) if args.config else config_from_dict({}, "default config")


def _cmd_measure(args: argparse.Namespace) -> None:
    measure_point(_config(args), args.study_name, args.value, args.models, args.events, args.output)


def _cmd_report(args: argparse.Namespace) -> None:
    rows = report_study(_config(args), args.study_name, args.inputs, args.output_dir)
    print(format_rows(args.study_name, rows))
