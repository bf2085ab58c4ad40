"""Interaction GNN training: the Lightning module, its per-epoch figures and ``train_gnn``.

What each mode trains on (full graphs, azimuthal sectors, ShaDow minibatches over P ranks) is
:mod:`trackgnn.training.gnn_streams`; the loop, resume and checkpoints are the one driver of
every stage, :func:`trackgnn.training.driver.train_stage`. Validation figures are computed over
all validation events, identically on every rank.

The label is ``y_pid`` (both hits from the same particle): track building joins hits by connected
components, for which any same-particle edge is right.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from trackgnn.config import Config, GNNConfig, training_settings
from trackgnn.event_data import EventGraph, GraphBatch, load_graph
from trackgnn.models.checkpoint import resolve_device
from trackgnn.models.interaction_gnn import InteractionGNN
from trackgnn.models.mlp import angle_columns
from trackgnn.process import peak_rss_mb, process_rank
from trackgnn.scoring import KIND, edge_classification_metrics
from trackgnn.simulation.weights import weight_pt
from trackgnn.training.checkpoint import ResumableModule, input_fingerprint, resume_key
from trackgnn.training.distributed import gradient_sync_stats, trainer_kwargs
from trackgnn.training.driver import MetricsSink, TrainedStage, train_stage
from trackgnn.training.gnn_streams import training_stream
from trackgnn.training.schedule import one_cycle_optimization


class EpochStats(pl.Callback):
    """Per-epoch scaling figures: epoch, sampling, step and all-reduce time, samples/s, memory.

    A callback (listed before the epoch report) so the figures are logged before they are printed.
    With ``warmup_steps`` the figures of the first epoch leave out its first steps (the scaling
    study times a fixed workload after a warm-up).
    """

    def __init__(self, warmup_steps: int = 0) -> None:
        self.warmup_steps = warmup_steps

    def _restart(self, trainer: pl.Trainer) -> None:
        trainer.train_dataloader.dataset.timer.sampling_s = 0.0
        gradient_sync_stats(trainer).reset()
        self._epoch_start = time.perf_counter()
        self._step_s, self._samples = 0.0, 0
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.train_dataloader.dataset.epoch = trainer.current_epoch
        self._restart(trainer)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: Any, batch: Any, idx: int
    ) -> None:
        self._step_start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int
    ) -> None:
        if trainer.global_step <= self.warmup_steps:
            self._restart(trainer)  # the timed window starts after this step
            return
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
        settings: GNNConfig,
        total_steps: int = 0,
        resume_key: str = "",
        model_kind: str = KIND,
    ) -> None:
        """Args:
        model: :class:`InteractionGNN`'s constructor arguments.
        settings: the ``gnn`` section (loss weight, optimizer, compilation).
        total_steps: optimizer steps of the whole training (the one-cycle schedule's length).
        resume_key: the key a killed training resumes under.
        model_kind: the checkpoint's kind.
        """
        super().__init__()
        # The checkpoint records plain values (loadable with weights_only).
        self.save_hyperparameters(
            {
                "model_kind": model_kind,
                "model": model,
                "train": {"gnn": asdict(settings), "total_steps": total_steps},
                "resume_key": resume_key,
            }
        )
        self.settings, self.total_steps = settings, total_steps
        self.model = InteractionGNN(**model)
        self._forward = torch.compile(self.model, dynamic=True) if settings.compile else self.model
        self._val: list[tuple[Tensor, Tensor, Tensor]] = []

    def forward(self, batch: GraphBatch) -> Tensor:
        return self._forward(batch.x, batch.edge_attr, batch.edge_index)

    def _loss(self, logits: Tensor, batch: GraphBatch) -> Tensor:
        pos_weight = torch.tensor(self.settings.pos_weight, device=logits.device)
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
        # Precision, recall and AUC over the edges the loss counts (weight > 0): with
        # ``true_edge_weights: signal`` the low-pT particles' edges are neither true nor fake.
        counted = (batch.weight > 0).cpu()
        self._val.append(
            (logits.float().cpu()[counted], batch.y.cpu()[counted], loss.float().cpu())
        )

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
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.settings.lr)
        return one_cycle_optimization(optimizer, self.total_steps)


def trackml_pt_edge_weights(graph: EventGraph) -> Tensor:
    """Loss weights ``[E]``: 1 for fake edges, the TrackML pT weight for true edges.

    Exa.TrkX ("Performance of a geometric deep learning pipeline for HL-LHC particle tracking",
    arXiv:2103.06995, sec. 6) weights true edges up by the TrackML hit weights, normalised to
    mean 1, so the model favours the tracks the TrackML score counts most. A filtered graph
    carries the pT factor of those weights (:func:`trackgnn.simulation.weights.weight_pt`: 0.2
    up to 0.5 GeV, linear to 1 at 3 GeV), not the hits' order along the particle, so true edges
    get the pT weight of their particle, normalised over the event's true edges.
    """
    weight = torch.ones(graph.n_edges)
    true = graph.y_pid > 0.5
    pt = graph.pt[graph.edge_index[0, true]].double().numpy()
    pt_weight = torch.from_numpy(weight_pt(pt)).float()
    if float(pt_weight.sum()) > 0:  # else no true edge (or none above 0.05 GeV) to weight
        weight[true] = pt_weight / pt_weight.mean()
    return weight


def trackml_pt_boost_edge_weights(graph: EventGraph) -> Tensor:
    """Loss weights ``[E]``: 1 for fake edges, the TrackML pT weight over its low-pT floor for
    true edges: 1 up to 0.5 GeV, rising linearly to 5 at 3 GeV.

    Like :func:`trackml_pt_edge_weights` it favours the tracks the TrackML score counts most,
    but it only weights up: no true edge counts less than a fake one. Normalised to mean 1,
    the TrackML weights put the far more numerous low-pT true edges below the fakes.
    """
    weight = torch.ones(graph.n_edges)
    true = graph.y_pid > 0.5
    pt = graph.pt[graph.edge_index[0, true]].double().numpy()
    floor = float(weight_pt(np.array([0.5]))[0])
    boost = torch.from_numpy(weight_pt(pt) / floor).float()
    weight[true] = boost.clamp(min=1.0)  # below 0.05 GeV the TrackML weight is 0
    return weight


def signal_edge_weights(graph: EventGraph, signal_pt: float) -> Tensor:
    """Loss weights ``[E]``: 0 for true edges of particles below ``signal_pt`` GeV, else 1.

    The edges of the particles the technical efficiency does not count (at mu = 200 most true
    edges: low-pT particles and their loops) leave the loss instead of competing with signal
    tracks for a small network's capacity; they are neither true nor fake to it. ACORN's GNN
    stage weights non-target particles' edges so (Exa.TrkX, arXiv:2103.06995).
    """
    true = graph.y_pid > 0.5
    weight = torch.ones(graph.n_edges)
    weight[true & (graph.pt[graph.edge_index[0]] < signal_pt)] = 0.0
    return weight


def training_batch(graph: EventGraph, settings: GNNConfig, signal_pt: float) -> GraphBatch:
    """The batch a training event contributes, with the loss weights of ``true_edge_weights``
    (``signal_pt``: GeV, the signal threshold of ``signal``)."""
    batch = graph.to_batch()
    if settings.true_edge_weights == "trackml_pt":
        batch = replace(batch, weight=trackml_pt_edge_weights(graph))
    elif settings.true_edge_weights == "trackml_pt_boost":
        batch = replace(batch, weight=trackml_pt_boost_edge_weights(graph))
    elif settings.true_edge_weights == "signal":
        batch = replace(batch, weight=signal_edge_weights(graph, signal_pt))
    return batch


def validation_loader(graphs: Sequence[GraphBatch], rank: int, world: int) -> DataLoader:
    """This rank's validation events: every ``world``-th, from the ``rank``-th.

    A rank left without events (fewer events than ranks) gets one marked ``n_samples = 0``,
    which it runs (every rank takes part in the same validation loop) but does not count.
    :func:`interleave_shards` undoes the split.
    """
    share = list(graphs[rank::world])
    if not share and graphs:
        share = [replace(graphs[0], n_samples=0)]
    # Its own generator: iterating it must not draw from the training's random stream.
    return DataLoader(share, batch_size=None, generator=torch.Generator())


def interleave_shards(shards: Sequence[Sequence[Any]]) -> list[Any]:
    """The items of ``shards[r] = items[r::len(shards)]`` back in their original order."""
    longest = max((len(s) for s in shards), default=0)
    return [s[j] for j in range(longest) for s in shards if j < len(s)]


def gnn_model_args(cfg: Config, node_features: int, phi_columns: list[int]) -> dict[str, Any]:
    """The Interaction GNN's constructor arguments from the config and the graphs' features."""
    g = cfg.gnn
    return {
        "node_features": node_features,
        "angle_columns": phi_columns,
        "hidden": g.hidden,
        "n_iterations": g.n_iterations,
        "mlp_layers": g.mlp_layers,
        "layer_norm": g.layer_norm,
        "skip": g.skip,
        "checkpointing": g.checkpointing,
        "aggregation": g.aggregation,
    }


def gnn_trainer_args(cfg: Config, device: torch.device, world_size: int) -> dict[str, Any]:
    """``Trainer`` arguments of GNN training: ranks, precision, determinism."""
    g = cfg.gnn
    return {
        **trainer_kwargs(world_size, device.type, timeout_s=g.dist_timeout_s),
        # bf16 needs no gradient scaler and was as fast as fp16 on the GPU (bench/gpu_paths.py);
        # CPUs without native bf16 run it several times slower than fp32.
        "precision": "bf16-mixed" if g.amp else "32-true",
        "deterministic": not g.compile,
        # each rank's stream yields its own share
        "use_distributed_sampler": False,
    }


def quiet_gnn_training() -> None:
    """Silence the warnings that GNN training expects: rank-0-only epoch figures (no cross-rank
    reduction wanted), streams that know their length, resumes from our own checkpoints."""
    warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
    warnings.filterwarnings("ignore", message=".*IterableDataset.*__len__.*")
    logging.getLogger("pytorch_lightning.trainer.connectors.checkpoint_connector").setLevel(
        logging.WARNING
    )


def _share_threads(cfg: Config) -> None:
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if local_ranks > 1 and not cfg.threads:
        # torchrun's ranks share this machine's cores (OMP_NUM_THREADS is the job's total).
        torch.set_num_threads(max(1, torch.get_num_threads() // local_ranks))


def _graph_loader(stream: IterableDataset) -> DataLoader:
    # Batches are built by the stream itself (batch_size=None); sampling stays in this process so
    # the same code runs on CPU and GPU and its time is measured.
    return DataLoader(stream, batch_size=None, num_workers=0)


def train_gnn(
    cfg: Config,
    train_files: Sequence[str | os.PathLike[str]],
    val_files: Sequence[str | os.PathLike[str]],
    ckpt_path: str | os.PathLike[str],
    log: MetricsSink | None = None,
    max_steps: int | None = None,
) -> TrainedStage:
    """Train the Interaction GNN on filtered graph files; write ``ckpt_path`` (resumes a kill).

    Uses ``gnn``, ``seed``, ``threads`` and ``device``; runs as one of ``gnn.world_size`` ranks.
    Writes the final checkpoint atomically (rank 0); ``log`` gets per-epoch loss, validation
    precision/recall/AUC, epoch/sampling/step/all-reduce time, samples/s and memory.
    ``max_steps`` shortens the training (tests).
    """
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    quiet_gnn_training()
    device = torch.device(resolve_device(cfg.device))
    g = cfg.gnn
    rank, world = (process_rank() if g.world_size > 1 else 0), g.world_size
    _share_threads(cfg)
    first = load_graph(train_files[0])
    signal_pt = cfg.evaluation.signal_pt
    train_graphs = [training_batch(first, g, signal_pt)]
    train_graphs += [training_batch(load_graph(f), g, signal_pt) for f in train_files[1:]]
    val_graphs = [training_batch(load_graph(f), g, signal_pt) for f in val_files]
    phi_columns = angle_columns(first.feature_names)
    stream = training_stream(
        cfg,
        train_graphs,
        phi_columns[0] if phi_columns else None,
        device,
        rank,
        world,
        source=str(train_files[0]),
    )
    note = stream.imbalance()
    if note and rank == 0:
        print(f"[gnn] {note}", file=sys.stderr)
    # the declared settings, epochs among them (they set the LR schedule), and the events
    key = resume_key(training_settings(cfg, "gnn"), input_fingerprint(train_files))
    module = GNNModule(
        model=gnn_model_args(cfg, int(train_graphs[0].x.shape[1]), phi_columns),
        settings=g,
        total_steps=g.epochs * len(stream),
        resume_key=key,
    )
    return train_stage(
        module,
        KIND,
        train_loader=_graph_loader(stream),
        val_loader=validation_loader(val_graphs, rank, world),
        epochs=g.epochs,
        val_every=g.val_every,
        device=device.type,
        ckpt_path=ckpt_path,
        log=log,
        callbacks=[EpochStats()],
        max_steps=max_steps,
        **gnn_trainer_args(cfg, device, world),
    )
