"""The bulk ShaDow sampler: ``k`` minibatches drawn as one matrix problem with tensor operations."""

from __future__ import annotations

import torch
from torch import Tensor

from trackgnn.errors import TrackGNNError
from trackgnn.graph.csr import SamplingGraph
from trackgnn.graph.shadow.base import ShadowSampler
from trackgnn.graph.shadow.batch import SubgraphBatch, check_positive_int
from trackgnn.graph.shadow.induced import InducedExtractor
from trackgnn.graph.shadow.ops import flat_nonzero, sorted_distinct

DRAW_METHODS = ("floyd", "keys")


class BulkSampler(ShadowSampler):
    """Matrix-based ShaDow sampling of ``k`` minibatches at once (tensor operations, CPU or CUDA).

    The ``k * b`` roots are the rows of ``Q`` (one nonzero each). Per level, the frontier is a list
    of (row, vertex) nonzeros; row ``i`` of ``Q A`` is the CSR row of its vertex, whose
    row-normalised values are the uniform probabilities ``1 / degree``; ``min(degree, s)``
    positions are drawn for all rows at once, and each drawn vertex becomes a nonzero of the next
    ``Q`` (repeats kept). The touched matrix ``F`` collects every level's nonzeros as sorted
    ``row * n + vertex`` keys; the induced subgraphs come from row selection (out-edges of touched
    vertices) and column selection (head also in the row of ``F``), see
    :class:`InducedExtractor`.

    ``draw`` chooses how the s positions of a row are drawn:

    * ``"floyd"`` (default): Floyd's subset algorithm vectorised over rows, ``O(s^2)`` per row and
      independent of the degree;
    * ``"keys"``: the paper's formulation, materialising ``Q A`` and its row-normalised
      probabilities and keeping the ``s`` largest exponential keys ``log(u) / p`` per row
      (Efraimidis-Spirakis, also valid for weighted rows), via a segmented sort.

    Args:
        k: minibatches per bulk problem; longer root lists are processed ``k * b`` roots at a time.
        device: where the graph lives and sampling runs; the generator must be on this device.
    """

    name = "bulk"

    def __init__(
        self,
        graph: SamplingGraph,
        depth: int = 3,
        fanout: int = 6,
        batch_size: int = 256,
        replace: bool = False,
        k: int = 1,
        device: torch.device | str | None = None,
        draw: str = "floyd",
    ) -> None:
        super().__init__(graph, depth, fanout, batch_size, replace)
        self.k = check_positive_int(k, "k")
        if draw not in DRAW_METHODS:
            raise TrackGNNError(f"ShaDow sampler: draw must be one of {DRAW_METHODS}, got {draw!r}")
        self.draw = draw
        self.device = torch.device(device) if device is not None else graph.device
        self.graph = graph.to(self.device)
        # holds scratch state, so a sampler is not thread-safe
        self._extract = InducedExtractor(self.graph)
        if graph.num_nodes * (self.k * self.batch_size) >= 2**62:
            raise TrackGNNError("ShaDow sampler: num_nodes * k * batch_size overflows int64 keys")

    def _sample(self, roots: Tensor, generator: torch.Generator) -> list[SubgraphBatch]:
        if generator.device.type != self.device.type:
            raise TrackGNNError(
                f"ShaDow sampler: generator is on {generator.device}, sampler on {self.device}"
            )
        roots = roots.to(self.device)
        group = self.k * self.batch_size
        out: list[SubgraphBatch] = []
        # a loop over groups of k minibatches, not over roots
        for start in range(0, roots.numel(), group):
            out.extend(self._sample_group(roots[start : start + group], generator))
        return out

    def _draw_offsets(
        self, degree: Tensor, generator: torch.Generator, all_draw: bool
    ) -> tuple[Tensor, Tensor | None]:
        """Offsets ``[s, f]`` into each frontier vertex's CSR row (slot-major, so each step of
        Floyd's loop works on contiguous rows) and their validity mask, or None when
        ``all_draw`` says every degree exceeds ``s`` (then every offset is valid)."""
        s = self.fanout
        device = degree.device
        slots = torch.arange(s, device=device)[:, None]
        deg = degree[None, :]
        u = torch.rand((s, degree.numel()), generator=generator, device=device, dtype=torch.float64)
        if self.replace:
            offsets = torch.minimum((u * deg).to(torch.int64), deg - 1)
        else:
            # Floyd: for j = deg-s .. deg-1 draw t uniform in [0, j]; if t was already chosen take
            # j instead. Every s-subset of [0, deg) is equally likely.
            top = deg - s + slots
            offsets = torch.minimum((u * (top + 1)).to(torch.int64), top)
            for i in range(1, s):
                repeat = (offsets[:i] == offsets[i]).any(0)
                offsets[i] = torch.where(repeat, top[i], offsets[i])
        if all_draw:
            return offsets, None
        # rows with degree <= s take every neighbour
        offsets = torch.where(deg <= s, slots, offsets)
        return offsets, slots < deg

    def _expand_floyd(
        self, row_key: Tensor, vertex: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """One level: the next frontier's ``(row_key, vertex)`` entries (``row_key`` is carried
        from the drawing entry unchanged; the sampler passes ``row * n``)."""
        g = self.graph
        degree = g.degree.index_select(0, vertex)
        all_draw = int(degree.min()) > self.fanout
        offsets, valid = self._draw_offsets(degree, generator, all_draw)
        # slot-major: flat position c belongs to frontier entry c % f
        position = (g.rowptr.index_select(0, vertex)[None, :] + offsets).view(-1)
        new_key = row_key.repeat(self.fanout)
        if valid is None:  # nothing to compact
            return new_key, g.col.index_select(0, position)
        chosen = flat_nonzero(valid.view(-1))
        return new_key.index_select(0, chosen), g.col.index_select(
            0, position.index_select(0, chosen)
        )

    def _expand_keys(
        self, row_key: Tensor, vertex: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        if self.replace:
            return self._expand_floyd(row_key, vertex, generator)
        g = self.graph
        device = vertex.device
        degree = g.degree.index_select(0, vertex)
        ends = torch.cumsum(degree, 0)
        total = int(ends[-1])
        # nonzeros of Q A, row by row: entry e of frontier row i is CSR slot rowptr[v_i] + e
        qa_row = torch.repeat_interleave(
            torch.arange(vertex.numel(), device=device), degree, output_size=total
        )
        first = ends - degree
        qa_slot = torch.arange(total, device=device) + (
            g.rowptr.index_select(0, vertex) - first
        ).index_select(0, qa_row)
        prob = 1.0 / degree.to(torch.float64).index_select(0, qa_row)  # row-normalised Q A
        u = torch.rand(total, generator=generator, device=device, dtype=torch.float64)
        key = torch.log(u) / prob
        # segmented top-s: order by key (descending), then stably by row
        order = torch.argsort(key, descending=True, stable=True)
        order = order.index_select(0, torch.argsort(qa_row.index_select(0, order), stable=True))
        rank = torch.arange(total, device=device) - first.index_select(
            0, qa_row.index_select(0, order)
        )
        chosen = order[rank < self.fanout]
        return (
            row_key.index_select(0, qa_row.index_select(0, chosen)),
            g.col.index_select(0, qa_slot.index_select(0, chosen)),
        )

    def _sample_group(self, roots: Tensor, generator: torch.Generator) -> list[SubgraphBatch]:
        n = self.graph.num_nodes
        num_rows = roots.numel()
        # each frontier entry carries row * n, so its key in F is one add away
        row_key = torch.arange(num_rows, device=self.device) * n
        vertex = roots
        keys = [row_key + vertex]
        expand = self._expand_floyd if self.draw == "floyd" else self._expand_keys
        for _ in range(self.depth):  # a loop over levels only
            if vertex.numel() == 0:
                break
            row_key, vertex = expand(row_key, vertex, generator)
            keys.append(row_key + vertex)
        # F: distinct (row, vertex) pairs as row * n + vertex, sorted by row then vertex
        touched_keys = sorted_distinct(torch.cat(keys), num_rows * n)
        return self._extract(touched_keys, roots, self.batch_size)
