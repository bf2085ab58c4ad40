"""Edge scoring stage: the trained Interaction GNN scores every edge of a filtered event graph.

Also what training and scoring share: reading an event graph into a :class:`GraphBatch` and the
edge-classification figures. Free of Lightning so per-event scoring jobs start fast.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from trackgnn.config import Config
from trackgnn.errors import InputError
from trackgnn.evaluation.metrics import roc_auc
from trackgnn.io import load_tensors, save_tensors
from trackgnn.models.checkpoint import load_model, resolve_device
from trackgnn.models.edges import hit_edge_features
from trackgnn.models.interaction_gnn import InteractionGNN
from trackgnn.process import peak_rss_mb

KIND = "gnn"
#: Edges per chunk of the GNN's per-edge MLPs at inference (cache-sized on the CPU; the scores
#: do not depend on it).
INFERENCE_EDGE_CHUNK = 32768
GRAPH_KEYS = ("x", "edge_index", "r", "phi", "z", "eta")


@dataclass
class GraphBatch:
    """What the GNN trains on: one event graph or a batch of ShaDow subgraphs."""

    x: Tensor
    edge_attr: Tensor
    edge_index: Tensor
    y: Tensor
    weight: Tensor
    n_samples: int  # roots (shadow) or graphs (full) in this batch on this rank

    def to(self, device: torch.device | str) -> GraphBatch:
        return GraphBatch(
            self.x.to(device),
            self.edge_attr.to(device),
            self.edge_index.to(device),
            self.y.to(device),
            self.weight.to(device),
            self.n_samples,
        )


def load_event_graph(path: str | Path) -> GraphBatch:
    """An event graph file (filter stage output) as a :class:`GraphBatch` with unit weights."""
    return event_graph(load_tensors(path, required=GRAPH_KEYS), path)


def event_graph(data: dict[str, Any], path: str | Path) -> GraphBatch:
    """The :class:`GraphBatch` of an event graph file's loaded tensors (``path`` for errors)."""
    ei = data["edge_index"]
    if ei.dim() != 2 or ei.shape[0] != 2:
        raise InputError(path, "edge_index must have shape [2, E]")
    n = data["x"].shape[0]
    if ei.numel() and (int(ei.min()) < 0 or int(ei.max()) >= n):
        raise InputError(path, f"edge_index refers to nodes outside 0..{n - 1}")
    y = data.get("y_pid", torch.zeros(ei.shape[1], dtype=torch.bool))
    return GraphBatch(
        x=data["x"].float(),
        edge_attr=hit_edge_features(data["r"], data["phi"], data["z"], data["eta"], ei).float(),
        edge_index=ei.long(),
        y=y.float(),
        weight=torch.ones(ei.shape[1]),
        n_samples=1,
    )


def edge_classification_metrics(logits: Tensor, y: Tensor, cut: float = 0.5) -> dict[str, float]:
    """Precision, recall (edges with score >= cut) and ROC AUC of edge scores."""
    scores = torch.sigmoid(logits.float())
    pred = scores >= cut
    truth = y > 0.5
    auc = roc_auc(scores, truth)
    tp = int((pred & truth).sum())
    n_pred, n_true = int(pred.sum()), int(truth.sum())
    return {
        "precision": tp / n_pred if n_pred else 0.0,
        "recall": tp / n_true if n_true else 0.0,
        "auc": float("nan") if auc is None else auc,
    }


def gnn_logits(model: InteractionGNN, data: dict[str, Any], path: str | Path) -> Tensor:
    """Edge logits ``[E]`` (on the model's device) of an event graph: the scoring stage in memory.

    ``data`` holds the graph's tensors (:data:`GRAPH_KEYS`); ``path`` names it in errors.
    """
    device = next(model.parameters()).device
    graph = event_graph(data, path).to(device)
    with torch.inference_mode():
        return model(graph.x, graph.edge_attr, graph.edge_index, INFERENCE_EDGE_CHUNK)


def score_edges(
    cfg: Config, model_ckpt: str | Path, graph_file: str | Path, out: str | Path
) -> dict:
    """Score every edge of a filtered event graph; save the graph with GNN ``scores``."""
    start = time.perf_counter()
    device = torch.device(resolve_device(cfg.device))
    model, _ = load_model(model_ckpt, KIND, InteractionGNN)
    model.to(device)
    data = load_tensors(graph_file, required=GRAPH_KEYS)
    logits = gnn_logits(model, data, graph_file)
    scores = torch.sigmoid(logits.float()).cpu()
    if "scores" in data:
        data["filter_scores"] = data["scores"]
    data["scores"] = scores
    save_tensors(data, out)
    metrics: dict[str, float] = {
        "n_edges": float(len(scores)),
        "time_s": time.perf_counter() - start,
    }
    if "y_pid" in data:
        metrics.update(edge_classification_metrics(logits.cpu(), data["y_pid"].float()))
    metrics["peak_rss_mb"] = peak_rss_mb()
    return metrics
