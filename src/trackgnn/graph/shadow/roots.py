"""Which vertices are an epoch's roots, and in what order: the one root schedule.

:func:`draw_roots` is the draw itself (a prefix of one seeded random permutation of the
candidates); :func:`epoch_roots` cuts a full draw into minibatches. Training
(:meth:`trackgnn.training.gnn.ShadowStream.epoch_roots`), the tests and ``bench/sampling.py``
all draw their roots through :func:`draw_roots`.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from trackgnn.errors import TrackGNNError
from trackgnn.graph.shadow.batch import check_positive_int


def draw_roots(candidates: int | Tensor, count: int | None, generator: torch.Generator) -> Tensor:
    """``count`` roots drawn uniformly without replacement from ``candidates``, in random order.

    The first ``count`` entries of one fresh random permutation of the candidates: every
    candidate is equally likely to be drawn, and none is drawn twice.

    Args:
        candidates: a vertex count ``n`` (roots ``0..n-1``) or a 1-D tensor of root vertex ids.
        count: how many to draw, at most the number of candidates; None draws them all.
        generator: source of the permutation (one ``randperm`` on its device).

    Raises:
        TrackGNNError: candidates neither a count nor a 1-D integer tensor, or a bad ``count``.
    """
    if isinstance(candidates, Tensor):
        if candidates.dim() != 1 or candidates.dtype.is_floating_point:
            raise TrackGNNError("draw_roots: candidates must be a 1-D integer tensor")
        ids = candidates.to(torch.int64)
        total = ids.numel()
    elif isinstance(candidates, int) and not isinstance(candidates, bool) and candidates >= 0:
        ids = None
        total = candidates
    else:
        raise TrackGNNError(
            f"draw_roots: candidates must be a count or a tensor, got {candidates!r}"
        )
    if count is None:
        count = total
    elif isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= total:
        raise TrackGNNError(f"draw_roots: count must be an int in [0, {total}], got {count!r}")
    # exactly one randperm per draw: seeded schedules (training's among them) depend on it
    perm = torch.randperm(total, generator=generator, device=generator.device)
    order = perm if ids is None else ids.index_select(0, perm.to(ids.device))
    return order[:count]


def epoch_roots(
    candidates: int | Tensor,
    batch_size: int,
    generator: torch.Generator,
    batches_per_draw: int = 1,
    drop_last: bool = False,
) -> Iterator[Tensor]:
    """Yield one epoch of roots: every candidate exactly once, in a fresh random order.

    The order is :func:`draw_roots` of all candidates.

    Args:
        candidates: a vertex count ``n`` (roots ``0..n-1``) or a 1-D tensor of root vertex ids.
        batch_size: roots per minibatch ``b``.
        generator: source of the shuffle; each call draws a new permutation from it.
        batches_per_draw: yield ``k * b`` roots at a time, one bulk problem of ``k`` minibatches.
        drop_last: drop the final incomplete minibatch instead of yielding a short one.
    """
    batch_size = check_positive_int(batch_size, "batch_size")
    batches_per_draw = check_positive_int(batches_per_draw, "batches_per_draw")
    order = draw_roots(candidates, None, generator)
    count = order.numel()
    step = batch_size * batches_per_draw
    usable = (count // batch_size) * batch_size if drop_last else count
    for start in range(0, usable, step):
        yield order[start : min(start + step, usable)]
