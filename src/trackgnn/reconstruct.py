"""Reconstruction: a trained pipeline's inference stages applied to any TrackML events.

One process runs, per event, the stage functions the workflow's per-event rules run (no copy of
any stage): features (:func:`trackgnn.features.build_features`), embedding and radius graph
(:func:`trackgnn.graph.construction.connect_hits`), filter
(:func:`trackgnn.graph.construction.filter_edges`), GNN edge scores
(:func:`trackgnn.scoring.gnn_logits`) and track building (:func:`trackgnn.tracks.track_labels`).
Models are loaded once, so the per-event cost is the stages' own.

Output directory: ``event#########.csv`` (``hit_id,track_id``) per event, the combined Kaggle
TrackML submission ``submission.csv`` (``event_id,hit_id,track_id``, every hit of every event
exactly once) and, when every event has truth, the evaluation report under ``report/``.
Everything is written into a temporary directory beside the output first and moved in only when
all events succeeded: a bad input leaves no partial output.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from trackgnn.atomic import atomic_path
from trackgnn.config import Config, load_config
from trackgnn.errors import CheckpointError, ConfigError, InputError
from trackgnn.features import FEATURE_NAMES, build_features
from trackgnn.graph.components import write_submission
from trackgnn.graph.construction import connect_hits, filter_edges
from trackgnn.io import (
    event_id_from_prefix,
    event_prefix,
    find_event_file,
    list_event_ids,
    read_event,
    select_event_ids,
)
from trackgnn.models.checkpoint import load_model, resolve_device
from trackgnn.models.embedding import EmbeddingNet
from trackgnn.models.filter import FilterNet
from trackgnn.models.interaction_gnn import InteractionGNN
from trackgnn.models.mlp import angle_columns
from trackgnn.process import peak_rss_mb
from trackgnn.scoring import gnn_logits
from trackgnn.tracks import track_figures, track_labels

log = logging.getLogger("trackgnn.reconstruct")

#: The checkpoints a models directory must hold (a finished run's ``models/``).
MODEL_FILES = {"embedding": "embedding.ckpt", "filter": "filter.ckpt", "gnn": "gnn.ckpt"}
#: Constructor argument holding each model's number of hit features.
_FEATURE_ARGUMENT = {"embedding": "in_dim", "filter": "node_dim", "gnn": "node_features"}
_BUILDERS = {"embedding": EmbeddingNet, "filter": FilterNet, "gnn": InteractionGNN}
#: Per-event stages in order, as timed by :func:`reconstruct_event`.
STAGES = ("read", "features", "embedding", "radius", "filter", "gnn", "tracks")
SUBMISSION = "submission.csv"


@dataclass
class Models:
    """The three trained networks of a run, in eval mode on the config's device."""

    directory: Path
    embedding: EmbeddingNet
    filter: FilterNet
    gnn: InteractionGNN


@dataclass
class EventResult:
    """What reconstructing one event gives: its hits' track labels and per-stage figures."""

    event_id: int
    hit_id: np.ndarray  # [N] TrackML hit ids
    labels: np.ndarray  # [N] track label of each hit, -1 for none (see trackgnn.tracks)
    seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    figures: dict[str, float] = field(default_factory=dict)
    #: The event's truth and particles, kept when asked for (evaluation without a second read).
    truth: pd.DataFrame | None = None
    particles: pd.DataFrame | None = None


# ----------------------------------------------------------------------------- inputs


def training_run_dir(models_dir: str | os.PathLike[str]) -> Path:
    """The training run a models directory belongs to: ``RUN`` for ``RUN/models``, else itself."""
    models_dir = Path(models_dir).resolve()
    return models_dir.parent if models_dir.name == "models" else models_dir


def check_output_dir(output: str | os.PathLike[str], models_dir: str | os.PathLike[str]) -> Path:
    """Refuse an output directory inside the training run (or a file); return it resolved."""
    out = Path(output).resolve()
    run = training_run_dir(models_dir)
    if out == run or run in out.parents:
        raise InputError(
            output, f"output directory is inside the training run {run}: choose another one"
        )
    if out.exists() and not out.is_dir():
        raise InputError(output, "output exists and is not a directory")
    return out


def model_paths(models_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """The checkpoint of each model in ``models_dir``; InputError naming the first missing one."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise InputError(models_dir, "models directory does not exist")
    paths = {kind: models_dir / name for kind, name in MODEL_FILES.items()}
    for kind, path in paths.items():
        if not path.is_file():
            raise InputError(path, f"{kind} checkpoint missing from the models directory")
    return paths


def check_feature_set(path: Path, kind: str, hparams: dict[str, Any]) -> None:
    """Refuse a checkpoint trained on other hit features than :data:`FEATURE_NAMES`."""
    model = hparams["model"]
    n_features = model.get(_FEATURE_ARGUMENT[kind])
    angles = sorted(int(c) for c in model.get("angle_columns", []))
    expected = angle_columns(FEATURE_NAMES)
    if n_features != len(FEATURE_NAMES) or angles != expected:
        raise CheckpointError(
            f"{path}: {kind} model was trained on {n_features} hit features (angles in "
            f"columns {angles}) but the events give {len(FEATURE_NAMES)} "
            f"({', '.join(FEATURE_NAMES)}; angles in columns {expected})"
        )


def load_models(models_dir: str | os.PathLike[str], device: str = "cpu") -> Models:
    """Load and check the embedding, filter and GNN checkpoints of ``models_dir``."""
    paths = model_paths(models_dir)
    loaded: dict[str, Any] = {}
    for kind, path in paths.items():
        model, hparams = load_model(path, kind, _BUILDERS[kind])
        check_feature_set(path, kind, hparams)
        loaded[kind] = model.to(device)
    return Models(Path(models_dir), **loaded)


def reconstruct_config(
    models_dir: str | os.PathLike[str], config: str | os.PathLike[str] | None
) -> Config:
    """The config of a reconstruction: ``config`` if given, else the training run's own.

    A workflow run keeps its resolved configs under ``RUN/configs/``; the newest one is the
    config the models were last trained with.
    """
    if config is not None:
        return load_config(config)
    configs = sorted(
        (training_run_dir(models_dir) / "configs").glob("config-*.yaml"),
        key=lambda p: (p.stat().st_mtime, p.name),
    )
    if not configs:
        raise ConfigError(
            f"{models_dir}: no training config found in {training_run_dir(models_dir)}/configs; "
            "pass --config (the config the models were trained with)"
        )
    log.info("config: %s (the training run's newest resolved config)", configs[-1])
    return load_config(configs[-1])


def select_events(
    events: Sequence[str | os.PathLike[str]], ids: Sequence[str | int] | None = None
) -> list[Path]:
    """Event prefixes from a directory (all its events, or those ``ids`` select) or prefixes.

    ``ids`` items are event ids (each must be in the directory) and inclusive ranges
    ``FIRST-LAST`` (the directory's events within). Every selected event must have a hits and
    a cells file (``.csv`` or ``.csv.gz``): the models were trained on cell-cluster features.
    Raises InputError naming the directory or file otherwise.
    """
    if not events:
        raise ConfigError("no events given")
    if len(events) == 1 and Path(events[0]).is_dir():
        directory = Path(events[0])
        available = list_event_ids(directory)
        if not available:
            raise InputError(directory, "no TrackML events (event#########-hits.csv[.gz]) here")
        chosen = select_event_ids(ids, available, directory) if ids else available
        prefixes = [event_prefix(directory, event_id) for event_id in chosen]
    else:
        if ids:
            raise ConfigError("event ids select events of one directory, not of event prefixes")
        prefixes = []
        for item in events:
            if Path(item).is_dir():
                raise InputError(item, "give one events directory, or event prefixes")
            prefixes.append(Path(item))
        seen: dict[int, Path] = {}
        for prefix in prefixes:
            event_id = event_id_from_prefix(prefix)
            if event_id in seen:
                raise InputError(prefix, f"event {event_id:09d} given twice ({seen[event_id]})")
            seen[event_id] = prefix
    for prefix in prefixes:
        for kind in ("hits", "cells"):
            if find_event_file(prefix, kind) is None:
                raise InputError(f"{prefix}-{kind}.csv", "file does not exist (nor .csv.gz)")
    return prefixes


@dataclass(frozen=True)
class ReconstructionPlan:
    """The checked inputs and outputs of the workflow's ``reconstruct`` target."""

    models: dict[str, Path]  # model kind -> checkpoint
    events_dir: Path
    event_ids: list[int]
    prefixes: list[Path]
    output: Path

    def event_files(self) -> list[str]:
        """The selected events' existing TrackML files (rule inputs)."""
        kinds = ("hits", "cells", "particles", "truth")
        files = (find_event_file(p, kind) for p in self.prefixes for kind in kinds)
        return [str(f) for f in files if f is not None]


def plan_reconstruction(cfg: Config) -> ReconstructionPlan:
    """Check the ``reconstruct`` config section against the file system and plan the target.

    The reconstruction is a run of its own: its outputs go to ``<run_dir>/reconstruct``, and
    ``run`` must not name the training run the models come from.
    """
    section = cfg.reconstruct
    if not section.models or not section.events:
        raise ConfigError(
            "config: the reconstruct target needs reconstruct.models (a finished run's models "
            "directory) and reconstruct.events (a directory of TrackML events)"
        )
    models = model_paths(section.models)
    training_run = training_run_dir(section.models)
    if cfg.run_dir.resolve() == training_run:
        raise ConfigError(
            f"config: run '{cfg.run}' is the training run of reconstruct.models "
            f"({section.models}); give the reconstruction a run name of its own"
        )
    output = check_output_dir(cfg.run_dir / "reconstruct", section.models)
    events_dir = Path(section.events)
    if not events_dir.is_dir():
        raise InputError(events_dir, "events directory does not exist")
    prefixes = select_events([events_dir], section.ids)
    event_ids = [event_id_from_prefix(p) for p in prefixes]
    return ReconstructionPlan(models, events_dir, event_ids, prefixes, output)


# ----------------------------------------------------------------------------- stages


@contextlib.contextmanager
def _stage(result: EventResult, name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    result.seconds[name] = time.perf_counter() - start
    result.peak_rss_mb[name] = peak_rss_mb()


def reconstruct_event(
    cfg: Config, models: Models, prefix: str | os.PathLike[str], keep_truth: bool = False
) -> EventResult:
    """Track candidates of one TrackML event: every inference stage, in memory.

    Returns the track label of every hit and, per stage of :data:`STAGES`, its seconds and the
    process's peak RSS after it; with ``keep_truth`` the event's truth and particles too (their
    files must exist), read in the same pass.
    """
    event_id = event_id_from_prefix(prefix)
    result = EventResult(event_id, np.zeros(0, np.int64), np.zeros(0, np.int64))
    with _stage(result, "read"):
        event = read_event(prefix, require_truth=keep_truth)
    if keep_truth:
        result.truth, result.particles = event.truth, event.particles
    if event.cells is None or len(event.cells) == 0:
        raise InputError(find_event_file(prefix, "cells") or prefix, "event has no cells")
    with _stage(result, "features"):
        hits = build_features(event)
    del event
    graph = connect_hits(cfg, models.embedding, hits, timings=result.seconds)
    result.peak_rss_mb["embedding"] = result.peak_rss_mb["radius"] = peak_rss_mb()
    n_candidates = graph.n_edges
    with _stage(result, "filter"):
        graph, _ = filter_edges(cfg, models.filter, graph)
    with _stage(result, "gnn"):
        logits = gnn_logits(models.gnn, graph)
        graph = graph.with_scores(torch.sigmoid(logits.float()).cpu())
        del logits
    with _stage(result, "tracks"):
        labels = track_labels(cfg, graph)
    result.hit_id = graph.hit_id.numpy()
    result.labels = labels.cpu().numpy()
    result.figures = {
        "n_hits": float(graph.n_hits),
        "n_candidate_edges": float(n_candidates),
        "n_filtered_edges": float(graph.n_edges),
        **track_figures(labels),
    }
    return result


# ----------------------------------------------------------------------------- outputs


def _install(staging: Path, output: Path) -> None:
    """Move the staged outputs into ``output``: the whole directory when it is new, else file by
    file (each an atomic rename) with the combined submission last."""
    if not output.exists():
        os.replace(staging, output)
        return
    names = sorted(p.name for p in staging.iterdir())
    names.sort(key=lambda name: name == SUBMISSION)
    for name in names:
        target = output / name
        if (staging / name).is_dir():
            if target.exists():
                shutil.rmtree(target)
        os.replace(staging / name, target)
    shutil.rmtree(staging, ignore_errors=True)


def reconstruct(
    cfg: Config,
    models_dir: str | os.PathLike[str],
    events: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    ids: Sequence[str | int] | None = None,
) -> dict[str, Any]:
    """Reconstruct events with a trained run's models; write per-event and combined submissions.

    Args:
        cfg: the config (device, threads, and the graph, filter and tracks sections; normally
            the one the models were trained with).
        models_dir: a finished run's ``models/`` (``embedding.ckpt``, ``filter.ckpt``,
            ``gnn.ckpt``).
        events: one TrackML events directory, or event prefixes ``DIR/event#########``.
        output: output directory (not inside the training run).
        ids: with an events directory, the events to reconstruct: ids and inclusive ranges
            ``FIRST-LAST`` (see :func:`select_events`; default: all).
    Returns:
        A summary: events, hits, tracks, seconds per event and the output paths.
    """
    output_dir = check_output_dir(output, models_dir)
    prefixes = select_events(events, ids)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    models = load_models(models_dir, device)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{output_dir.name}-", dir=output_dir.parent))
    umask = os.umask(0)  # mkdtemp creates 0700; the output gets the usual permissions
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)
    try:
        parts, total_s = [], 0.0
        for number, prefix in enumerate(prefixes, 1):
            result = reconstruct_event(cfg, models, prefix)
            name = f"event{result.event_id:09d}.csv"
            submission = write_submission(result.hit_id, result.labels, staging / name)
            parts.append(submission.assign(event_id=result.event_id))
            total_s += sum(result.seconds.values())
            log.info(
                "event %09d (%d/%d): %d hits, %d tracks, %.1f s",
                result.event_id,
                number,
                len(prefixes),
                len(submission),
                result.figures["n_tracks"],
                sum(result.seconds.values()),
            )
        combined = pd.concat(parts, ignore_index=True)[["event_id", "hit_id", "track_id"]]
        with atomic_path(staging / SUBMISSION) as tmp:
            combined.to_csv(tmp, index=False)
        report = _evaluate_if_truth(cfg, prefixes, staging)
        _install(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {
        "n_events": len(prefixes),
        "n_hits": len(combined),
        "seconds_per_event": total_s / len(prefixes),
        "submission": str(output_dir / SUBMISSION),
        "report": str(output_dir / "report") if report else None,
    }


def _evaluate_if_truth(cfg: Config, prefixes: Sequence[Path], staging: Path) -> bool:
    """Write ``report/`` (the workflow's evaluation) when every event has truth and particles."""
    from trackgnn.evaluation.matching import EvaluationCuts
    from trackgnn.evaluation.report import EventInputs, evaluate_events

    with_truth = [
        find_event_file(p, "truth") is not None and find_event_file(p, "particles") is not None
        for p in prefixes
    ]
    if not all(with_truth):
        if any(with_truth):
            log.info("evaluation skipped: only some events have truth and particles files")
        return False
    cuts = EvaluationCuts.from_config(cfg)
    inputs = [
        EventInputs(prefix=p, tracks=staging / f"event{event_id_from_prefix(p):09d}.csv")
        for p in prefixes
    ]
    evaluate_events(inputs, staging / "report", cuts=cuts)
    return True
