"""Edge scoring stage: the trained Interaction GNN scores every edge of a filtered event graph.

Also the edge-classification figures that training and scoring share. Free of Lightning so
per-event scoring jobs start fast.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import Tensor

from trackgnn.config import Config
from trackgnn.evaluation.metrics import roc_auc
from trackgnn.event_data import EventGraph, load_graph, save_event
from trackgnn.models.checkpoint import load_model, resolve_device
from trackgnn.models.interaction_gnn import InteractionGNN
from trackgnn.process import peak_rss_mb

KIND = "gnn"
#: Edges per chunk of the GNN's per-edge MLPs at inference (cache-sized on the CPU; the scores
#: do not depend on it).
INFERENCE_EDGE_CHUNK = 32768


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


def gnn_logits(model: InteractionGNN, graph: EventGraph) -> Tensor:
    """Edge logits ``[E]`` (on the model's device) of an event graph: scoring in memory."""
    device = next(model.parameters()).device
    batch = graph.to_batch().to(device)
    with torch.inference_mode():
        return model(batch.x, batch.edge_attr, batch.edge_index, INFERENCE_EDGE_CHUNK)


def score_edges(
    cfg: Config, model_ckpt: str | Path, graph_file: str | Path, out: str | Path
) -> dict:
    """Score every edge of a filtered event graph; save the graph with GNN ``scores``."""
    start = time.perf_counter()
    device = torch.device(resolve_device(cfg.device))
    model, _ = load_model(model_ckpt, KIND, InteractionGNN)
    model.to(device)
    graph = load_graph(graph_file)
    logits = gnn_logits(model, graph)
    scores = torch.sigmoid(logits.float()).cpu()
    save_event(graph.with_scores(scores), out)
    metrics: dict[str, float] = {
        "n_edges": float(len(scores)),
        "time_s": time.perf_counter() - start,
    }
    metrics.update(edge_classification_metrics(logits.cpu(), graph.y_pid.float()))
    metrics["peak_rss_mb"] = peak_rss_mb()
    return metrics
