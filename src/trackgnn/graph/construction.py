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
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from trackgnn.atomic import write_json_atomic
from trackgnn.config import Config
from trackgnn.errors import CheckpointError, InputError
from trackgnn.evaluation.matching import EvaluationCuts
from trackgnn.evaluation.metrics import aggregate_edge_metrics, edge_metrics, roc_auc
from trackgnn.graph.radius import radius_graph
from trackgnn.graph.truth import edge_labels, unique_truth_edges
from trackgnn.io import load_tensors, save_tensors
from trackgnn.models.checkpoint import load_model, resolve_device
from trackgnn.models.edges import geometry_tensor
from trackgnn.models.embedding import EmbeddingNet
from trackgnn.models.filter import FilterNet
from trackgnn.process import peak_rss_mb

#: Keys every features file holds (see trackgnn.features); graph files add GRAPH_KEYS.
FEATURE_KEYS = (
    "event_id",
    "hit_id",
    "x",
    "r",
    "phi",
    "z",
    "eta",
    "particle_id",
    "pt",
    "nhits",
    "truth_edges",
)
GRAPH_KEYS = ("edge_index", "y", "y_pid")


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
    graph: dict[str, Any], cuts: EvaluationCuts, source: str = "graph"
) -> dict[str, Any]:
    """:func:`trackgnn.evaluation.metrics.edge_metrics` of a graph plus all-particle efficiency.

    ``efficiency`` (from the evaluation module) counts signal truth-graph edges only;
    ``efficiency_all`` is the kept truth-graph edges over all truth-graph edges (``n_truth``).
    The graph holds each undirected edge once, so its kept truth-graph edges are ``y.sum()``.
    """
    without_scores = {k: v for k, v in graph.items() if k != "scores"}
    metrics = edge_metrics(without_scores, cuts=cuts, source=source)
    n_truth = int(unique_truth_edges(graph["truth_edges"], graph["x"].shape[0]).shape[1])
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


def check_event_tensors(data: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Raise InputError (naming ``path``) when per-hit tensors disagree in shape or range."""
    x = data["x"]
    if not torch.is_tensor(x) or x.ndim != 2 or not x.is_floating_point():
        raise InputError(path, "x must be a 2-D float tensor [N, F]")
    n_hits = x.shape[0]
    for key in ("hit_id", "r", "phi", "z", "eta", "particle_id", "pt", "nhits"):
        value = data[key]
        if not torch.is_tensor(value) or value.shape != (n_hits,):
            raise InputError(path, f"{key} must have shape [{n_hits}] like x")
    for key in ("truth_edges", *(("edge_index",) if "edge_index" in data else ())):
        edges = data[key]
        if not torch.is_tensor(edges) or edges.ndim != 2 or edges.shape[0] != 2:
            raise InputError(path, f"{key} must have shape [2, E]")
        if edges.dtype != torch.int64:
            raise InputError(path, f"{key} must be int64, not {edges.dtype}")
        if edges.numel() and (int(edges.min()) < 0 or int(edges.max()) >= n_hits):
            raise InputError(path, f"{key} refers to hits outside 0..{n_hits - 1}")
    if "edge_index" in data:
        n_edges = data["edge_index"].shape[1]
        for key in ("y", "y_pid", "scores"):
            if key in data and data[key].shape != (n_edges,):
                raise InputError(path, f"{key} must have shape [{n_edges}] like edge_index")


def _check_model_input(model_dim: int, data: dict[str, Any], ckpt: Any, path: Any) -> None:
    features = data["x"].shape[1]
    if features != model_dim:
        raise CheckpointError(
            f"{ckpt}: model expects {model_dim} hit features but {path} has {features}"
        )


def load_event(path: str | os.PathLike[str], graph: bool = False) -> dict[str, Any]:
    """Load and check a features file (or, with ``graph``, a graph file)."""
    required = FEATURE_KEYS + (GRAPH_KEYS if graph else ())
    data = load_tensors(path, required=required)
    check_event_tensors(data, path)
    return data


# ----------------------------------------------------------------------------- stages


def connect_hits(
    cfg: Config,
    model: EmbeddingNet,
    data: dict[str, Any],
    timings: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Embed an event's hits and connect radius neighbours: the graph-building stage in memory.

    Args:
        cfg: the config (``graph`` section and ``device``).
        model: the trained embedding network.
        data: the event's features (see :func:`trackgnn.features.build_features`).
        timings: if given, receives the seconds of ``embedding`` and of ``radius`` (the radius
            graph and its labels).
    Returns:
        ``data`` plus ``edge_index`` ``[2, E]`` (inner hit first) and its truth labels ``y``
        (truth-graph edge) and ``y_pid`` (same particle), all false without truth.
    """
    device = torch.device(resolve_device(cfg.device))
    start = time.perf_counter()
    with torch.no_grad():
        emb = model.to(device).embed(data["x"].to(device), cfg.graph.chunk_size)
        embedded = time.perf_counter()
        edge_index = radius_graph(
            emb,
            data["r"],
            cfg.graph.radius,
            cfg.graph.k_max,
            cfg.graph.chunk_size,
            cfg.graph.backend,
        ).cpu()
    del emb
    y, y_pid = edge_labels(edge_index, data["truth_edges"], data["particle_id"])
    graph = {**data, "edge_index": edge_index, "y": y, "y_pid": y_pid}
    graph.pop("scores", None)
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
    data = load_event(features_file)
    model, _ = load_model(model_ckpt, "embedding", EmbeddingNet)
    _check_model_input(model.in_dim, data, model_ckpt, features_file)
    graph = connect_hits(cfg, model, data)
    save_tensors(graph, out_file)
    metrics = {
        "stage": "graph",
        "event_id": int(data["event_id"]),
        **stage_edge_metrics(graph, evaluation_cuts(cfg), str(out_file)),
        "time_s": time.perf_counter() - start,
        "peak_rss_mb": peak_rss_mb(),
    }
    if metrics_file is not None:
        write_json_atomic(metrics_file, metrics)
    return metrics


def filter_scores(
    model: FilterNet, data: dict[str, Any], chunk_edges: int, device: torch.device | str = "cpu"
) -> Tensor:
    """Filter scores ``[E]`` (float32, CPU) of an event's edges, ``chunk_edges`` at a time."""
    geometry = geometry_tensor(data["r"], data["phi"], data["z"], data["eta"]).to(device)
    model = model.to(device)
    scores = model.scores(
        data["x"].to(device), geometry, data["edge_index"].to(device), chunk_edges
    )
    return scores.float().cpu()


def filter_edges(
    cfg: Config, model: FilterNet, graph: dict[str, Any]
) -> tuple[dict[str, Any], Tensor]:
    """Score a graph's edges with the filter and keep those with score >= ``filter.cut``.

    The filter stage in memory. Returns the graph with ``edge_index``, ``y``, ``y_pid``
    restricted to the kept edges plus their ``scores``, and the scores ``[E]`` of all input edges.
    """
    device = torch.device(resolve_device(cfg.device))
    scores = filter_scores(model, graph, cfg.filter.chunk_edges, device)
    keep = scores >= cfg.filter.cut
    filtered = {
        **graph,
        "edge_index": graph["edge_index"][:, keep],
        "y": graph["y"][keep],
        "y_pid": graph["y_pid"][keep],
        "scores": scores[keep],
    }
    return filtered, scores


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
    data = load_event(graph_file, graph=True)
    model, _ = load_model(model_ckpt, "filter", FilterNet)
    _check_model_input(model.node_dim, data, model_ckpt, graph_file)
    filtered, scores = filter_edges(cfg, model, data)
    auc = roc_auc(scores, data["y"])
    n_kept = filtered["edge_index"].shape[1]
    save_tensors(filtered, out_file)
    metrics = {
        "stage": "filter",
        "event_id": int(data["event_id"]),
        **stage_edge_metrics(filtered, evaluation_cuts(cfg), str(out_file)),
        "n_edges_in": int(data["edge_index"].shape[1]),
        "edge_reduction": data["edge_index"].shape[1] / max(n_kept, 1),
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
