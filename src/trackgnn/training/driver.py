"""The one way every stage trains: resume, per-epoch checkpoint and report, final checkpoint.

Embedding, filter and GNN training (and the GNN scaling study) each build their Lightning module
and data loaders, then call :func:`train_stage`, which

* resumes from ``<stage>-last.ckpt`` when it was written for the same resume key
  (:mod:`trackgnn.training.checkpoint`);
* rewrites that checkpoint after every epoch and prints one progress line per epoch (epoch,
  elapsed and remaining time, the logged figures), forwarding the figures to ``log`` (the MLflow
  stage run the command opened);
* writes the final checkpoint atomically once training completes, and fails with a one-line error
  when it stopped early.

Only global rank 0 prints and writes; every rank runs the same code.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerStatus

from trackgnn.errors import TrackGNNError
from trackgnn.models.checkpoint import read_checkpoint, resolve_device
from trackgnn.process import process_rank
from trackgnn.training.checkpoint import (
    LastCheckpoint,
    find_resume_checkpoint,
    last_checkpoint_path,
    save_checkpoint_atomic,
)

MetricsSink = Callable[[dict[str, float], int], None]


def format_duration(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``42s``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class EpochReport(pl.Callback):
    """One line per epoch: progress, elapsed and remaining time, the logged metrics.

    Forwards the metrics to ``log(metrics, epoch)``. The remaining time assumes the epochs still
    to run take as long as the mean of those this process ran (a resumed run counts only its own).
    """

    def __init__(
        self, stage: str, log: Callable[[dict[str, float], int], None] | None = None
    ) -> None:
        self.stage = stage
        self.on_metrics = log
        self._start = time.monotonic()
        self._first_epoch = 0
        self._validated = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.monotonic()
        self._first_epoch = trainer.current_epoch

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validated = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning keeps the last validation's figures: an epoch without one reports none.
        validated, self._validated = self._validated, False
        metrics = {
            name: float(value)
            for name, value in sorted(trainer.callback_metrics.items())
            if torch.is_tensor(value)
            and value.numel() == 1
            and (validated or not name.startswith("val_"))
        }
        if not trainer.is_global_zero:
            return
        epoch = trainer.current_epoch
        elapsed = time.monotonic() - self._start
        text = " ".join(f"{name}={value:.4g}" for name, value in metrics.items())
        progress = f"epoch {epoch + 1} elapsed {format_duration(elapsed)}"
        if trainer.max_epochs is not None and trainer.max_epochs > 0:  # not a step-bounded run
            left = trainer.max_epochs - epoch - 1
            remaining = elapsed / (epoch + 1 - self._first_epoch) * left
            progress = (
                f"epoch {epoch + 1}/{trainer.max_epochs} elapsed {format_duration(elapsed)} "
                f"remaining {format_duration(remaining)}"
            )
        print(f"[{self.stage}] {progress} {text}", flush=True)
        if self.on_metrics is not None:
            self.on_metrics(metrics, epoch)


class ValidateEvery(pl.Callback):
    """Validate after every ``every``-th epoch and after the last one.

    Lightning's ``check_val_every_n_epoch`` alone would skip the last epoch when ``every`` does
    not divide the epochs; the fit loop reads it afresh each epoch, so the last gets 1.
    """

    def __init__(self, every: int) -> None:
        self.every = every

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A step-bounded run (max_epochs -1) has no last epoch to single out.
        bounded = trainer.max_epochs is not None and trainer.max_epochs > 0
        last = bounded and trainer.current_epoch + 1 >= trainer.max_epochs
        trainer.check_val_every_n_epoch = 1 if last else self.every


def make_trainer(
    device: str,
    max_epochs: int,
    callbacks: list[pl.Callback],
    root_dir: str | os.PathLike[str],
    **overrides: Any,
) -> pl.Trainer:
    """A deterministic single-device Trainer: no default logger, no summary, one line per epoch.

    ``overrides`` replace or add Trainer arguments (a distributed strategy, precision, ...).
    """
    accelerator = resolve_device(device)
    if accelerator == "cuda":
        # cuBLAS needs this for deterministic results under torch.use_deterministic_algorithms.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # Lightning's info lines (GPU available, tips) drown the per-epoch lines in job logs.
    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
    kwargs: dict[str, Any] = {
        "accelerator": "gpu" if accelerator == "cuda" else "cpu",
        "devices": 1,
        "max_epochs": max_epochs,
        "deterministic": True,
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "enable_progress_bar": False,
        "num_sanity_val_steps": 0,
        "callbacks": callbacks,
        "default_root_dir": str(root_dir),
    }
    return pl.Trainer(**{**kwargs, **overrides})


@dataclass(frozen=True)
class TrainedStage:
    """What a finished training gives its caller."""

    trainer: pl.Trainer
    metrics: dict[str, float]  # the last epoch's logged figures
    n_parameters: int


def _resume_checkpoint(
    module: pl.LightningModule, kind: str, final: Path, epochs: int
) -> Path | None:
    resume_from = find_resume_checkpoint(final, kind, module.hparams["resume_key"])
    if resume_from is None:
        return None
    done = int(read_checkpoint(resume_from, kind).get("epoch", -1)) + 1
    if done > epochs:
        print(
            f"{resume_from}: has {done} epochs, more than the {epochs} asked; "
            "training from scratch",
            file=sys.stderr,
        )
        return None
    if process_rank() == 0:
        print(f"[{kind}] resuming from {resume_from} after epoch {done}", flush=True)
    return resume_from


def train_stage(
    module: pl.LightningModule,
    kind: str,
    *,
    train_loader: Any,
    val_loader: Any = None,
    epochs: int,
    device: str,
    ckpt_path: str | os.PathLike[str] | None,
    log: MetricsSink | None = None,
    callbacks: Sequence[pl.Callback] = (),
    max_steps: int | None = None,
    val_every: int = 1,
    **trainer_overrides: Any,
) -> TrainedStage:
    """Train ``module`` for ``epochs`` epochs; resume a killed run; write the final checkpoint.

    Args:
        module: ``hparams`` must hold ``model_kind`` (= ``kind``), ``model`` (the network's
            constructor arguments) and ``resume_key``.
        kind: the stage's model kind (``embedding``, ``filter``, ``gnn``), in log lines and
            checkpoints.
        train_loader, val_loader: the stage's loaders (``val_loader`` may be None).
        epochs: epochs to train (``-1`` with ``max_steps``: until that many steps).
        device: ``cpu``, ``cuda`` or ``auto`` (a distributed strategy in ``trainer_overrides``
            replaces the single device).
        ckpt_path: the final checkpoint, ``<stem>-last.ckpt`` beside it is the per-epoch one;
            None trains without checkpoints (measurements).
        log: called as ``log(metrics, epoch)`` after each epoch, on rank 0.
        callbacks: the stage's own callbacks, run before the epoch report (figures they put in
            ``trainer.callback_metrics`` are reported with the epoch).
        max_steps: stop after this many optimizer steps (a shortened run: never an error).
        val_every: validate after every this many epochs and after the last; the weights do
            not depend on it.
        trainer_overrides: further ``Trainer`` arguments (strategy, precision, ...).
    """
    final = Path(ckpt_path) if ckpt_path is not None else None
    resume_from = _resume_checkpoint(module, kind, final, epochs) if final is not None else None
    own: list[pl.Callback] = [ValidateEvery(val_every), *callbacks]
    if final is not None:
        # Save before reporting: a failing metrics sink must not cost the epoch.
        own.append(LastCheckpoint(last_checkpoint_path(final)))
    own.append(EpochReport(kind, log))
    if max_steps is not None:
        trainer_overrides["max_steps"] = max_steps
    trainer = make_trainer(
        device,
        epochs,
        callbacks=own,
        root_dir=final.parent if final is not None else Path.cwd(),
        **trainer_overrides,
    )
    trainer.fit(
        module,
        train_dataloaders=train_loader,
        val_dataloaders=val_loader,
        ckpt_path=resume_from,
        weights_only=True,
    )
    finished = trainer.state.status == TrainerStatus.FINISHED
    if max_steps is None and (not finished or trainer.current_epoch < epochs):
        where = last_checkpoint_path(final) if final is not None else "the start"
        raise TrackGNNError(
            f"{final or kind}: {kind} training stopped early; rerun to resume from {where}"
        )
    if final is not None:
        save_checkpoint_atomic(trainer, final)
    metrics = {
        k: float(v)
        for k, v in trainer.callback_metrics.items()
        if torch.is_tensor(v) and v.numel() == 1
    }
    n_parameters = sum(p.numel() for p in module.parameters())
    return TrainedStage(trainer, metrics, n_parameters)
