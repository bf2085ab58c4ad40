"""Tensor primitives of the bulk sampler and the induced-edge extractor (package-internal).

Compaction, floor division, sorted distinct keys, segment expansion and an exact hash lookup of
int64 keys, in torch on any device; on the CPU the first two run through numpy's kernels.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor


def flat_nonzero(mask: Tensor) -> Tensor:
    """Positions (int64) of the true entries of a 1-D bool tensor.

    On the CPU through numpy (zero-copy): torch's CPU ``nonzero`` is several times slower, and
    this is the sampler's most frequent compaction.
    """
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.nonzero().squeeze(1)


def floor_div(values: Tensor, divisor: int, out: Tensor | None = None) -> Tensor:
    """``values // divisor`` for non-negative int64 ``values`` (numpy's kernel on the CPU, faster
    than torch's), written into ``out`` when given."""
    if values.device.type == "cpu":
        if out is None:
            return torch.from_numpy(values.numpy() // divisor)
        np.floor_divide(values.numpy(), divisor, out=out.numpy())
        return out
    return torch.div(values, divisor, rounding_mode="floor", out=out)


@functools.lru_cache(maxsize=64)
def prime_below(limit: int) -> int:
    """Largest prime below ``limit`` (``limit`` >= 3)."""
    candidate = limit - 1
    while True:
        if candidate % 2 and all(candidate % f for f in range(3, math.isqrt(candidate) + 1, 2)):
            return candidate
        candidate -= 1


class KeyIndex:
    """Exact lookup of distinct non-negative int64 keys -> their position, O(1) expected per query.

    The keys are bucketed by ``key mod p`` for a prime ``p`` of two to four times their number;
    buckets are contiguous in a bucket-sorted copy. A query compares against its bucket's first key
    and only the rare queries whose bucket holds more keys look further. Pure torch, any device;
    cheaper than a binary search, which costs a log factor of cache misses.
    """

    def __init__(self, keys: Tensor) -> None:
        count = keys.numel()
        self.modulus = prime_below(max(8, 1 << (2 * count).bit_length()))
        bucket = torch.remainder(keys, self.modulus)
        order = torch.argsort(bucket, stable=True)
        sentinel = torch.full((1,), -1, dtype=torch.int64, device=keys.device)
        # one sentinel past the end: an empty trailing bucket starts there and never matches
        self.keys_by_bucket = torch.cat([keys.index_select(0, order), sentinel])
        self.pos_by_bucket = torch.cat([order, sentinel])
        sizes = torch.bincount(bucket, minlength=self.modulus)
        start = torch.cumsum(sizes, 0) - sizes
        # buckets holding several keys store ~start (negative): one gather tells both
        self.bucket_start = torch.where(sizes > 1, ~start, start)
        self.bucket_size = sizes
        self.max_bucket = int(sizes.max()) if count else 0

    def lookup(self, queries: Tensor) -> Tensor:
        """Position of each query among the keys, or -1 where absent."""
        bucket = torch.remainder(queries, self.modulus)
        encoded = self.bucket_start.index_select(0, bucket)
        first = encoded ^ (encoded >> 63)  # ~x for negative x, x otherwise
        # a key stored at another bucket's slot differs from the query: no bound check needed
        found = self.keys_by_bucket.index_select(0, first) == queries
        result = torch.where(found, self.pos_by_bucket.index_select(0, first), -1)
        if self.max_bucket <= 1:
            return result
        open_idx = flat_nonzero((encoded < 0) & ~found)
        if open_idx.numel() == 0:
            return result
        first = first.index_select(0, open_idx)
        size = self.bucket_size.index_select(0, bucket.index_select(0, open_idx))
        queries = queries.index_select(0, open_idx)
        for j in range(1, self.max_bucket):
            probe = first + j
            hit = (self.keys_by_bucket.index_select(0, probe) == queries) & (size > j)
            hit_at = flat_nonzero(hit)
            result[open_idx.index_select(0, hit_at)] = self.pos_by_bucket.index_select(
                0, probe.index_select(0, hit_at)
            )
            still = flat_nonzero((~hit) & (size > j + 1))
            if still.numel() == 0:
                break
            open_idx, first, size, queries = (
                t.index_select(0, still) for t in (open_idx, first, size, queries)
            )
        return result


def expand_segments(values: Tensor, counts: Tensor, total: int, step: int) -> Tensor:
    """Segment j of the output (``counts[j]`` long) runs ``values[j], values[j] + step, ...``.

    ``repeat_interleave(values, counts) + step * (position within the segment)`` computed as
    one cumulative sum of jumps placed at the segment starts: fewer passes over the (large)
    output than a repeat followed by gathers.
    """
    nonempty = flat_nonzero(counts > 0)
    seg_counts = counts.index_select(0, nonempty)
    seg_values = values.index_select(0, nonempty)
    seg_starts = torch.cumsum(seg_counts, 0) - seg_counts
    jumps = seg_values.clone()
    # the jump onto segment j undoes where segment j - 1 ended
    jumps[1:] -= seg_values[:-1] + step * (seg_counts[:-1] - 1)
    steps = torch.full((total,), step, dtype=torch.int64, device=counts.device)
    steps.index_put_((seg_starts,), jumps)
    return torch.cumsum(steps, 0)


def sorted_distinct(keys: Tensor, bound: int) -> Tensor:
    """The distinct values of non-negative int64 ``keys`` (all < ``bound``), ascending.

    Sorts in int32 when the keys fit (faster on the CPU than int64) and drops repeats
    by comparing neighbours, which is cheaper than ``torch.unique``.
    """
    if bound <= 2**31 - 1:
        ordered = torch.sort(keys.to(torch.int32)).values.to(torch.int64)
    else:
        ordered = torch.sort(keys).values
    if ordered.numel() < 2:
        return ordered
    first = torch.ones_like(ordered, dtype=torch.bool)
    torch.ne(ordered[1:], ordered[:-1], out=first[1:])
    return ordered.index_select(0, flat_nonzero(first))
