"""Metric-learning training of the embedding network (Lightning), one event per batch.

Loss (pairwise hinge, p = 2, margin ``m`` in embedding distance): a pair of hits at distance
``d`` pays ``d^2`` when it is a truth-graph edge and ``max(0, m - d)^2`` otherwise. This is the
convention of the later Exa.TrkX / GNN4ITk code (squared distance for positives, squared hinge on
the distance for negatives), so ``m`` and the graph radius are in the same units. The paper's
eq. 5 (``max(0, 1 - d^2)`` for negatives) is the same idea with the hinge on ``d^2``. Positives
and negatives are averaged separately and summed, so their balance does not depend on how many
random pairs are drawn. Each step's pairs: the event's truth edges, ``random_pairs * N`` random
pairs and, as hard negatives, each hit's ``knn_k`` nearest neighbours in the current embedding
(exact FAISS search); duplicates are merged. Truth edges of signal particles (pT above
``signal_pt`` and at least ``evaluation.min_hits`` hits) weigh ``signal_weight``. The pairs
of an event are mined once with the current model and split into ``steps_per_event`` shuffled
parts, one optimizer step each; the learning rate follows a one-cycle schedule.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from trackgnn.config import Config, EmbeddingConfig, GraphConfig, training_settings
from trackgnn.errors import TrackGNNError
from trackgnn.evaluation.matching import EvaluationCuts
from trackgnn.event_data import EventGraph, EventHits, load_graph, load_hits
from trackgnn.graph.construction import (
    existing_files,
    pooled_edge_metrics,
    signal_hits,
    stage_edge_metrics,
)
from trackgnn.graph.radius import knn, radius_graph
from trackgnn.graph.truth import edge_labels, truth_edge_mask, undirected_keys
from trackgnn.models.embedding import EmbeddingNet
from trackgnn.models.mlp import angle_columns
from trackgnn.training.checkpoint import (
    ResumableModule,
    input_fingerprint,
    resume_key,
)
from trackgnn.training.driver import MetricsSink, TrainedStage, train_stage
from trackgnn.training.schedule import one_cycle_optimization

SameParticle = Literal["negative", "ignore"]


class EventDataset(Dataset):
    """Per-event files as a dataset of checked :class:`~trackgnn.event_data.EventHits` (or, with
    ``graphs``, :class:`~trackgnn.event_data.EventGraph`), kept in memory once read."""

    def __init__(self, files: Sequence[str | os.PathLike[str]], graphs: bool = False) -> None:
        self.files = existing_files(files)
        if not self.files:
            raise TrackGNNError("no event files given (the split is empty)")
        self.graphs = graphs
        self._cache: dict[int, EventHits] = {}

    @property
    def feature_names(self) -> list[str] | None:
        """``feature_names`` of the first event (the names of the columns of ``x``)."""
        return self[0].feature_names

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> EventHits:
        if index not in self._cache:
            path = self.files[index]
            self._cache[index] = load_graph(path) if self.graphs else load_hits(path)
        return self._cache[index]


def event_loader(dataset: EventDataset, shuffle: bool) -> DataLoader:
    """One event per batch; the shuffle order comes from torch's (seeded, checkpointed) RNG.

    An unshuffled (validation) loader draws its iterator seeds from a generator of its own, so
    that how often it runs leaves the training's random stream, and so its weights, unchanged.
    """
    generator = None if shuffle else torch.Generator()
    return DataLoader(dataset, batch_size=None, shuffle=shuffle, num_workers=0, generator=generator)


def pairwise_hinge_loss(
    emb_a: Tensor, emb_b: Tensor, y: Tensor, margin: float, weight: Tensor | None = None
) -> Tensor:
    """Hinge loss of embedded pairs: ``d^2`` for positives, ``max(0, margin - d)^2`` otherwise.

    Weighted means over the positive and over the negative pairs, summed; an empty class adds 0.
    """
    y = y.bool()
    if weight is None:
        weight = torch.ones_like(y, dtype=emb_a.dtype)
    dist2 = (emb_a - emb_b).square().sum(-1)
    loss = dist2.new_zeros(())
    if y.any():
        loss = loss + (weight[y] * dist2[y]).sum() / weight[y].sum()
    negative = ~y
    if negative.any():
        # The epsilon keeps the gradient of sqrt finite for coincident points.
        dist = torch.sqrt(dist2[negative] + 1e-12)
        hinge = torch.clamp(margin - dist, min=0).square()
        loss = loss + (weight[negative] * hinge).sum() / weight[negative].sum()
    return loss


def training_pairs(
    emb: Tensor,
    truth_edges: Tensor,
    n_random: int,
    knn_k: int,
    chunk_size: int = 100_000,
    backend: Literal["auto", "kdtree", "faiss", "torch"] = "auto",
) -> Tensor:
    """Unique unordered hit pairs ``[2, P]``: truth edges, random pairs, kNN hard negatives."""
    n_hits = emb.shape[0]
    device = emb.device
    parts = [truth_edges.to(device)]
    if n_random > 0:
        parts.append(torch.randint(0, n_hits, (2, n_random), device=device))
    if knn_k > 0 and n_hits > 1:
        neighbours = knn(emb.detach(), knn_k + 1, chunk_size, backend)
        queries = torch.arange(n_hits, device=device)[:, None].expand_as(neighbours)
        parts.append(torch.stack([queries.reshape(-1), neighbours.reshape(-1)]))
    pairs = torch.cat(parts, dim=1)
    pairs = pairs[:, (pairs[0] != pairs[1]) & (pairs[1] >= 0)]
    keys = torch.unique(undirected_keys(pairs, n_hits))
    return torch.stack([keys // n_hits, keys % n_hits])


class EmbeddingModule(ResumableModule):
    """Lightning module training :class:`EmbeddingNet` with the pairwise hinge loss."""

    def __init__(
        self,
        model: dict[str, Any],
        settings: EmbeddingConfig,
        graph: GraphConfig,
        cuts: EvaluationCuts,
        total_steps: int,
        same_particle: SameParticle = "negative",
        resume_key: str = "",
    ) -> None:
        """Args:
        model: :class:`EmbeddingNet`'s constructor arguments.
        settings: the ``embedding`` section (loss, pair mining, optimizer).
        graph: the ``graph`` section (the validation graphs' radius search).
        cuts: the evaluation cuts (signal particles of the loss weight and the validation).
        total_steps: optimizer steps of the whole training (the one-cycle schedule's length).
        same_particle: pairs of one particle that are not truth-graph neighbours count as
            negatives (``negative``) or are left out of the loss (``ignore``).
        resume_key: the key a killed training resumes under.
        """
        super().__init__()
        # The checkpoint records plain values (loadable with weights_only); the module reads
        # the typed sections.
        train = {
            "embedding": dataclasses.asdict(settings),
            "graph": dataclasses.asdict(graph),
            "cuts": dataclasses.asdict(cuts),
            "total_steps": total_steps,
            "same_particle": same_particle,
        }
        self.save_hyperparameters(
            {"model_kind": "embedding", "model": model, "train": train, "resume_key": resume_key}
        )
        self.settings, self.graph_settings, self.cuts = settings, graph, cuts
        self.total_steps, self.same_particle = total_steps, same_particle
        self.model = EmbeddingNet(**model)
        # steps_per_event optimizer steps per event (see training_step).
        self.automatic_optimization = False
        self._val_metrics: list[dict[str, Any]] = []

    def training_step(self, batch: EventHits, batch_idx: int) -> Tensor:
        settings, graph = self.settings, self.graph_settings
        x = batch.x
        n_hits = x.shape[0]
        with torch.no_grad():
            emb = self.model(x)  # for mining only; each step embeds its own hits with gradients
        pairs = training_pairs(
            emb,
            batch.truth_edges,
            int(settings.random_pairs * n_hits),
            settings.knn_k,
            graph.chunk_size,
            graph.backend,
        )
        y = truth_edge_mask(pairs, batch.truth_edges, n_hits)
        if self.same_particle == "ignore":
            pid = batch.particle_id
            same = (pid[pairs[0]] == pid[pairs[1]]) & (pid[pairs[0]] != 0)
            pairs, y = pairs[:, y | ~same], y[y | ~same]
        signal = signal_hits(
            batch.particle_id,
            batch.pt,
            batch.nhits,
            settings.signal_pt,
            self.cuts.min_hits,
        )
        weight = torch.where(
            y & signal[pairs[0]] & signal[pairs[1]], float(settings.signal_weight), 1.0
        ).to(emb.dtype)
        order = torch.randperm(pairs.shape[1], device=pairs.device)

        def loss_of(part: Tensor) -> Tensor:
            hits, local = torch.unique(pairs[:, part], return_inverse=True)
            emb_part = self.model(x[hits])  # rows are independent: the same as x's rows
            return pairwise_hinge_loss(
                emb_part[local[0]], emb_part[local[1]], y[part], settings.margin, weight[part]
            )

        return self.optimize_parts(order.tensor_split(settings.steps_per_event), loss_of)

    def validation_step(self, batch: EventHits, batch_idx: int) -> None:
        graph_cfg = self.graph_settings
        emb = self.model(batch.x)
        edge_index = radius_graph(
            emb,
            batch.r,
            graph_cfg.radius,
            graph_cfg.k_max,
            graph_cfg.chunk_size,
            graph_cfg.backend,
        )
        y, y_pid = edge_labels(edge_index, batch.truth_edges, batch.particle_id)
        graph = EventGraph.from_hits(batch.to("cpu"), edge_index.cpu(), y.cpu(), y_pid.cpu())
        self._val_metrics.append(stage_edge_metrics(graph, self.cuts, "validation event"))

    def on_validation_epoch_end(self) -> None:
        if not self._val_metrics:
            return
        pooled = pooled_edge_metrics(self._val_metrics)
        self._val_metrics.clear()
        for name in ("efficiency", "efficiency_all", "purity", "purity_pid", "edges_per_hit"):
            self.log(f"val_{name}", pooled[name], batch_size=1)

    def configure_optimizers(self) -> dict[str, Any]:
        return one_cycle_optimization(
            torch.optim.Adam(self.model.parameters(), lr=self.settings.lr), self.total_steps
        )


def train_embedding(
    cfg: Config,
    train_files: Sequence[str | os.PathLike[str]],
    val_files: Sequence[str | os.PathLike[str]],
    ckpt_path: str | os.PathLike[str],
    log: MetricsSink | None = None,
    same_particle: SameParticle = "negative",
) -> TrainedStage:
    """Train the embedding on features files; write ``ckpt_path`` (resumes a killed run).

    Args:
        cfg: config; uses ``embedding``, ``graph`` (validation graphs), ``evaluation.min_hits``,
            ``seed`` and ``device``.
        train_files, val_files: per-event features files.
        ckpt_path: final checkpoint; ``<stem>-last.ckpt`` beside it is the per-epoch one.
        log: called as ``log(metrics, epoch)`` after each epoch (e.g. for MLflow).
        same_particle: pairs of one particle that are not truth-graph neighbours count as
            negatives (the paper) or are left out of the loss.
    Returns:
        The trainer, the last epoch's logged metrics (``train_loss``, ``val_efficiency``,
        ...) and the number of parameters.
    """
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    train_set = EventDataset(train_files)
    val_set = EventDataset(val_files)
    in_dim = int(train_set[0].x.shape[1])
    emb = cfg.embedding
    model = {
        "in_dim": in_dim,
        "angle_columns": angle_columns(train_set.feature_names),
        "emb_dim": emb.emb_dim,
        "hidden": emb.hidden,
        "n_layers": emb.n_layers,
        "activation": emb.activation,
        "layer_norm": emb.layer_norm,
    }
    # A rerun with the same key continues the interrupted training: the declared settings
    # (the epoch count among them: it sets the one-cycle schedule), the model's input columns
    # and the caller's same-particle choice, and the training events.
    settings = training_settings(cfg, "embedding")
    files = input_fingerprint(train_set.files)
    key = resume_key("embedding", model, settings, same_particle, files)
    module = EmbeddingModule(
        model,
        emb,
        cfg.graph,
        EvaluationCuts.from_config(cfg),
        emb.epochs * len(train_set) * emb.steps_per_event,
        same_particle,
        key,
    )
    return train_stage(
        module,
        "embedding",
        train_loader=event_loader(train_set, shuffle=True),
        val_loader=event_loader(val_set, shuffle=False),
        epochs=emb.epochs,
        val_every=emb.val_every,
        device=cfg.device,
        ckpt_path=ckpt_path,
        log=log,
    )
