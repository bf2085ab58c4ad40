"""The evaluation report: ``summary.json``, per-event tables, efficiency tables and plots.

:func:`evaluate_events` is what ``trackgnn evaluate`` calls. Everything is written to a temporary
directory beside ``out_dir`` first; only when it is complete are its files renamed into ``out_dir``,
``summary.json`` last, so a killed job never leaves a report that looks whole. The studies' report
subdirectories (``scaling/``, ``pileup/``, ``noise/``) in ``out_dir`` are left alone.

Report directory contents:

- ``summary.json``: see :func:`build_summary`; ``summary.txt``: the same as a table
  (:func:`format_table`);
- ``per_event.csv``: the track-level counts and TrackML scores of each event;
- ``edge_metrics.csv``: the edge-level counts and figures of each event and stage;
- ``efficiency_vs_pt.csv/.png`` (selected particles) and ``efficiency_vs_eta.csv/.png`` (selected
  signal particles).

Timing files: one JSON object per stage execution, ``{"wall_s": seconds, "n_events": int (default
1), "peak_memory_mb": float (optional)}``; a stage's ``timing_s`` is its total wall time over its
total events, its ``peak_memory_mb`` the maximum over its files.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trackgnn.atomic import write_json_atomic
from trackgnn.errors import InputError, TrackGNNError
from trackgnn.evaluation.matching import DEFAULT_CUTS, EvaluationCuts
from trackgnn.evaluation.metrics import (
    ETA_BIN_EDGES,
    PT_BIN_EDGES,
    TRACK_METRICS,
    Estimate,
    aggregate_edge_metrics,
    aggregate_track_metrics,
    edge_metrics,
    efficiency_table,
    event_track_metrics,
)
from trackgnn.evaluation.plots import plot_efficiency
from trackgnn.evaluation.score import submission_tracks
from trackgnn.event_data import load_graph
from trackgnn.io import event_id_from_prefix, read_event

EDGE_STAGES = ("graph", "filter", "gnn")


@dataclass(frozen=True)
class EventInputs:
    """The files of one test event.

    Attributes:
        prefix: TrackML event prefix ``DIR/event#########`` (hits, particles, truth needed).
        tracks: the track-building output CSV ``hit_id,track_id``.
        graphs: stage name -> per-event graph tensor file (``graph``, ``filter``, ``gnn``).
    """

    prefix: Path
    tracks: Path
    graphs: Mapping[str, Path] = field(default_factory=dict)


#: Edge stages in pipeline order.
PIPELINE_STAGES = ("graph", "filter", "gnn")


def in_pipeline_order(stages: Iterable[str]) -> list[str]:
    """Distinct stage names, the known ones in pipeline order, then any others sorted."""
    names = set(stages)
    return [s for s in PIPELINE_STAGES if s in names] + sorted(names - set(PIPELINE_STAGES))


# --------------------------------------------------------------------------- inputs


def read_submission(path: str | Path) -> pd.DataFrame:
    """Read a ``hit_id,track_id`` CSV, raising InputError on a bad file."""
    path = Path(path)
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise InputError(path, "file does not exist") from None
    except pd.errors.EmptyDataError:
        raise InputError(path, "file is empty (no header)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise InputError(path, f"malformed CSV: {str(err).splitlines()[0]}") from None
    for column in ("hit_id", "track_id"):
        if column not in frame.columns:
            raise InputError(path, f"missing column {column}")
        if not pd.api.types.is_integer_dtype(frame[column].dtype):
            raise InputError(path, f"column {column} must hold integers")
    return frame[["hit_id", "track_id"]]


def read_timing(path: str | Path) -> dict[str, float]:
    """Read one timing JSON (see the module docstring); InputError on a bad file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(path, "file does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(path, f"not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise InputError(path, "timing file must hold a JSON object")

    def number(key: str, default: float | None, minimum: float) -> float | None:
        value = data.get(key, default)
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise InputError(path, f"{key} must be a number")
        if value < minimum:
            raise InputError(path, f"{key} must be >= {minimum}")
        return float(value)

    if "wall_s" not in data:
        raise InputError(path, "missing key wall_s")
    n_events = number("n_events", 1, 1)
    if n_events is not None and n_events != int(n_events):
        raise InputError(path, "n_events must be an integer")
    result = {"wall_s": number("wall_s", None, 0.0), "n_events": n_events}
    memory = number("peak_memory_mb", None, 0.0)
    if memory is not None:
        result["peak_memory_mb"] = memory
    return result


def summarize_timing(
    timing_files: Mapping[str, Sequence[str | Path]],
) -> tuple[dict[str, float], dict[str, float]]:
    """Per stage: mean wall seconds per event and peak memory (MB) over the stage's files."""
    timing_s: dict[str, float] = {}
    peak_memory_mb: dict[str, float] = {}
    for stage, paths in timing_files.items():
        # The same file listed twice is one execution, not two.
        records = [read_timing(p) for p in dict.fromkeys(Path(p) for p in paths)]
        if not records:
            continue
        timing_s[stage] = sum(r["wall_s"] for r in records) / sum(r["n_events"] for r in records)
        memories = [r["peak_memory_mb"] for r in records if "peak_memory_mb" in r]
        if memories:
            peak_memory_mb[stage] = max(memories)
    return timing_s, peak_memory_mb


# --------------------------------------------------------------------------- summary


def build_summary(
    track_metrics: Mapping[str, Mapping[str, Estimate]],
    edge_metrics_by_stage: Mapping[str, Mapping[str, Estimate]],
    timing_s: Mapping[str, float],
    n_events: int,
    cuts: EvaluationCuts = DEFAULT_CUTS,
    peak_memory_mb: Mapping[str, float] | None = None,
    counts: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Assemble the summary dict written as ``summary.json``.

    Keys: the track metrics ``physics_efficiency``, ``technical_efficiency``, ``purity``,
    ``duplicate_rate``, ``trackml_score`` (each ``{signal_key: Estimate, "all": Estimate}``),
    ``edge_metrics`` (``{stage: {efficiency, purity, purity_pid, edges_per_hit, auc}}``, each an
    Estimate; ``auc`` value None for a stage without scores), ``timing_s`` (``{stage: mean s per
    event}``), ``peak_memory_mb``, ``n_events``, ``cuts``, and ``counts`` (pooled counts).
    """
    missing = [name for name in TRACK_METRICS if name not in track_metrics]
    if missing:
        raise TrackGNNError(f"summary: missing track metric(s) {', '.join(missing)}")
    summary: dict[str, Any] = {name: dict(track_metrics[name]) for name in TRACK_METRICS}
    summary["edge_metrics"] = {stage: dict(m) for stage, m in edge_metrics_by_stage.items()}
    summary["timing_s"] = dict(timing_s)
    summary["peak_memory_mb"] = dict(peak_memory_mb or {})
    summary["n_events"] = int(n_events)
    summary["cuts"] = asdict(cuts)
    summary["counts"] = dict(counts or {})
    return summary


def write_summary(path: str | Path, summary: Mapping[str, Any]) -> None:
    """Write ``summary`` (from :func:`build_summary`) as JSON, atomically."""
    write_json_atomic(path, summary)


def _format_estimate(estimate: Mapping[str, float | None] | None, digits: int = 4) -> str:
    if not estimate or estimate.get("value") is None:
        return "n/a"
    text = f"{estimate['value']:.{digits}f}"
    if estimate.get("error") is not None:
        text += f" ± {estimate['error']:.{digits}f}"
    return text


def format_table(summary: Mapping[str, Any]) -> str:
    """A short plain-text table of the summary for the terminal."""
    name_width, width = 22, 18

    def row(name: str, cells: Sequence[str]) -> str:
        return name.ljust(name_width) + "".join(cell.rjust(width) for cell in cells)

    variants = [key for key in summary["physics_efficiency"] if key != "all"] + ["all"]
    lines = [f"trackgnn evaluation over {summary['n_events']} event(s)", "", row("track", variants)]
    for name in TRACK_METRICS:
        estimates = summary[name]
        lines.append(
            row(name.replace("_", " "), [_format_estimate(estimates.get(v)) for v in variants])
        )
    edge = summary.get("edge_metrics", {})
    if edge:
        columns = ("efficiency", "purity", "edges_per_hit", "edge_reduction", "auc")
        lines += ["", row("edges", columns)]
        # pipeline order (summary.json comes back with its keys sorted)
        for stage in in_pipeline_order(edge):
            figures = edge[stage]
            digits = {"edges_per_hit": 2, "edge_reduction": 2}
            cells = [_format_estimate(figures.get(c), digits.get(c, 4)) for c in columns]
            lines.append(row(stage, cells))
    per_stage = (
        ("timing_s", "time per event (s)", "{:.3g}"),
        ("peak_memory_mb", "peak memory (MB)", "{:.0f}"),
    )
    stage_lines = [
        label.ljust(name_width)
        + "  ".join(f"{stage} {number.format(value)}" for stage, value in summary[key].items())
        for key, label, number in per_stage
        if summary.get(key)
    ]
    if stage_lines:
        lines += ["", *stage_lines]
    return "\n".join(lines)


# --------------------------------------------------------------------------- evaluation


@contextlib.contextmanager
def _staged_files(final: Path, last: str) -> Iterator[Path]:
    """Yield a temporary directory beside ``final`` whose files then replace their namesakes.

    Each file is renamed into ``final`` (atomic per file) with ``last`` renamed last: the
    workflow keys on it, so a killed job never leaves a new ``last`` beside older files. Other
    entries of ``final`` (the studies' report subdirectories) are left alone.
    """
    final.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        names = sorted(p.name for p in tmp.iterdir())
        names.sort(key=lambda name: name == last)
        for name in names:
            os.replace(tmp / name, final / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _evaluate_one(
    inputs: EventInputs,
    cuts: EvaluationCuts,
    score_cuts: Mapping[str, float | None],
) -> tuple[dict[str, Any], pd.DataFrame, list[dict[str, Any]]]:
    event = read_event(inputs.prefix, require_truth=True)
    assert event.truth is not None and event.particles is not None
    submission = read_submission(inputs.tracks)
    try:
        submission_tracks(event.truth["hit_id"].to_numpy(np.int64), submission)
    except TrackGNNError as err:
        raise InputError(inputs.tracks, str(err).removeprefix("submission: ")) from None
    try:
        counts, match = event_track_metrics(event.truth, event.particles, submission, cuts)
    except TrackGNNError as err:
        raise TrackGNNError(f"{inputs.prefix}: {err}") from None
    event_id = event_id_from_prefix(inputs.prefix)
    particles = match.particles.assign(event_id=event_id)
    edge_rows = []
    for stage, path in inputs.graphs.items():
        graph = load_graph(path)
        figures = edge_metrics(graph, score_cuts.get(stage), cuts, source=str(path))
        edge_rows.append({"event_id": event_id, "stage": stage, **figures})
    return {"event_id": event_id, **counts}, particles, edge_rows


def evaluate_events(
    events: Sequence[EventInputs],
    out_dir: str | Path,
    cuts: EvaluationCuts = DEFAULT_CUTS,
    score_cuts: Mapping[str, float | None] | None = None,
    timing_files: Mapping[str, Sequence[str | Path]] | None = None,
) -> dict[str, Any]:
    """Evaluate the test events and write the report directory ``out_dir`` (atomically).

    Args:
        events: the files of each event (see :class:`EventInputs`).
        out_dir: the report directory; its files are replaced, summary.json last.
        cuts: evaluation thresholds (``min_track_length`` should be the track builder's
            ``min_length``).
        score_cuts: stage -> edge score cut for the edge metrics (edges with ``score > cut``
            count as kept); a stage that is absent or None keeps all of its edges.
        timing_files: stage -> timing JSON files of that stage's executions.

    Returns:
        The summary written to ``out_dir/summary.json``.
    """
    if not events:
        raise TrackGNNError("evaluate: no events to evaluate")
    score_cuts = dict(score_cuts or {})
    timing_s, peak_memory_mb = summarize_timing(timing_files or {})

    per_event, particle_tables, edge_rows = [], [], []
    for inputs in events:
        counts, particles, rows = _evaluate_one(inputs, cuts, score_cuts)
        per_event.append(counts)
        particle_tables.append(particles)
        edge_rows.extend(rows)

    edge_table = pd.DataFrame(edge_rows)
    # pipeline order, whatever order the inputs named the stages in: each stage's
    # edge_reduction is against the stage before it
    stages = in_pipeline_order(row["stage"] for row in edge_rows)
    edge_by_stage = {
        stage: aggregate_edge_metrics([row for row in edge_rows if row["stage"] == stage])
        for stage in stages
    }
    for before, after in itertools.pairwise(stages):
        kept = edge_by_stage[after]["n_edges"]["value"]
        reduction = edge_by_stage[before]["n_edges"]["value"] / kept if kept else None
        edge_by_stage[after]["edge_reduction"] = {"value": reduction, "error": None}
    pooled_counts = {
        key: int(sum(event[key] for event in per_event))
        for key in per_event[0]
        if key.startswith("n_")
    }
    summary = build_summary(
        aggregate_track_metrics(per_event, cuts),
        edge_by_stage,
        timing_s,
        len(events),
        cuts,
        peak_memory_mb,
        pooled_counts,
    )

    particles = pd.concat(particle_tables, ignore_index=True)
    pt_table = efficiency_table(particles[particles["selected"]], "pt", PT_BIN_EDGES)
    eta_table = efficiency_table(
        particles[particles["selected"] & particles["signal"]], "eta", ETA_BIN_EDGES
    )
    out_dir = Path(out_dir)
    with _staged_files(out_dir, last="summary.json") as tmp:
        pd.DataFrame(per_event).to_csv(tmp / "per_event.csv", index=False)
        edge_table.to_csv(tmp / "edge_metrics.csv", index=False)
        pt_table.to_csv(tmp / "efficiency_vs_pt.csv", index=False)
        eta_table.to_csv(tmp / "efficiency_vs_eta.csv", index=False)
        plot_efficiency(pt_table, "pt", tmp / "efficiency_vs_pt.png", "selected particles")
        plot_efficiency(
            eta_table,
            "eta",
            tmp / "efficiency_vs_eta.png",
            f"selected particles, {cuts.signal_key}",
        )
        (tmp / "summary.txt").write_text(format_table(summary) + "\n")
        write_summary(tmp / "summary.json", summary)
    return summary
