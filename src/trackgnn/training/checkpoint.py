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

import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from trackgnn.atomic import atomic_path
from trackgnn.config import section_hash
from trackgnn.models.checkpoint import read_checkpoint

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
