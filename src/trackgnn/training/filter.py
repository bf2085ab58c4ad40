"""Training of the edge filter (Lightning), one event graph per batch.

For each event the current model scores every fake edge; the event's edges for training are all
its truth-graph edges and, per true edge, ``negative_ratio`` hard negatives (the fake edges the
model scores highest) and as many easy negatives (fake edges drawn uniformly), as in the paper.
These are shuffled and split into optimizer steps of ``batch_edges`` edges, so the cost of
mining (one inference pass over the event) is shared by many steps; the loss is binary
cross-entropy against ``y``. The learning rate follows a one-cycle schedule over all steps.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from trackgnn.config import Config, FilterConfig, training_settings
from trackgnn.evaluation.matching import EvaluationCuts
from trackgnn.evaluation.metrics import roc_auc
from trackgnn.event_data import EventGraph
from trackgnn.graph.construction import pooled_edge_metrics, stage_edge_metrics
from trackgnn.models.filter import FilterNet
from trackgnn.models.mlp import angle_columns
from trackgnn.training.checkpoint import (
    ResumableModule,
    input_fingerprint,
    resume_key,
)
from trackgnn.training.driver import MetricsSink, TrainedStage, train_stage
from trackgnn.training.embedding import EventDataset, event_loader
from trackgnn.training.schedule import one_cycle_optimization


def steps_per_event(n_true: int, n_fake: int, negative_ratio: float, batch_edges: int) -> int:
    """Optimizer steps one event of ``n_true`` true and ``n_fake`` fake edges gives."""
    n_negative = min(math.ceil(negative_ratio * max(n_true, 1)), n_fake)
    return max(1, math.ceil((n_true + 2 * n_negative) / batch_edges))


def negative_candidates(y: Tensor, y_pid: Tensor, same_particle_negatives: bool) -> Tensor:
    """Bool ``[E]``: the edges negatives are drawn from (fake, and different particles unless
    ``same_particle_negatives``)."""
    return ~y if same_particle_negatives else ~(y | y_pid)


def select_training_edges(
    y: Tensor, fake_scores: Tensor, negative_ratio: float, candidates: Tensor | None = None
) -> Tensor:
    """Indices of the edges of one event's steps: all true, then hard, then easy negatives.

    Args:
        y: ``[E]`` truth of every edge.
        fake_scores: ``[n_candidates]`` current scores of the negative candidates (in edge
            order).
        negative_ratio: hard negatives, and again easy negatives, per true edge (at least one
            of each when the event has no true edge).
        candidates: bool ``[E]`` of the edges negatives may be drawn from; default every fake.
    """
    true_idx = torch.nonzero(y, as_tuple=True)[0]
    fake_idx = torch.nonzero(~y if candidates is None else candidates, as_tuple=True)[0]
    n_negative = min(math.ceil(negative_ratio * max(len(true_idx), 1)), len(fake_idx))
    if n_negative == 0:
        return true_idx
    hard = fake_idx[torch.topk(fake_scores, n_negative).indices]
    easy = fake_idx[torch.randint(0, len(fake_idx), (n_negative,), device=y.device)]
    return torch.cat([true_idx, hard, easy])


class FilterModule(ResumableModule):
    """Lightning module training :class:`FilterNet` with hard + easy negative sampling."""

    def __init__(
        self,
        model: dict[str, Any],
        settings: FilterConfig,
        cuts: EvaluationCuts,
        total_steps: int,
        resume_key: str = "",
    ) -> None:
        """Args:
        model: :class:`FilterNet`'s constructor arguments.
        settings: the ``filter`` section (negatives, steps, optimizer, validation cut).
        cuts: the evaluation cuts (signal edges of the validation efficiency).
        total_steps: optimizer steps of the whole training (the one-cycle schedule's length).
        resume_key: the key a killed training resumes under.
        """
        super().__init__()
        # The checkpoint records plain values (loadable with weights_only).
        train = {
            "filter": dataclasses.asdict(settings),
            "cuts": dataclasses.asdict(cuts),
            "total_steps": total_steps,
        }
        self.save_hyperparameters(
            {"model_kind": "filter", "model": model, "train": train, "resume_key": resume_key}
        )
        self.settings, self.cuts, self.total_steps = settings, cuts, total_steps
        self.model = FilterNet(**model)
        # Several optimizer steps per event (see the module docstring).
        self.automatic_optimization = False
        self._val_metrics: list[dict[str, Any]] = []
        self._val_edges_in = 0

    def training_step(self, batch: EventGraph, batch_idx: int) -> Tensor | None:
        settings = self.settings
        geometry = self.model.geometry(batch)
        edge_index, y = batch.edge_index, batch.y.bool()
        candidates = negative_candidates(y, batch.y_pid.bool(), settings.same_particle_negatives)
        fake_scores = self.model.scores(
            batch.x, geometry, edge_index[:, candidates], settings.chunk_edges
        )
        chosen = select_training_edges(y, fake_scores, settings.negative_ratio, candidates)
        if len(chosen) == 0:
            return None  # an event without edges teaches nothing
        chosen = chosen[torch.randperm(len(chosen), device=chosen.device)]

        def loss_of(step_edges: Tensor) -> Tensor:
            logits = self.model(batch.x, geometry, edge_index[:, step_edges])
            return F.binary_cross_entropy_with_logits(logits, y[step_edges].to(logits.dtype))

        return self.optimize_parts(chosen.split(settings.batch_edges), loss_of)

    def validation_step(self, batch: EventGraph, batch_idx: int) -> None:
        settings = self.settings
        geometry = self.model.geometry(batch)
        edge_index, y = batch.edge_index, batch.y.bool()
        scores = self.model.scores(batch.x, geometry, edge_index, settings.chunk_edges)
        graph = batch.to("cpu").keep_edges((scores >= settings.cut).cpu(), scores.float().cpu())
        metrics = stage_edge_metrics(graph, self.cuts, "validation event")
        metrics["auc"] = roc_auc(scores.cpu(), y.cpu())
        self._val_metrics.append(metrics)
        self._val_edges_in += edge_index.shape[1]

    def on_validation_epoch_end(self) -> None:
        if not self._val_metrics:
            return
        pooled = pooled_edge_metrics(self._val_metrics)
        kept = sum(event["n_edges"] for event in self._val_metrics)
        pooled["edge_reduction"] = self._val_edges_in / max(kept, 1)
        self._val_metrics.clear()
        self._val_edges_in = 0
        for name, value in pooled.items():
            self.log(f"val_{name}", value, batch_size=1)

    def configure_optimizers(self) -> dict[str, Any]:
        return one_cycle_optimization(
            torch.optim.Adam(self.model.parameters(), lr=self.settings.lr), self.total_steps
        )


def train_filter(
    cfg: Config,
    train_graph_files: Sequence[str | os.PathLike[str]],
    val_graph_files: Sequence[str | os.PathLike[str]],
    ckpt_path: str | os.PathLike[str],
    log: MetricsSink | None = None,
) -> TrainedStage:
    """Train the filter on graph files; write ``ckpt_path`` (resumes a killed run).

    Uses ``filter``, ``evaluation.signal_pt``/``min_hits`` (validation signal efficiency),
    ``seed`` and ``device``. Returns the trainer, the last epoch's logged metrics and the
    number of parameters.
    """
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    train_set = EventDataset(train_graph_files, graphs=True)
    val_set = EventDataset(val_graph_files, graphs=True)
    flt = cfg.filter
    model = {
        "node_dim": int(train_set[0].x.shape[1]),
        "angle_columns": angle_columns(train_set.feature_names),
        "hidden": flt.hidden,
        "n_layers": flt.n_layers,
        "activation": flt.activation,
        "layer_norm": flt.layer_norm,
        "cluster_direction": flt.cluster_direction,
    }
    steps_per_epoch = 0
    for event in train_set:
        y = event.y.bool()
        n_candidates = int(
            negative_candidates(y, event.y_pid.bool(), flt.same_particle_negatives).sum()
        )
        steps_per_epoch += steps_per_event(
            int(y.sum()), n_candidates, flt.negative_ratio, flt.batch_edges
        )
    # The declared settings key a resume: the epoch count among them sets the one-cycle
    # schedule's length, so a 40-epoch training must not continue a 2-epoch one.
    settings = training_settings(cfg, "filter")
    files = input_fingerprint(train_set.files)
    key = resume_key("filter", model, settings, files)
    module = FilterModule(
        model, flt, EvaluationCuts.from_config(cfg), flt.epochs * steps_per_epoch, key
    )
    return train_stage(
        module,
        "filter",
        train_loader=event_loader(train_set, shuffle=True),
        val_loader=event_loader(val_set, shuffle=False),
        epochs=flt.epochs,
        val_every=flt.val_every,
        device=cfg.device,
        ckpt_path=ckpt_path,
        log=log,
    )
