"""The per-root ShaDow sampler in numpy, Algorithm 2 root by root: the ground truth of the tests."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from trackgnn.graph.csr import SamplingGraph
from trackgnn.graph.shadow.base import ShadowSampler
from trackgnn.graph.shadow.batch import SubgraphBatch


class ReferenceSampler(ShadowSampler):
    """Plain per-root ShaDow sampling in numpy: the ground truth the fast samplers are tested on.

    Each root is expanded level by level; every frontier vertex orders its neighbours by
    independent uniform keys and keeps the ``min(degree, fanout)`` smallest, which is a uniform
    draw without replacement. The induced edges are the out-edges of subgraph vertices whose head
    is marked as a subgraph vertex.
    """

    name = "reference"

    def __init__(
        self,
        graph: SamplingGraph,
        depth: int = 3,
        fanout: int = 6,
        batch_size: int = 256,
        replace: bool = False,
    ) -> None:
        super().__init__(graph, depth, fanout, batch_size, replace)
        cpu = graph.to("cpu")
        self._rowptr = cpu.rowptr.numpy()
        self._col = cpu.col.numpy()
        self._degree = cpu.degree.numpy()
        self._out_rowptr = cpu.out_rowptr.numpy()
        self._out_col = cpu.out_col.numpy()
        self._out_eid = cpu.out_eid.numpy()
        # local position + 1 of each vertex in the current subgraph, 0 = absent; reset after use
        self._mark = np.zeros(graph.num_nodes, dtype=np.int64)

    def _draw(self, frontier: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Next frontier: the neighbours drawn by every vertex of ``frontier``."""
        s = self.fanout
        degree = self._degree[frontier]
        width = int(degree.max())
        if width == 0:
            return frontier[:0]
        if self.replace:
            # vertices with degree <= fanout take every neighbour, as in torch-sparse
            drawn = rng.integers(0, np.maximum(degree, 1)[:, None], size=(frontier.size, s))
            offsets = np.where(degree[:, None] > s, drawn, np.arange(s)[None, :])
        else:
            # the s smallest of independent uniform keys: a uniform draw without replacement
            keys = rng.random((frontier.size, width))
            keys[np.arange(width)[None, :] >= degree[:, None]] = np.inf
            offsets = np.argsort(keys, axis=1, kind="stable")[:, :s]
        take = np.minimum(degree, s)
        keep = np.arange(offsets.shape[1])[None, :] < take[:, None]
        return self._col[(self._rowptr[frontier][:, None] + offsets)[keep]]

    def _sample_root(
        self, root: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
        """Nodes (sorted), local src, local dst, edge ids and local root of one subgraph."""
        frontier = np.array([root], dtype=np.int64)
        touched = [frontier]
        for _ in range(self.depth):
            if frontier.size == 0:
                break
            frontier = self._draw(frontier, rng)
            touched.append(frontier)
        nodes = np.unique(np.concatenate(touched))

        mark = self._mark
        mark[nodes] = np.arange(1, nodes.size + 1)
        starts = self._out_rowptr[nodes]
        counts = self._out_rowptr[nodes + 1] - starts
        src_local = np.repeat(np.arange(nodes.size), counts)
        slot = np.repeat(starts - (np.cumsum(counts) - counts), counts) + np.arange(counts.sum())
        head = mark[self._out_col[slot]]
        mark[nodes] = 0
        inside = head > 0
        root_local = int(np.searchsorted(nodes, root))
        return nodes, src_local[inside], head[inside] - 1, self._out_eid[slot[inside]], root_local

    def _sample(self, roots: Tensor, generator: torch.Generator) -> list[SubgraphBatch]:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        rng = np.random.default_rng(seed)
        roots_np = roots.cpu().numpy()
        out = []
        for start in range(0, roots_np.size, self.batch_size):
            parts = [
                self._sample_root(int(r), rng) for r in roots_np[start : start + self.batch_size]
            ]
            sizes = np.array([p[0].size for p in parts], dtype=np.int64)
            offsets = np.cumsum(sizes) - sizes
            out.append(
                SubgraphBatch(
                    node_ids=torch.from_numpy(np.concatenate([p[0] for p in parts])),
                    batch=torch.from_numpy(np.repeat(np.arange(len(parts)), sizes)),
                    edge_index=torch.from_numpy(
                        np.concatenate(
                            [
                                np.stack([p[1], p[2]]) + off
                                for p, off in zip(parts, offsets, strict=True)
                            ],
                            axis=1,
                        )
                    ),
                    edge_ids=torch.from_numpy(np.concatenate([p[3] for p in parts])),
                    root_pos=torch.from_numpy(np.array([p[4] for p in parts]) + offsets),
                    num_subgraphs=len(parts),
                )
            )
        return out
