"""What the GNN trains on: event graphs as full graphs, azimuthal sectors or ShaDow minibatches.

Training modes (``gnn.mode``):

* ``full``: one event graph (or one azimuthal sector of it, ``gnn.phi_sectors``) per optimizer
  step; with P ranks each rank takes every P-th graph of the epoch's shuffled order
  (:class:`FullGraphStream`).
* ``shadow``: the training events are joined into one disjoint-union graph (:func:`union_graph`,
  over :func:`trackgnn.graph.csr.concat_graphs`), so a minibatch mixes roots (and subgraphs) from
  all events. Every vertex with at least one edge is a root once per epoch (or
  ``roots_per_epoch`` of them, drawn afresh each epoch, uniformly without replacement), in a
  seeded shuffled order (:func:`trackgnn.graph.shadow.draw_roots`); each step takes the next
  ``batch_size`` roots (global), split in P shares differing by at most one root; the loss is over
  all induced edges of the sampled subgraphs, with edges incident to a root weighted by
  ``root_weight`` (:class:`ShadowStream`).

Any world size takes every graph (or root) once per epoch; where the data does not split evenly,
ranks left without any in an epoch's last step train on a zero-weight stand-in, and
``imbalance()`` says so.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import IterableDataset

from trackgnn.config import Config
from trackgnn.errors import TrackGNNError
from trackgnn.event_data import GraphBatch
from trackgnn.graph.csr import concat_graphs


def union_graph(graphs: list[GraphBatch]) -> GraphBatch:
    """The disjoint union of event graphs with their features, labels and weights.

    The edges are joined by :func:`trackgnn.graph.csr.concat_graphs` (node ids offset event by
    event); node and edge tensors are concatenated in the same order, so they line up.

    Raises:
        TrackGNNError: no graphs, or an invalid edge list.
    """
    union = concat_graphs([(g.edge_index, int(g.x.shape[0])) for g in graphs])
    return GraphBatch(
        x=torch.cat([g.x for g in graphs]),
        edge_attr=torch.cat([g.edge_attr for g in graphs]),
        edge_index=union.edge_index,
        y=torch.cat([g.y for g in graphs]),
        weight=torch.cat([g.weight for g in graphs]),
        n_samples=len(graphs),
    )


def split_phi_sectors(graph: GraphBatch, phi: Tensor, n_sectors: int) -> list[GraphBatch]:
    """The graph's edges in ``n_sectors`` equal azimuthal sectors, by the phi of the inner hit.

    Each sector is a graph of its edges and the nodes they touch (renumbered). Tracks are local
    in phi, so a sector is a natural minibatch: the same edges per epoch as whole events, but
    ``n_sectors`` times as many optimizer steps (``bench/shadow_vs_full.py``: validation AUC 0.87
    instead of 0.79 after 3 epochs with 16 sectors on the default run's filtered graphs).
    """
    if n_sectors == 1:
        return [graph]
    src = graph.edge_index[0]
    sector = ((phi[src] + torch.pi) / (2 * torch.pi) * n_sectors).long().clamp(0, n_sectors - 1)
    parts = []
    for k in range(n_sectors):
        edges = torch.nonzero(sector == k).flatten()
        if len(edges) == 0:
            continue
        nodes, local = torch.unique(graph.edge_index[:, edges], return_inverse=True)
        parts.append(
            GraphBatch(
                x=graph.x[nodes],
                edge_attr=graph.edge_attr[edges],
                edge_index=local.view(2, -1),
                y=graph.y[edges],
                weight=graph.weight[edges],
                n_samples=1,
            )
        )
    return parts


class _Timer:
    """Accumulates seconds spent in sampling during an epoch."""

    def __init__(self) -> None:
        self.sampling_s = 0.0


def stand_in_batch(graph: GraphBatch) -> GraphBatch:
    """A one-edge graph of zero weight: the step of a rank left without data.

    Every rank must take the same number of steps (each step's gradient all-reduce needs all of
    them); a rank whose share of the epoch ran out steps on this, which adds nothing to the
    gradient, instead of the other ranks' data being dropped.
    """
    ends = graph.edge_index[:, :1]
    nodes, local = torch.unique(ends, return_inverse=True)
    return GraphBatch(
        x=graph.x[nodes],
        edge_attr=graph.edge_attr[:1],
        edge_index=local.view(2, 1),
        y=graph.y[:1],
        weight=torch.zeros(1),
        n_samples=0,
    )


class FullGraphStream(IterableDataset):
    """Each epoch: the events in a seeded shuffled order, every ``world_size``-th for this rank.

    Every event is trained on once per epoch. When the events do not split evenly, the ranks left
    without one in the last step step on :func:`stand_in_batch` (see :meth:`imbalance`).
    """

    def __init__(self, graphs: list[GraphBatch], seed: int, rank: int, world_size: int) -> None:
        self.graphs, self.seed, self.rank, self.world_size = graphs, seed, rank, world_size
        self.epoch = 0
        self.timer = _Timer()
        self.stand_in = stand_in_batch(graphs[0]) if graphs else None

    def __len__(self) -> int:
        return math.ceil(len(self.graphs) / self.world_size)

    def imbalance(self) -> str | None:
        """A sentence on the uneven last step, or None when every step is full on every rank."""
        rest = len(self.graphs) % self.world_size
        if not rest:
            return None
        return (
            f"{len(self.graphs)} training graphs over {self.world_size} ranks: the last step of "
            f"each epoch trains on {rest}, {self.world_size - rest} rank(s) step on an empty "
            "stand-in (no graph is dropped)"
        )

    def __iter__(self) -> Iterator[GraphBatch]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.graphs), generator=gen)
        mine = order[self.rank :: self.world_size]
        yield from (self.graphs[int(i)] for i in mine)
        for _ in range(len(self) - len(mine)):
            yield self.stand_in


def rank_share(batch: Tensor, rank: int, world: int) -> Tensor:
    """This rank's part of a global batch: contiguous, sizes differing by at most one."""
    return torch.tensor_split(batch, world)[rank]


class ShadowStream(IterableDataset):
    """Each epoch: shuffled roots, ``batch_size`` per global step, this rank's share sampled.

    An epoch's roots are the first ``roots_per_epoch`` of a fresh random permutation of the
    vertices with an edge: a uniform draw without replacement, so every vertex is equally likely
    to be a root and none is a root twice in an epoch (all of them once when it is unset).
    Every drawn root is trained on once: a step's roots are split in shares differing by at
    most one root (:func:`rank_share`); in a last step with fewer roots than ranks, the ranks
    without a root step on :func:`stand_in_batch`. The sampler draws ``k`` minibatches per call
    (the bulk sampler's stacked problem).
    """

    def __init__(self, graph: GraphBatch, cfg: Config, device: torch.device, rank: int, world: int):
        from trackgnn.graph.csr import build_sampling_graph
        from trackgnn.graph.shadow import make_sampler

        sc = cfg.gnn.shadow
        self.graph, self.seed, self.rank, self.world = graph, cfg.seed, rank, world
        self.batch_size, self.k = sc.batch_size, sc.k
        self.root_weight = sc.root_weight
        n = graph.x.shape[0]
        degree = torch.bincount(graph.edge_index.flatten(), minlength=n)
        # Isolated vertices would give empty subgraphs: no edges, nothing to learn.
        self.roots = torch.nonzero(degree > 0).flatten()
        self.roots_per_epoch = min(sc.roots_per_epoch or len(self.roots), len(self.roots))
        sampling_graph = build_sampling_graph(graph.edge_index, n)
        self.sampler = make_sampler(
            sc.sampler,
            sampling_graph,
            depth=sc.depth,
            fanout=sc.fanout,
            batch_size=math.ceil(sc.batch_size / world),
            k=sc.k,
            device=device,
        )
        self.device = device
        self.epoch = 0
        self.timer = _Timer()
        self.stand_in = stand_in_batch(graph) if graph.edge_index.shape[1] else None

    def __len__(self) -> int:
        return math.ceil(self.roots_per_epoch / self.batch_size)

    def imbalance(self) -> str | None:
        """A sentence on ranks without roots in the last step, or None when there are none."""
        if not len(self.roots):
            return None
        if self.batch_size < self.world:
            return (
                f"ShaDow: a global batch of {self.batch_size} roots leaves "
                f"{self.world - self.batch_size} of {self.world} ranks on an empty stand-in "
                "in every step"
            )
        rest = self.roots_per_epoch % self.batch_size or self.batch_size
        if rest >= self.world:
            return None
        return (
            f"ShaDow: the last step of each epoch has {rest} root(s) for {self.world} ranks; "
            f"{self.world - rest} rank(s) step on an empty stand-in (no root is dropped)"
        )

    def epoch_roots(self) -> Tensor:
        """This epoch's roots in training order (the same on every rank): a seeded uniform draw
        of ``roots_per_epoch`` vertices without replacement, fresh each epoch
        (:func:`trackgnn.graph.shadow.draw_roots`)."""
        from trackgnn.graph.shadow import draw_roots

        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return draw_roots(self.roots, self.roots_per_epoch, gen)

    def _rank_roots(self, order: Tensor, step: int) -> Tensor:
        batch = order[step * self.batch_size : (step + 1) * self.batch_size]
        return rank_share(batch, self.rank, self.world)

    def __iter__(self) -> Iterator[GraphBatch]:
        order = self.epoch_roots()
        sample_gen = torch.Generator(device=self.device).manual_seed(
            (self.seed * 1_000_003 + self.epoch) * 4099 + self.rank
        )
        steps = len(self)
        for first in range(0, steps, self.k):
            start = time.perf_counter()
            chunk = [self._rank_roots(order, s) for s in range(first, min(first + self.k, steps))]
            # A rank's share runs empty only in the epoch's last step (or in every step if the
            # batch has fewer roots than ranks), so the empty shares come last.
            real = [c for c in chunk if len(c)]
            if all(len(c) == self.sampler.batch_size for c in real[:-1]):
                # One stacked problem of k minibatches (the bulk sampler's point).
                subgraphs = (
                    self.sampler.sample(torch.cat(real).to(self.device), sample_gen) if real else []
                )
            else:  # uneven shares (batch_size not divisible by world size): one call per step
                subgraphs = [
                    sg for c in real for sg in self.sampler.sample(c.to(self.device), sample_gen)
                ]
            batches = [self._gather(sg, len(c)) for sg, c in zip(subgraphs, real, strict=True)]
            batches += [self.stand_in] * (len(chunk) - len(real))
            self.timer.sampling_s += time.perf_counter() - start
            yield from batches

    def _gather(self, sg: Any, n_roots: int) -> GraphBatch:
        g = self.graph
        node_ids, edge_ids = sg.node_ids.cpu(), sg.edge_ids.cpu()
        weight = torch.ones(len(edge_ids))
        if self.root_weight != 1.0:
            weight[sg.root_edge_mask.cpu()] = self.root_weight
        return GraphBatch(
            x=g.x[node_ids],
            edge_attr=g.edge_attr[edge_ids],
            edge_index=sg.edge_index.cpu(),
            y=g.y[edge_ids],
            weight=weight,
            n_samples=n_roots,
        )


def training_stream(
    cfg: Config,
    graphs: list[GraphBatch],
    phi_column: int | None,
    device: torch.device,
    rank: int,
    world: int,
    source: str = "training graphs",
) -> FullGraphStream | ShadowStream:
    """The stream of ``cfg.gnn.mode`` over the training ``graphs`` for this rank.

    ``phi_column``: the node feature holding phi / pi, needed to split sectors (``source``
    names the graphs in the error when it is missing).
    """
    g = cfg.gnn
    if g.mode == "shadow":
        return ShadowStream(union_graph(graphs), cfg, device, rank, world)
    parts: Sequence[GraphBatch] = graphs
    if g.phi_sectors > 1:
        if phi_column is None:
            raise TrackGNNError(f"{source}: no phi feature to split sectors by")
        parts = [
            part
            for graph in graphs
            for part in split_phi_sectors(graph, graph.x[:, phi_column] * torch.pi, g.phi_sectors)
        ]
    return FullGraphStream(list(parts), cfg.seed, rank, world)
