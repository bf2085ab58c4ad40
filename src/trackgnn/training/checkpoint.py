"""Checkpoints shared by every trained stage: atomic saving, resuming, validated loading.

Layout for a stage whose final checkpoint is ``models/<stage>.ckpt``:

* ``models/<stage>-last.ckpt`` is rewritten (atomically) at the end of every epoch;
* ``models/<stage>.ckpt`` is written (atomically) only when training completes.

A rerun of a killed training job resumes from ``<stage>-last.ckpt`` when it was written for the
same model kind and the same *resume key* (a hash of everything that shapes training, the number
of epochs included: it sets the learning-rate schedule, so continuing a shorter training would
give other weights than a fresh one; any change starts afresh). Every checkpoint is a Lightning
checkpoint whose ``hyper_parameters`` hold ``model_kind``, ``model`` (the network's constructor
arguments) and ``resume_key``. Loading a corrupted, truncated or mismatched file raises a
one-line :class:`CheckpointError` naming it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerStatus

from trackgnn.atomic import atomic_path
from trackgnn.config import section_hash
from trackgnn.errors import TrackGNNError
from trackgnn.models.checkpoint import read_checkpoint, resolve_device

RNG_KEY = "trackgnn_torch_rng"


def last_checkpoint_path(ckpt_path: str | os.PathLike[str]) -> Path:
    """``<dir>/<stage>-last.ckpt`` beside the final ``<dir>/<stage>.ckpt``."""
    final = Path(ckpt_path)
    return final.with_name(f"{final.stem}-last{final.suffix or '.ckpt'}")


def input_fingerprint(paths: Any) -> list[list[Any]]:
    """Name, size and modification time of each training input, for :func:`resume_key`.

    A killed job rerun on the same inputs resumes; one rerun because its inputs changed (new
    graphs after a filter change, say) must train afresh, not continue the old model.
    """
    prints = []
    for path in paths:
        stat = os.stat(path)
        prints.append([os.path.basename(path), stat.st_size, stat.st_mtime_ns])
    return prints


def resume_key(*parts: Any) -> str:
    """Stable hash of the settings a resumed training must share with the interrupted one."""
    return section_hash({"parts": list(parts)})


def find_resume_checkpoint(ckpt_path: str | os.PathLike[str], kind: str, key: str) -> Path | None:
    """The ``-last`` checkpoint to resume from, or None to start afresh.

    A last checkpoint of another kind, or that cannot be read, raises CheckpointError (it is
    not ours to overwrite silently); one written for different settings is ignored, with a note.
    """
    last = last_checkpoint_path(ckpt_path)
    if not last.exists():
        return None
    data = read_checkpoint(last, kind)
    found = data["hyper_parameters"].get("resume_key")
    if found != key:
        print(
            f"{last}: written for other {kind} settings or data; training from scratch",
            file=sys.stderr,
        )
        return None
    return last


def save_checkpoint_atomic(trainer: pl.Trainer, path: str | os.PathLike[str]) -> None:
    """``trainer.save_checkpoint`` to a temporary file renamed onto ``path``."""
    if not trainer.is_global_zero:
        # Only rank 0 writes; the others must still enter save_checkpoint for its barrier, and
        # must not rename an empty temporary file onto the real checkpoint.
        trainer.save_checkpoint(path, weights_only=False)
        return
    with atomic_path(path) as tmp:
        trainer.save_checkpoint(tmp, weights_only=False)


class LastCheckpoint(pl.Callback):
    """Rewrite ``<stage>-last.ckpt`` atomically at the end of every training epoch."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        save_checkpoint_atomic(trainer, self.path)


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

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.monotonic()
        self._first_epoch = trainer.current_epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {
            name: float(value)
            for name, value in sorted(trainer.callback_metrics.items())
            if torch.is_tensor(value) and value.numel() == 1
        }
        if not trainer.is_global_zero:
            return
        epoch = trainer.current_epoch
        elapsed = time.monotonic() - self._start
        remaining = elapsed / (epoch + 1 - self._first_epoch) * (trainer.max_epochs - epoch - 1)
        text = " ".join(f"{name}={value:.4g}" for name, value in metrics.items())
        print(
            f"[{self.stage}] epoch {epoch + 1}/{trainer.max_epochs} "
            f"elapsed {format_duration(elapsed)} remaining {format_duration(remaining)} {text}",
            flush=True,
        )
        if self.on_metrics is not None:
            self.on_metrics(metrics, epoch)


class ResumableModule(pl.LightningModule):
    """LightningModule base that keeps torch's RNG in its checkpoints.

    Restoring the RNG on resume makes a killed-and-resumed training draw the same shuffles and
    random pairs as an uninterrupted one.
    """

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[RNG_KEY] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(RNG_KEY)
        if state is not None:
            torch.set_rng_state(state)

    def optimize_parts(
        self, parts: Iterable[torch.Tensor], loss_of: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """One optimizer and learning-rate step per part of a batch (manual optimization).

        For modules that take several steps per event: ``loss_of(part)`` is each step's loss.
        Logs the mean ``train_loss`` and the learning rate; returns the mean loss.
        """
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        losses = []
        for part in parts:
            loss = loss_of(part)
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
            scheduler.step()
            losses.append(loss.detach())
        mean_loss = torch.stack(losses).mean()
        self.log("train_loss", mean_loss, on_step=False, on_epoch=True, batch_size=1)
        self.log("lr", scheduler.get_last_lr()[0], on_step=False, on_epoch=True, batch_size=1)
        return mean_loss


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


def fit_resumable(
    module: pl.LightningModule,
    kind: str,
    ckpt_path: str | os.PathLike[str],
    device: str,
    max_epochs: int,
    train_loader: Any,
    val_loader: Any = None,
    log: Callable[[dict[str, float], int], None] | None = None,
) -> pl.Trainer:
    """Train ``module`` with per-epoch last checkpoints, resuming a killed run; write the final.

    ``module.hparams`` must hold ``model_kind`` (= ``kind``), ``model`` and ``resume_key``.
    """
    final = Path(ckpt_path)
    last = last_checkpoint_path(final)
    resume_from = find_resume_checkpoint(final, kind, module.hparams["resume_key"])
    if resume_from is not None:
        done = int(read_checkpoint(resume_from, kind).get("epoch", -1)) + 1
        if done > max_epochs:
            print(
                f"{resume_from}: has {done} epochs, more than the {max_epochs} asked; "
                "training from scratch",
                file=sys.stderr,
            )
            resume_from = None
        else:
            print(f"[{kind}] resuming from {resume_from} after epoch {done}", flush=True)
    trainer = make_trainer(
        device,
        max_epochs,
        # Save first: a failing metrics sink must not cost the epoch.
        callbacks=[LastCheckpoint(last), EpochReport(kind, log)],
        root_dir=final.parent,
    )
    trainer.fit(
        module,
        train_dataloaders=train_loader,
        val_dataloaders=val_loader,
        ckpt_path=resume_from,
        weights_only=True,
    )
    if trainer.state.status != TrainerStatus.FINISHED or trainer.current_epoch < max_epochs:
        raise TrackGNNError(f"{final}: {kind} training stopped early; rerun to resume from {last}")
    save_checkpoint_atomic(trainer, final)
    return trainer
