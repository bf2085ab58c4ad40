"""Which vertices are an epoch's roots, and in what order."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from trackgnn.errors import TrackGNNError
from trackgnn.graph.shadow.batch import check_positive_int


def epoch_roots(
    candidates: int | Tensor,
    batch_size: int,
    generator: torch.Generator,
    batches_per_draw: int = 1,
    drop_last: bool = False,
) -> Iterator[Tensor]:
    """Yield one epoch of roots: every candidate exactly once, in a fresh random order.

    Args:
        candidates: a vertex count ``n`` (roots ``0..n-1``) or a 1-D tensor of root vertex ids.
        batch_size: roots per minibatch ``b``.
        generator: source of the shuffle; each call draws a new permutation from it.
        batches_per_draw: yield ``k * b`` roots at a time, one bulk problem of ``k`` minibatches.
        drop_last: drop the final incomplete minibatch instead of yielding a short one.
    """
    batch_size = check_positive_int(batch_size, "batch_size")
    batches_per_draw = check_positive_int(batches_per_draw, "batches_per_draw")
    if isinstance(candidates, Tensor):
        if candidates.dim() != 1 or candidates.dtype.is_floating_point:
            raise TrackGNNError("epoch_roots: candidates must be a 1-D integer tensor")
        ids = candidates.to(torch.int64)
        count = ids.numel()
    elif isinstance(candidates, int) and not isinstance(candidates, bool) and candidates >= 0:
        ids = None
        count = candidates
    else:
        raise TrackGNNError(
            f"epoch_roots: candidates must be a count or a tensor, got {candidates!r}"
        )
    perm = torch.randperm(count, generator=generator, device=generator.device)
    order = perm if ids is None else ids.index_select(0, perm.to(ids.device))
    step = batch_size * batches_per_draw
    usable = (count // batch_size) * batch_size if drop_last else count
    for start in range(0, usable, step):
        yield order[start : min(start + step, usable)]
