"""Graph-construction stages: build each event's candidate graph and filter its edges.

Stage entry points (called by the CLI, one event per call):

* :func:`build_graph`: features file -> embedding -> radius graph -> graph file (+ metrics);
* :func:`filter_graph`: graph file -> filter scores -> edges above ``filter.cut`` -> filtered file.

Each wraps the stage's in-memory step (:func:`connect_hits`, :func:`filter_edges`), which the
one-process reconstruction (:mod:`trackgnn.reconstruct`) calls directly.

Also the edge-level metrics of a stage: edge counts, edges per hit, efficiency (kept truth-graph
edges / truth-graph edges, for all particles and for signal particles), purity, ROC AUC.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from trackgnn.atomic import write_json_atomic
from trackgnn.config import Config
from trackgnn.errors import CheckpointError, InputError
from trackgnn.evaluation.matching import EvaluationCuts
from trackgnn.evaluation.metrics import aggregate_edge_metrics, edge_metrics, roc_auc
from trackgnn.event_data import EventGraph, EventHits, load_graph, load_hits, save_event
from trackgnn.graph.radius import radius_graph
from trackgnn.graph.truth import edge_labels, unique_truth_edges
from trackgnn.models.checkpoint import load_model, resolve_device
from trackgnn.models.embedding import EmbeddingNet
from trackgnn.models.filter import FilterNet
from trackgnn.process import peak_rss_mb

# ----------------------------------------------------------------------------- metrics


def evaluation_cuts(cfg: Config) -> EvaluationCuts:
    """The signal definition (pT, hits) and selection of the config's ``evaluation`` section."""
    ev = cfg.evaluation
    return EvaluationCuts(
        min_pt=ev.min_pt, max_eta=ev.max_eta, min_hits=ev.min_hits, signal_pt=ev.signal_pt
    )


def signal_hits(
    particle_id: Tensor, pt: Tensor, nhits: Tensor, signal_pt: float, min_hits: int
) -> Tensor:
    """Hits of signal particles: not noise, pT above ``signal_pt``, at least ``min_hits`` hits."""
    return (particle_id != 0) & (pt > signal_pt) & (nhits >= min_hits)


def stage_edge_metrics(
    graph: EventGraph, cuts: EvaluationCuts, source: str = "graph"
) -> dict[str, Any]:
    """:func:`trackgnn.evaluation.metrics.edge_metrics` of a graph plus all-particle efficiency.

    ``efficiency`` (from the evaluation module) counts signal truth-graph edges only;
    ``efficiency_all`` is the kept truth-graph edges over all truth-graph edges (``n_truth``).
    The graph holds each undirected edge once, so its kept truth-graph edges are ``y.sum()``.
    """
    metrics = edge_metrics(replace(graph, scores=None), cuts=cuts, source=source)
    n_truth = int(unique_truth_edges(graph.truth_edges, graph.n_hits).shape[1])
    metrics["n_truth"] = n_truth
    metrics["efficiency_all"] = metrics["n_true"] / n_truth if n_truth else None
    return metrics


def pooled_edge_metrics(per_event: list[dict[str, Any]]) -> dict[str, float]:
    """Pooled figures over events (plain floats, NaN where undefined) for training logs."""
    pooled = {
        name: estimate["value"] for name, estimate in aggregate_edge_metrics(per_event).items()
    }
    n_truth = sum(event["n_truth"] for event in per_event)
    pooled["efficiency_all"] = sum(e["n_true"] for e in per_event) / n_truth if n_truth else None
    return {name: float("nan") if v is None else float(v) for name, v in pooled.items()}


# ----------------------------------------------------------------------------- inputs


def _check_model_input(model_dim: int, event: EventHits, ckpt: Any, path: Any) -> None:
    features = event.x.shape[1]
    if features != model_dim:
        raise CheckpointError(
            f"{ckpt}: model expects {model_dim} hit features but {path} has {features}"
        )


# ----------------------------------------------------------------------------- stages


def connect_hits(
    cfg: Config,
    model: EmbeddingNet,
    hits: EventHits,
    timings: dict[str, float] | None = None,
) -> EventGraph:
    """Embed an event's hits and connect radius neighbours: the graph-building stage in memory.

    Args:
        cfg: the config (``graph`` section and ``device``).
        model: the trained embedding network.
        hits: the event's hits and features (see :func:`trackgnn.features.build_features`).
        timings: if given, receives the seconds of ``embedding`` and of ``radius`` (the radius
            graph and its labels).
    Returns:
        The event graph: ``hits`` with ``edge_index`` ``[2, E]`` (inner hit first) and its truth
        labels ``y`` (truth-graph edge) and ``y_pid`` (same particle), all false without truth.
    """
    device = torch.device(resolve_device(cfg.device))
    start = time.perf_counter()
    with torch.no_grad():
        emb = model.to(device).embed(hits.x.to(device), cfg.graph.chunk_size)
        embedded = time.perf_counter()
        edge_index = radius_graph(
            emb,
            hits.r,
            cfg.graph.radius,
            cfg.graph.k_max,
            cfg.graph.chunk_size,
            cfg.graph.backend,
        ).cpu()
    del emb
    y, y_pid = edge_labels(edge_index, hits.truth_edges, hits.particle_id)
    graph = EventGraph.from_hits(hits, edge_index, y, y_pid)
    if timings is not None:
        timings["embedding"] = embedded - start
        timings["radius"] = time.perf_counter() - embedded
    return graph


def build_graph(
    cfg: Config,
    model_ckpt: str | os.PathLike[str],
    features_file: str | os.PathLike[str],
    out_file: str | os.PathLike[str],
    metrics_file: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Embed one event's hits, connect radius neighbours, label edges; write the graph file.

    Returns (and, with ``metrics_file``, writes as JSON) the stage's edge metrics for the event.
    """
    start = time.perf_counter()
    hits = load_hits(features_file)
    model, _ = load_model(model_ckpt, "embedding", EmbeddingNet)
    _check_model_input(model.in_dim, hits, model_ckpt, features_file)
    graph = connect_hits(cfg, model, hits)
    save_event(graph, out_file)
    metrics = {
        "stage": "graph",
        "event_id": graph.event_id,
        **stage_edge_metrics(graph, evaluation_cuts(cfg), str(out_file)),
        "time_s": time.perf_counter() - start,
        "peak_rss_mb": peak_rss_mb(),
    }
    if metrics_file is not None:
        write_json_atomic(metrics_file, metrics)
    return metrics


def filter_scores(
    model: FilterNet, graph: EventGraph, chunk_edges: int, device: torch.device | str = "cpu"
) -> Tensor:
    """Filter scores ``[E]`` (float32, CPU) of an event's edges, ``chunk_edges`` at a time."""
    geometry = model.geometry(graph).to(device)
    model = model.to(device)
    scores = model.scores(graph.x.to(device), geometry, graph.edge_index.to(device), chunk_edges)
    return scores.float().cpu()


def filter_edges(cfg: Config, model: FilterNet, graph: EventGraph) -> tuple[EventGraph, Tensor]:
    """Score a graph's edges with the filter and keep those with score >= ``filter.cut``.

    The filter stage in memory. Returns the graph with ``edge_index``, ``y``, ``y_pid``
    restricted to the kept edges plus their ``scores``, and the scores ``[E]`` of all input edges.
    """
    device = torch.device(resolve_device(cfg.device))
    scores = filter_scores(model, graph, cfg.filter.chunk_edges, device)
    return graph.keep_edges(scores >= cfg.filter.cut, scores), scores


def filter_graph(
    cfg: Config,
    model_ckpt: str | os.PathLike[str],
    graph_file: str | os.PathLike[str],
    out_file: str | os.PathLike[str],
    metrics_file: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Score one event's edges with the filter and keep those with score >= ``filter.cut``.

    The output holds the graph file's contents with ``edge_index``, ``y``, ``y_pid`` restricted
    to the kept edges and their ``scores``. Returns (and optionally writes) the edge metrics;
    ``auc`` is the ROC AUC of the scores on all input edges against ``y``.
    """
    start = time.perf_counter()
    graph = load_graph(graph_file)
    model, _ = load_model(model_ckpt, "filter", FilterNet)
    _check_model_input(model.node_dim, graph, model_ckpt, graph_file)
    if model.cluster_direction and graph.cluster_eta is None:
        raise InputError(
            graph_file, f"has no cluster_eta, which the filter {model_ckpt} reads: rebuild it"
        )
    filtered, scores = filter_edges(cfg, model, graph)
    auc = roc_auc(scores, graph.y)
    save_event(filtered, out_file)
    metrics = {
        "stage": "filter",
        "event_id": graph.event_id,
        **stage_edge_metrics(filtered, evaluation_cuts(cfg), str(out_file)),
        "n_edges_in": graph.n_edges,
        "edge_reduction": graph.n_edges / max(filtered.n_edges, 1),
        "auc": auc,
        "time_s": time.perf_counter() - start,
        "peak_rss_mb": peak_rss_mb(),
    }
    if metrics_file is not None:
        write_json_atomic(metrics_file, metrics)
    return metrics


def existing_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Paths as ``Path`` objects, checked to exist (one clear error for the first missing one)."""
    out = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise InputError(path, "file does not exist")
        out.append(path)
    return out
