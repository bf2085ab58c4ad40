"""Adapter to torch-sparse's ``ego_k_hop_sample_adj``, the kernel of PyG's ``ShaDowKHopSampler``.

Optional (needs torch-sparse); a benchmark baseline, not used in training.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from trackgnn.errors import TrackGNNError
from trackgnn.graph.csr import SamplingGraph
from trackgnn.graph.shadow.base import ShadowSampler
from trackgnn.graph.shadow.batch import SubgraphBatch
from trackgnn.graph.shadow.induced import InducedExtractor


def _load_ego_op() -> Callable[..., tuple[Tensor, ...]]:
    try:
        import torch_sparse  # noqa: F401  (importing registers torch.ops.torch_sparse)
    except ImportError as error:
        raise TrackGNNError(
            "ShaDow sampler 'pyg' needs the optional package torch-sparse, which is not "
            "installed; use sampler 'bulk' or 'reference'"
        ) from error
    return torch.ops.torch_sparse.ego_k_hop_sample_adj


class PygSampler(ShadowSampler):
    """Adapter to torch-sparse's ``ego_k_hop_sample_adj``, one call per minibatch as in PyG.

    The kernel draws from torch's global RNG in parallel threads; the adapter seeds a forked global
    RNG from ``generator`` so results depend on it, but are reproducible only with one thread.
    Its without-replacement draw is biased (pytorch_sparse#385): compare distributions only with
    ``replace=True``.

    Args:
        op: the kernel; defaults to ``torch.ops.torch_sparse.ego_k_hop_sample_adj`` (tests inject
            a stand-in with the same contract).
    """

    name = "pyg"

    def __init__(
        self,
        graph: SamplingGraph,
        depth: int = 3,
        fanout: int = 6,
        batch_size: int = 256,
        replace: bool = False,
        op: Callable[..., tuple[Tensor, ...]] | None = None,
    ) -> None:
        super().__init__(graph, depth, fanout, batch_size, replace)
        self._op = op if op is not None else _load_ego_op()
        self.graph = graph.to("cpu")  # the kernel has a CPU implementation only
        # built once: graphs with self-loops or repeated edges take their batch edges from the
        # vertex sets (the extractor's tables cost O(E) to build)
        self._extract = None if self.graph.simple else InducedExtractor(self.graph)

    def _convert(
        self,
        out_rowptr: Tensor,
        out_col: Tensor,
        n_id: Tensor,
        e_id: Tensor,
        ptr: Tensor,
        root_n_id: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Batch edges (local src, local dst, original id) from the kernel's induced CSR."""
        g = self.graph
        if g.simple:
            # every original edge u -> w is exactly the A entry (u, w) with fwd_eid >= 0
            row_local = torch.repeat_interleave(
                torch.arange(n_id.numel()), out_rowptr[1:] - out_rowptr[:-1]
            )
            eid = g.fwd_eid.index_select(0, e_id)
            keep = eid >= 0
            return row_local[keep], out_col[keep], eid[keep]
        # self-loops or repeated edges are not entries of A: extract from the vertex sets
        row = torch.repeat_interleave(torch.arange(ptr.numel() - 1), ptr[1:] - ptr[:-1])
        keys = row * g.num_nodes + n_id
        roots = n_id.index_select(0, root_n_id)
        assert self._extract is not None  # built for every non-simple graph
        (batch,) = self._extract(keys, roots, roots.numel())
        return batch.edge_index[0], batch.edge_index[1], batch.edge_ids

    def _sample(self, roots: Tensor, generator: torch.Generator) -> list[SubgraphBatch]:
        g = self.graph
        roots = roots.cpu()
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        out = []
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # the CPU generator only
            for start in range(0, roots.numel(), self.batch_size):
                chunk = roots[start : start + self.batch_size]
                out_rowptr, out_col, n_id, e_id, ptr, root_n_id = self._op(
                    g.rowptr, g.col, chunk, self.depth, self.fanout, self.replace
                )
                src, dst, eid = self._convert(out_rowptr, out_col, n_id, e_id, ptr, root_n_id)
                out.append(
                    SubgraphBatch(
                        node_ids=n_id,
                        batch=torch.repeat_interleave(
                            torch.arange(chunk.numel()), ptr[1:] - ptr[:-1]
                        ),
                        edge_index=torch.stack([src, dst]),
                        edge_ids=eid,
                        root_pos=root_n_id,
                        num_subgraphs=chunk.numel(),
                    )
                )
        return out
