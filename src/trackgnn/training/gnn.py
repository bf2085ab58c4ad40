"""Interaction GNN training (full graphs or ShaDow minibatches, data-parallel) and edge scoring.

Training modes:

* ``full``: one event graph per optimizer step; with P ranks each rank takes every P-th event of
  the epoch's shuffled event order and gradients are averaged.
* ``shadow``: the training events are joined into one disjoint-union graph (:func:`union_graph`,
  over :func:`trackgnn.graph.csr.concat_graphs`), so a minibatch mixes roots (and subgraphs)
  from all events. Every vertex with at least one edge is a root once per epoch (or
  ``roots_per_epoch`` of them, drawn afresh each epoch, uniformly without replacement), in a
  seeded shuffled order (:func:`trackgnn.graph.shadow.draw_roots`); each step takes the next
  ``batch_size`` roots (global), split in P shares differing by at most one root; the loss is
  over all induced edges of the sampled subgraphs, with edges incident to a root weighted by
  ``root_weight``.

Any world size takes every event (or root) once per epoch; where the data does not split evenly,
ranks left without any in an epoch's last step train on a zero-weight stand-in, and the log says
so. Validation figures are computed over all validation events, identically on every rank.

The label is ``y_pid`` (both hits from the same particle): track building joins hits by connected
components, for which any same-particle edge is right.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from trackgnn.config import Config, training_settings
from trackgnn.errors import TrackGNNError
from trackgnn.graph.csr import concat_graphs
from trackgnn.io import load_tensors
from trackgnn.models.interaction_gnn import InteractionGNN
from trackgnn.models.mlp import angle_columns
from trackgnn.process import peak_rss_mb
from trackgnn.scoring import (
    GRAPH_KEYS,
    KIND,
    GraphBatch,
    edge_classification_metrics,
    event_graph,
    load_event_graph,
)
from trackgnn.training.checkpoint import (
    EpochReport,
    LastCheckpoint,
    ResumableModule,
    find_resume_checkpoint,
    input_fingerprint,
    last_checkpoint_path,
    make_trainer,
    read_checkpoint,
    resolve_device,
    resume_key,
    save_checkpoint_atomic,
)
from trackgnn.training.distributed import (
    gradient_sync_stats,
    is_rank_zero,
    launch_rank,
    trainer_kwargs,
)
from trackgnn.training.schedule import one_cycle_optimization


def union_graph(graphs: list[GraphBatch]) -> GraphBatch:
    """The disjoint union of event graphs with their features, labels and weights.

    The edges are joined by :func:`trackgnn.graph.csr.concat_graphs` (node ids offset event by
    event); node and edge tensors are concatenated in the same order, so they line up.

    Raises:
        TrackGNNError: no graphs, or an invalid edge list.
    """
    union = concat_graphs([(g.edge_index, int(g.x.shape[0])) for g in graphs])
    return GraphBatch(
        x=torch.cat([g.x for g in graphs]),
        edge_attr=torch.cat([g.edge_attr for g in graphs]),
        edge_index=union.edge_index,
        y=torch.cat([g.y for g in graphs]),
        weight=torch.cat([g.weight for g in graphs]),
        n_samples=len(graphs),
    )


def split_phi_sectors(graph: GraphBatch, phi: Tensor, n_sectors: int) -> list[GraphBatch]:
    """The graph's edges in ``n_sectors`` equal azimuthal sectors, by the phi of the inner hit.

    Each sector is a graph of its edges and the nodes they touch (renumbered). Tracks are local
    in phi, so a sector is a natural minibatch: the same edges per epoch as whole events, but
    ``n_sectors`` times as many optimizer steps (``bench/shadow_vs_full.py``: validation AUC 0.87
    instead of 0.79 after 3 epochs with 16 sectors on the default run's filtered graphs).
    """
    if n_sectors == 1:
        return [graph]
    src = graph.edge_index[0]
    sector = ((phi[src] + torch.pi) / (2 * torch.pi) * n_sectors).long().clamp(0, n_sectors - 1)
    parts = []
    for k in range(n_sectors):
        edges = torch.nonzero(sector == k).flatten()
        if len(edges) == 0:
            continue
        nodes, local = torch.unique(graph.edge_index[:, edges], return_inverse=True)
        parts.append(
            GraphBatch(
                x=graph.x[nodes],
                edge_attr=graph.edge_attr[edges],
                edge_index=local.view(2, -1),
                y=graph.y[edges],
                weight=graph.weight[edges],
                n_samples=1,
            )
        )
    return parts


class _Timer:
    """Accumulates seconds spent in sampling during an epoch."""

    def __init__(self) -> None:
        self.sampling_s = 0.0


def stand_in_batch(graph: GraphBatch) -> GraphBatch:
    """A one-edge graph of zero weight: the step of a rank left without data.

    Every rank must take the same number of steps (each step's gradient all-reduce needs all of
    them); a rank whose share of the epoch ran out steps on this, which adds nothing to the
    gradient, instead of the other ranks' data being dropped.
    """
    ends = graph.edge_index[:, :1]
    nodes, local = torch.unique(ends, return_inverse=True)
    return GraphBatch(
        x=graph.x[nodes],
        edge_attr=graph.edge_attr[:1],
        edge_index=local.view(2, 1),
        y=graph.y[:1],
        weight=torch.zeros(1),
        n_samples=0,
    )


class FullGraphStream(IterableDataset):
    """Each epoch: the events in a seeded shuffled order, every ``world_size``-th for this rank.

    Every event is trained on once per epoch. When the events do not split evenly, the ranks left
    without one in the last step step on :func:`stand_in_batch` (see :meth:`imbalance`).
    """

    def __init__(self, graphs: list[GraphBatch], seed: int, rank: int, world_size: int) -> None:
        self.graphs, self.seed, self.rank, self.world_size = graphs, seed, rank, world_size
        self.epoch = 0
        self.timer = _Timer()
        self.stand_in = stand_in_batch(graphs[0]) if graphs else None

    def __len__(self) -> int:
        return math.ceil(len(self.graphs) / self.world_size)

    def imbalance(self) -> str | None:
        """A sentence on the uneven last step, or None when every step is full on every rank."""
        rest = len(self.graphs) % self.world_size
        if not rest:
            return None
        return (
            f"{len(self.graphs)} training graphs over {self.world_size} ranks: the last step of "
            f"each epoch trains on {rest}, {self.world_size - rest} rank(s) step on an empty "
            "stand-in (no graph is dropped)"
        )

    def __iter__(self) -> Iterator[GraphBatch]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.graphs), generator=gen)
        mine = order[self.rank :: self.world_size]
        yield from (self.graphs[int(i)] for i in mine)
        for _ in range(len(self) - len(mine)):
            yield self.stand_in


def rank_share(batch: Tensor, rank: int, world: int) -> Tensor:
    """This rank's part of a global batch: contiguous, sizes differing by at most one."""
    return torch.tensor_split(batch, world)[rank]


class ShadowStream(IterableDataset):
    """Each epoch: shuffled roots, ``batch_size`` per global step, this rank's share sampled.

    An epoch's roots are the first ``roots_per_epoch`` of a fresh random permutation of the
    vertices with an edge: a uniform draw without replacement, so every vertex is equally likely
    to be a root and none is a root twice in an epoch (all of them once when it is unset).
    Every drawn root is trained on once: a step's roots are split in shares differing by at
    most one root (:func:`rank_share`); in a last step with fewer roots than ranks, the ranks
    without a root step on :func:`stand_in_batch`. The sampler draws ``k`` minibatches per call
    (the bulk sampler's stacked problem).
    """

    def __init__(self, graph: GraphBatch, cfg: Config, device: torch.device, rank: int, world: int):
        from trackgnn.graph.csr import build_sampling_graph
        from trackgnn.graph.shadow import make_sampler

        sc = cfg.gnn.shadow
        self.graph, self.seed, self.rank, self.world = graph, cfg.seed, rank, world
        self.batch_size, self.k = sc.batch_size, sc.k
        self.root_weight = sc.root_weight
        n = graph.x.shape[0]
        degree = torch.bincount(graph.edge_index.flatten(), minlength=n)
        # Isolated vertices would give empty subgraphs: no edges, nothing to learn.
        self.roots = torch.nonzero(degree > 0).flatten()
        self.roots_per_epoch = min(sc.roots_per_epoch or len(self.roots), len(self.roots))
        sampling_graph = build_sampling_graph(graph.edge_index, n)
        self.sampler = make_sampler(
            sc.sampler,
            sampling_graph,
            depth=sc.depth,
            fanout=sc.fanout,
            batch_size=math.ceil(sc.batch_size / world),
            k=sc.k,
            device=device,
        )
        self.device = device
        self.epoch = 0
        self.timer = _Timer()
        self.stand_in = stand_in_batch(graph) if graph.edge_index.shape[1] else None

    def __len__(self) -> int:
        return math.ceil(self.roots_per_epoch / self.batch_size)

    def imbalance(self) -> str | None:
        """A sentence on ranks without roots in the last step, or None when there are none."""
        if not len(self.roots):
            return None
        if self.batch_size < self.world:
            return (
                f"ShaDow: a global batch of {self.batch_size} roots leaves "
                f"{self.world - self.batch_size} of {self.world} ranks on an empty stand-in "
                "in every step"
            )
        rest = self.roots_per_epoch % self.batch_size or self.batch_size
        if rest >= self.world:
            return None
        return (
            f"ShaDow: the last step of each epoch has {rest} root(s) for {self.world} ranks; "
            f"{self.world - rest} rank(s) step on an empty stand-in (no root is dropped)"
        )

    def epoch_roots(self) -> Tensor:
        """This epoch's roots in training order (the same on every rank): a seeded uniform draw
        of ``roots_per_epoch`` vertices without replacement, fresh each epoch
        (:func:`trackgnn.graph.shadow.draw_roots`)."""
        from trackgnn.graph.shadow import draw_roots

        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return draw_roots(self.roots, self.roots_per_epoch, gen)

    def _rank_roots(self, order: Tensor, step: int) -> Tensor:
        batch = order[step * self.batch_size : (step + 1) * self.batch_size]
        return rank_share(batch, self.rank, self.world)

    def __iter__(self) -> Iterator[GraphBatch]:
        order = self.epoch_roots()
        sample_gen = torch.Generator(device=self.device).manual_seed(
            (self.seed * 1_000_003 + self.epoch) * 4099 + self.rank
        )
        steps = len(self)
        for first in range(0, steps, self.k):
            start = time.perf_counter()
            chunk = [self._rank_roots(order, s) for s in range(first, min(first + self.k, steps))]
            # A rank's share runs empty only in the epoch's last step (or in every step if the
            # batch has fewer roots than ranks), so the empty shares come last.
            real = [c for c in chunk if len(c)]
            if all(len(c) == self.sampler.batch_size for c in real[:-1]):
                # One stacked problem of k minibatches (the bulk sampler's point).
                subgraphs = (
                    self.sampler.sample(torch.cat(real).to(self.device), sample_gen) if real else []
                )
            else:  # uneven shares (batch_size not divisible by world size): one call per step
                subgraphs = [
                    sg for c in real for sg in self.sampler.sample(c.to(self.device), sample_gen)
                ]
            batches = [self._gather(sg, len(c)) for sg, c in zip(subgraphs, real, strict=True)]
            batches += [self.stand_in] * (len(chunk) - len(real))
            self.timer.sampling_s += time.perf_counter() - start
            yield from batches

    def _gather(self, sg: Any, n_roots: int) -> GraphBatch:
        g = self.graph
        node_ids, edge_ids = sg.node_ids.cpu(), sg.edge_ids.cpu()
        weight = torch.ones(len(edge_ids))
        if self.root_weight != 1.0:
            weight[sg.root_edge_mask.cpu()] = self.root_weight
        return GraphBatch(
            x=g.x[node_ids],
            edge_attr=g.edge_attr[edge_ids],
            edge_index=sg.edge_index.cpu(),
            y=g.y[edge_ids],
            weight=weight,
            n_samples=n_roots,
        )


class EpochStats(pl.Callback):
    """Per-epoch scaling figures: epoch, sampling, step and all-reduce time, samples/s, memory.

    A callback (listed before the epoch report) so the figures are logged before they are printed.
    """

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stream = trainer.train_dataloader.dataset
        stream.epoch = trainer.current_epoch
        stream.timer.sampling_s = 0.0
        gradient_sync_stats(trainer).reset()
        self._epoch_start = time.perf_counter()
        self._step_s, self._samples = 0.0, 0
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: Any, batch: Any, idx: int
    ) -> None:
        self._step_start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int
    ) -> None:
        self._step_s += time.perf_counter() - self._step_start
        self._samples += batch.n_samples

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stream = trainer.train_dataloader.dataset
        epoch_s = time.perf_counter() - self._epoch_start
        world = trainer.world_size
        sync = gradient_sync_stats(trainer)
        metrics = {
            "epoch_time_s": epoch_s,
            "sampling_time_s": stream.timer.sampling_s,
            "step_time_s": self._step_s,
            "allreduce_ms": sync.mean_ms,
            "allreduce_calls_per_step": sync.allreduce_calls / max(sync.syncs, 1),
            "samples_per_s": self._samples * world / max(epoch_s, 1e-9),
            "peak_rss_mb": peak_rss_mb(),
            "world_size": float(world),
        }
        if torch.cuda.is_available():
            metrics["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        for name, value in metrics.items():
            pl_module.log(name, float(value), on_epoch=True, rank_zero_only=True)
        # Metrics logged in this hook reach callback_metrics only after all epoch-end hooks;
        # put them there now so the epoch report (next callback) prints and logs this epoch's.
        trainer.callback_metrics.update({k: torch.tensor(float(v)) for k, v in metrics.items()})


class GNNModule(ResumableModule):
    """Lightning module of the edge-classifying Interaction GNN, for every training mode."""

    def __init__(
        self,
        model: dict[str, Any],
        lr: float,
        pos_weight: float,
        compile: bool,
        mode: str,
        resume_key: str,
        total_steps: int = 0,
        model_kind: str = KIND,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = InteractionGNN(**model)
        self._forward = torch.compile(self.model, dynamic=True) if compile else self.model
        self._val: list[tuple[Tensor, Tensor, Tensor]] = []

    def forward(self, batch: GraphBatch) -> Tensor:
        return self._forward(batch.x, batch.edge_attr, batch.edge_index)

    def _loss(self, logits: Tensor, batch: GraphBatch) -> Tensor:
        pos_weight = torch.tensor(self.hparams["pos_weight"], device=logits.device)
        losses = F.binary_cross_entropy_with_logits(
            logits.float(), batch.y, pos_weight=pos_weight, reduction="none"
        )
        return (losses * batch.weight).sum() / batch.weight.sum().clamp_min(1e-12)

    def training_step(self, batch: GraphBatch, batch_idx: int) -> Tensor:
        loss = self._loss(self(batch), batch)
        if batch.n_samples:  # not a stand-in step (zero weight, zero loss)
            self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=batch.n_samples)
        return loss

    def validation_step(self, batch: GraphBatch, batch_idx: int) -> None:
        if batch.n_samples == 0:  # a rank without validation events of its own (see below)
            return
        logits = self(batch).detach()
        loss = self._loss(logits, batch)
        self._val.append((logits.float().cpu(), batch.y.cpu(), loss.float().cpu()))

    def on_validation_epoch_end(self) -> None:
        """Loss, precision, recall and AUC over all validation events, identical on every rank.

        Each rank scored its share (:func:`validation_loader`); the shares are gathered and put
        back in event order, so the figures are those of one process scoring every event.
        """
        local, self._val = self._val, []
        events = local
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            shares: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(shares, local)
            events = interleave_shards(shares)
        if not events:
            return
        logits = torch.cat([e[0] for e in events])
        y = torch.cat([e[1] for e in events])
        # The mean of per-event losses, as one process logging each event's loss would get.
        self.log("val_loss", torch.stack([e[2] for e in events]).mean().item())
        for name, value in edge_classification_metrics(logits, y).items():
            self.log(f"val_{name}", value)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams["lr"])
        return one_cycle_optimization(optimizer, self.hparams["total_steps"])


def validation_loader(graphs: Sequence[GraphBatch], rank: int, world: int) -> DataLoader:
    """This rank's validation events: every ``world``-th, from the ``rank``-th.

    A rank left without events (fewer events than ranks) gets one marked ``n_samples = 0``,
    which it runs (every rank takes part in the same validation loop) but does not count.
    :func:`interleave_shards` undoes the split.
    """
    share = list(graphs[rank::world])
    if not share and graphs:
        share = [replace(graphs[0], n_samples=0)]
    return DataLoader(share, batch_size=None)


def interleave_shards(shards: Sequence[Sequence[Any]]) -> list[Any]:
    """The items of ``shards[r] = items[r::len(shards)]`` back in their original order."""
    longest = max((len(s) for s in shards), default=0)
    return [s[j] for j in range(longest) for s in shards if j < len(s)]


def _graph_loader(stream: IterableDataset) -> DataLoader:
    # Batches are built by the stream itself (batch_size=None); sampling stays in this process so
    # the same code runs on CPU and GPU and its time is measured.
    return DataLoader(stream, batch_size=None, num_workers=0)


def _rank_and_world(world_size: int) -> tuple[int, int]:
    return (launch_rank() if world_size > 1 else 0), world_size


def train_gnn(
    cfg: Config,
    train_files: list[str],
    val_files: list[str],
    ckpt_path: str | Path,
    max_steps: int | None = None,
) -> pl.Trainer:
    """Train the Interaction GNN; resumes from ``<ckpt>-last.ckpt`` after a kill.

    Writes the final checkpoint atomically (rank 0) and logs per-epoch loss, validation
    precision/recall/AUC, epoch/sampling/step/all-reduce time, samples/s and memory to MLflow.
    """
    from trackgnn import tracking

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    # Per-rank epoch figures are logged by rank 0 on purpose (no cross-rank reduction wanted);
    # the streams know their length; resumes load our own checkpoints.
    warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
    warnings.filterwarnings("ignore", message=".*IterableDataset.*__len__.*")
    logging.getLogger("pytorch_lightning.trainer.connectors.checkpoint_connector").setLevel(
        logging.WARNING
    )
    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
    device = torch.device(resolve_device(cfg.device))
    g = cfg.gnn
    rank, world = _rank_and_world(g.world_size)
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if local_ranks > 1 and not cfg.threads:
        # torchrun's ranks share this machine's cores (OMP_NUM_THREADS is the job's total).
        torch.set_num_threads(max(1, torch.get_num_threads() // local_ranks))
    first = load_tensors(train_files[0], required=GRAPH_KEYS)
    feature_names = first.get("feature_names")
    train_graphs = [event_graph(first, train_files[0])]
    train_graphs += [load_event_graph(f) for f in train_files[1:]]
    val_graphs = [load_event_graph(f) for f in val_files]
    phi_columns = angle_columns(feature_names if isinstance(feature_names, list) else None)
    if g.mode == "full":
        sectors = train_graphs
        if g.phi_sectors > 1:
            if not phi_columns:
                raise TrackGNNError(f"{train_files[0]}: no phi feature to split sectors by")
            sectors = [
                part
                for graph in train_graphs
                for part in split_phi_sectors(
                    graph, graph.x[:, phi_columns[0]] * torch.pi, g.phi_sectors
                )
            ]
        stream: IterableDataset = FullGraphStream(sectors, cfg.seed, rank, world)
    else:
        stream = ShadowStream(union_graph(train_graphs), cfg, device, rank, world)
    val_loader = validation_loader(val_graphs, rank, world)
    note = stream.imbalance()
    if note and is_rank_zero():
        print(f"[gnn] {note}", file=sys.stderr)

    model_args = {
        "node_features": int(train_graphs[0].x.shape[1]),
        "angle_columns": phi_columns,
        "hidden": g.hidden,
        "n_iterations": g.n_iterations,
        "mlp_layers": g.mlp_layers,
        "layer_norm": g.layer_norm,
        "skip": g.skip,
        "checkpointing": g.checkpointing,
    }
    # the declared settings, epochs among them (they set the LR schedule), and the events
    key = resume_key(training_settings(cfg, "gnn"), input_fingerprint(train_files))
    module = GNNModule(
        model=model_args,
        lr=g.lr,
        pos_weight=g.pos_weight,
        compile=g.compile,
        mode=g.mode,
        resume_key=key,
        total_steps=g.epochs * len(stream),
    )
    final = Path(ckpt_path)
    resume_from = find_resume_checkpoint(final, KIND, key)
    if resume_from is not None:
        done = int(read_checkpoint(resume_from, KIND).get("epoch", -1)) + 1
        if is_rank_zero():
            print(f"[gnn] resuming from {resume_from} after epoch {done}", file=sys.stderr)
    # bf16 needs no gradient scaler and was as fast as fp16 on the GPU (bench/gpu_paths.py);
    # CPUs without native bf16 run it several times slower than fp32.
    precision = "bf16-mixed" if g.amp else "32-true"

    with tracking.stage_run(
        tracking.Target.from_config(cfg), "train_gnn", cfg.section("gnn"), system_metrics=True
    ) as run:
        trainer = make_trainer(
            device.type,
            g.epochs,
            callbacks=[
                EpochStats(),
                EpochReport(KIND, run.log_metrics),
                LastCheckpoint(last_checkpoint_path(final)),
            ],
            root_dir=final.parent,
            **trainer_kwargs(g.world_size, device.type, timeout_s=g.dist_timeout_s),
            max_steps=max_steps if max_steps is not None else -1,
            precision=precision,
            deterministic=not g.compile,
            use_distributed_sampler=False,
        )
        trainer.fit(
            module,
            train_dataloaders=_graph_loader(stream),
            val_dataloaders=val_loader,
            ckpt_path=resume_from,
            weights_only=True,
        )
        save_checkpoint_atomic(trainer, final)
        if trainer.is_global_zero:
            run.log_params(
                {
                    "n_train_events": len(train_files),
                    "n_parameters": sum(p.numel() for p in module.model.parameters()),
                }
            )
    return trainer
