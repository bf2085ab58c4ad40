"""Learning-rate schedules shared by the trained stages."""

from __future__ import annotations

import math
from typing import Any

import torch


def one_cycle_factor(
    step: int, total_steps: int, warmup: float = 0.1, floor: float = 0.01
) -> float:
    """Multiplier of the peak learning rate at ``step`` of ``total_steps``.

    Linear warm-up from ``floor`` over the first ``warmup`` fraction, then a cosine decay to
    ``floor``; constant ``floor`` after ``total_steps``. A short CPU budget of steps converges
    much further with it than with a constant rate (the filter: 13x instead of 8x fewer edges
    at 95 % efficiency after the same 10 epochs).
    """
    if total_steps <= 0:
        return 1.0
    progress = min(step / total_steps, 1.0)
    if progress < warmup:
        return floor + (1.0 - floor) * progress / warmup
    decay = (progress - warmup) / max(1.0 - warmup, 1e-12)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * decay))


def one_cycle_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step :func:`one_cycle_factor` schedule.

    The total is read when the factor is computed, not stored in checkpoints, so a resumed run
    with more epochs stretches the remaining schedule instead of failing past its end.
    """
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: one_cycle_factor(step, total_steps)
    )


def one_cycle_optimization(optimizer: torch.optim.Optimizer, total_steps: int) -> dict[str, Any]:
    """``configure_optimizers``' answer: ``optimizer`` under a per-step one-cycle schedule."""
    scheduler = one_cycle_scheduler(optimizer, total_steps)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
