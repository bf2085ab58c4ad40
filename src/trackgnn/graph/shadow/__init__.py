"""ShaDow subgraph samplers for minibatch GNN training (Algorithm 2 of the scaling paper).

Semantics shared by every sampler: for each root vertex a frontier starts at the root; at each of
``depth`` levels every frontier vertex draws ``min(degree, fanout)`` distinct neighbours of the
symmetric adjacency ``A`` uniformly without replacement (or ``fanout`` draws with replacement when
``replace`` is set and the degree exceeds the fanout), and the drawn vertices, repeats included,
form the next frontier; the subgraph is the subgraph of the original directed edges induced by all
touched vertices. The ``b`` subgraphs of a minibatch are disjoint components of one
:class:`SubgraphBatch` carrying global vertex ids and original edge ids.

Roots may come from several events concatenated into one disjoint-union graph
(:func:`trackgnn.graph.csr.concat_graphs`; training joins its events with
:func:`trackgnn.training.gnn.union_graph`, which builds on it), so one minibatch mixes subgraphs
of many events; no subgraph crosses events because no edge does.

Samplers:

* ``reference``: per-root numpy implementation, the ground truth for tests;
* ``bulk``: the matrix-based sampler of the paper, ``k`` minibatches stacked into one problem, torch
  tensor operations (same code on CPU and CUDA; on the CPU two primitives, ``nonzero`` and floor
  division, run through numpy's faster kernels), no Python loop over roots or vertices;
* ``pyg``: adapter to torch-sparse's ``ego_k_hop_sample_adj``, the kernel behind PyG's
  ``ShaDowKHopSampler`` (optional; its without-replacement draw is biased, pytorch_sparse#385).

Modules: :mod:`.batch` (:class:`SubgraphBatch`), :mod:`.base` (the sampler interface),
:mod:`.reference`, :mod:`.bulk`, :mod:`.pyg` (the samplers), :mod:`.induced` (induced-edge
extraction), :mod:`.ops` (tensor primitives), :mod:`.roots` (the epoch's roots:
:func:`draw_roots`, the one root schedule of training, tests and benchmarks).
"""

from __future__ import annotations

import torch

from trackgnn.errors import TrackGNNError
from trackgnn.graph.csr import SamplingGraph
from trackgnn.graph.shadow.base import ShadowSampler
from trackgnn.graph.shadow.batch import SubgraphBatch
from trackgnn.graph.shadow.bulk import DRAW_METHODS, BulkSampler
from trackgnn.graph.shadow.induced import InducedExtractor
from trackgnn.graph.shadow.pyg import PygSampler
from trackgnn.graph.shadow.reference import ReferenceSampler
from trackgnn.graph.shadow.roots import draw_roots, epoch_roots

__all__ = [
    "DRAW_METHODS",
    "SAMPLER_NAMES",
    "BulkSampler",
    "InducedExtractor",
    "PygSampler",
    "ReferenceSampler",
    "ShadowSampler",
    "SubgraphBatch",
    "draw_roots",
    "epoch_roots",
    "make_sampler",
]

SAMPLER_NAMES = ("reference", "bulk", "pyg")


def make_sampler(
    name: str,
    graph: SamplingGraph,
    depth: int = 3,
    fanout: int = 6,
    batch_size: int = 256,
    k: int = 1,
    device: torch.device | str = "cpu",
    replace: bool = False,
    draw: str = "floyd",
) -> ShadowSampler:
    """Build the sampler called ``name`` (``reference``, ``bulk`` or ``pyg``).

    ``k``, ``device`` and ``draw`` apply to ``bulk`` only; ``reference`` and ``pyg`` run on the
    CPU and return their batches there.

    Raises:
        TrackGNNError: unknown name, bad parameter, or ``pyg`` without torch-sparse.
    """
    if name == "reference":
        return ReferenceSampler(graph, depth, fanout, batch_size, replace)
    if name == "bulk":
        return BulkSampler(graph, depth, fanout, batch_size, replace, k=k, device=device, draw=draw)
    if name == "pyg":
        return PygSampler(graph, depth, fanout, batch_size, replace)
    raise TrackGNNError(f"ShaDow sampler: unknown sampler {name!r}; choose one of {SAMPLER_NAMES}")
