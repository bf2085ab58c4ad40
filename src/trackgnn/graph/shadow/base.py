"""The interface of the ShaDow samplers: parameters, argument checks, ``sample``."""

from __future__ import annotations

import abc
from typing import ClassVar

import torch
from torch import Tensor

from trackgnn.errors import TrackGNNError
from trackgnn.graph.csr import SamplingGraph
from trackgnn.graph.shadow.batch import SubgraphBatch, check_positive_int


class ShadowSampler(abc.ABC):
    """Common interface: ``sample(roots, generator)`` returns one batch per ``batch_size`` roots.

    Args:
        graph: the sampling graph (:func:`trackgnn.graph.csr.build_sampling_graph`).
        depth: number of expansion levels ``d``.
        fanout: neighbours drawn per frontier vertex ``s``.
        batch_size: roots per minibatch ``b``.
        replace: draw ``fanout`` neighbours with replacement when the degree exceeds ``fanout``
            (the mode in which torch-sparse's draw is unbiased); default without replacement.
    """

    name: ClassVar[str]

    def __init__(
        self,
        graph: SamplingGraph,
        depth: int = 3,
        fanout: int = 6,
        batch_size: int = 256,
        replace: bool = False,
    ) -> None:
        if not isinstance(graph, SamplingGraph):
            raise TrackGNNError(
                f"ShaDow sampler: graph must be a SamplingGraph, got {type(graph).__name__}"
            )
        self.graph = graph
        self.depth = check_positive_int(depth, "depth")
        self.fanout = check_positive_int(fanout, "fanout")
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.replace = bool(replace)

    def sample(self, roots: Tensor, generator: torch.Generator) -> list[SubgraphBatch]:
        """Sample one subgraph per root; consecutive ``batch_size`` roots form one batch.

        The last batch is smaller when ``len(roots)`` is not a multiple of ``batch_size``. The
        result is a deterministic function of ``roots`` and the generator's state.

        Raises:
            TrackGNNError: roots not a 1-D integer tensor of vertex ids of the graph.
        """
        roots = self._check_roots(roots)
        if not isinstance(generator, torch.Generator):
            raise TrackGNNError(
                f"ShaDow sampler: generator must be a torch.Generator, got "
                f"{type(generator).__name__}"
            )
        if roots.numel() == 0:
            return []
        return self._sample(roots, generator)

    def _check_roots(self, roots: object) -> Tensor:
        if not isinstance(roots, Tensor):
            raise TrackGNNError(
                f"ShaDow sampler: roots must be a tensor, got {type(roots).__name__}"
            )
        if roots.dtype.is_floating_point or roots.dtype.is_complex or roots.dtype == torch.bool:
            raise TrackGNNError(
                f"ShaDow sampler: roots must be integer vertex ids, got {roots.dtype}"
            )
        if roots.dim() != 1:
            raise TrackGNNError(f"ShaDow sampler: roots must be 1-D, got shape {list(roots.shape)}")
        roots = roots.to(torch.int64)
        if roots.numel() and (int(roots.min()) < 0 or int(roots.max()) >= self.graph.num_nodes):
            raise TrackGNNError(
                f"ShaDow sampler: root ids must lie in [0, {self.graph.num_nodes}), got range "
                f"[{int(roots.min())}, {int(roots.max())}]"
            )
        return roots

    @abc.abstractmethod
    def _sample(self, roots: Tensor, generator: torch.Generator) -> list[SubgraphBatch]:
        """Sample validated, non-empty int64 roots."""
