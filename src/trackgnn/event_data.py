"""One event's data as the stages after ``features`` write and read it: the per-event contract.

Two typed containers, one file format, one load-and-check:

* :class:`EventHits` (the ``features`` stage's output): per-hit features and geometry, the hits'
  truth (particle, its pT and number of hits; 0 / empty without truth) and the truth graph;
* :class:`EventGraph` (``build_graph``, ``filter_graph`` and ``score_edges`` outputs): the hits
  plus candidate edges, their labels and, once scored, the stage's scores.

On disk each is a plain dict of tensors (:func:`trackgnn.io.save_tensors`, loaded with
``weights_only``), written by :func:`save_event` and read only by :func:`load_hits` /
:func:`load_graph`, which check every shape, dtype and index and name the file in a one-line
:class:`~trackgnn.errors.InputError`. :class:`GraphBatch` is what the GNN trains on (an event
graph or a batch of ShaDow subgraphs), made from an event graph by :meth:`EventGraph.to_batch`.

PyG's ``Data`` is not the container: its attributes are untyped and unchecked, and the pipeline
needs neither its batching nor its loaders. :meth:`EventGraph.to_pyg` exports an event graph as
a ``torch_geometric.data.Data`` with the attribute names of ACORN and gnn_tracking graphs
(``x``, ``edge_index``, ``y``, ``hit_id``, ``particle_id``, ``pt``, ...), so their models and
tools can read our graphs.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor

from trackgnn.errors import InputError
from trackgnn.io import load_tensors, save_tensors

#: Per-hit tensors every event holds, each ``[N]``.
HIT_FIELDS = ("hit_id", "r", "phi", "z", "eta", "particle_id", "pt", "nhits")
#: Optional per-hit truth (written by the features stage, read by analyses).
OPTIONAL_HIT_FIELDS = ("particle_eta", "primary", "cluster_eta")
#: Per-edge tensors of a graph, each ``[E]`` (``scores``, ``filter_scores`` once scored).
EDGE_FIELDS = ("y", "y_pid")
OPTIONAL_EDGE_FIELDS = ("scores", "filter_scores")

Hits = TypeVar("Hits", bound="EventHits")


@dataclass(kw_only=True)
class EventHits:
    """One event's hits (``N``) with ``F`` features each, their truth and the truth graph.

    Shapes:
        ``x`` ``[N, F]`` float; ``hit_id``, ``particle_id``, ``nhits`` ``[N]`` int;
        ``r``, ``phi``, ``z``, ``eta``, ``pt`` ``[N]`` float; ``truth_edges`` ``[2, T]`` int64
        (hit indices, consecutive hits of one particle). ``particle_id`` is 0 for noise.
        ``cluster_eta`` ``[N]`` float: pseudorapidity of the track direction a pixel hit's
        cluster implies (:func:`trackgnn.features.cluster_eta`), in [-4, 4], or
        ``NO_CLUSTER_ETA`` where there is none.
    """

    event_id: int
    hit_id: Tensor
    x: Tensor
    feature_names: list[str] | None = None
    r: Tensor
    phi: Tensor
    z: Tensor
    eta: Tensor
    particle_id: Tensor
    pt: Tensor
    nhits: Tensor
    truth_edges: Tensor
    particle_eta: Tensor | None = None
    primary: Tensor | None = None
    cluster_eta: Tensor | None = None

    @property
    def n_hits(self) -> int:
        return int(self.x.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """The file contents: every set field (``event_id`` as a 0-d int64 tensor)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = value
        out["event_id"] = torch.tensor(int(self.event_id), dtype=torch.int64)
        return out

    def to(self: Hits, device: torch.device | str) -> Hits:
        """A copy with every tensor on ``device``."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if torch.is_tensor(getattr(self, f.name))
        }
        return dataclasses.replace(self, **moved)

    def hits(self) -> EventHits:
        """Only the hit part (what a new graph is built from)."""
        return EventHits(**_tensors_of(self))

    @classmethod
    def from_dict(cls: type[Hits], data: dict[str, Any], source: str | os.PathLike[str]) -> Hits:
        """The checked container of a loaded file's dict (``source`` names it in errors)."""
        names = [f.name for f in dataclasses.fields(cls)]
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [n for n in required if n not in data]
        if missing:
            raise InputError(source, f"missing key(s) {', '.join(missing)}")
        values = {n: data[n] for n in names if n in data}
        event_id = values["event_id"]
        values["event_id"] = int(event_id.item() if torch.is_tensor(event_id) else event_id)
        names_value = values.get("feature_names")
        if names_value is not None and not (
            isinstance(names_value, list) and all(isinstance(n, str) for n in names_value)
        ):
            raise InputError(source, "feature_names must be a list of strings")
        event = cls(**values)
        event.check(source)
        return event

    def check(self, source: str | os.PathLike[str]) -> None:
        """Raise InputError (naming ``source``) where tensors disagree in shape, dtype or range."""
        x = self.x
        if not torch.is_tensor(x) or x.ndim != 2 or not x.is_floating_point():
            raise InputError(source, "x must be a 2-D float tensor [N, F]")
        n = self.n_hits
        if self.feature_names is not None and len(self.feature_names) != x.shape[1]:
            raise InputError(
                source, f"feature_names names {len(self.feature_names)} columns, x has {x.shape[1]}"
            )
        for name in HIT_FIELDS + OPTIONAL_HIT_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if not torch.is_tensor(value) or value.shape != (n,):
                raise InputError(source, f"{name} must have shape [{n}] like x")
        _check_edges(self.truth_edges, "truth_edges", n, source)


@dataclass(kw_only=True)
class EventGraph(EventHits):
    """An event's hits with ``E`` candidate edges (inner hit first), labels and scores.

    Shapes:
        ``edge_index`` ``[2, E]`` int64; ``y`` (the edge is in the truth graph) and ``y_pid``
        (both hits of one particle) ``[E]`` bool; ``scores`` ``[E]`` float: the scores of the
        stage that wrote the file (filter, then GNN), ``filter_scores`` the filter's once the GNN
        has scored.
    """

    edge_index: Tensor
    y: Tensor
    y_pid: Tensor
    scores: Tensor | None = None
    filter_scores: Tensor | None = None

    @property
    def n_edges(self) -> int:
        return int(self.edge_index.shape[1])

    @classmethod
    def from_hits(cls, hits: EventHits, edge_index: Tensor, y: Tensor, y_pid: Tensor) -> EventGraph:
        """A new (unscored) graph on ``hits``."""
        return cls(**_tensors_of(hits), edge_index=edge_index, y=y, y_pid=y_pid)

    def keep_edges(self, keep: Tensor, scores: Tensor) -> EventGraph:
        """The graph restricted to the edges ``keep`` (bool ``[E]``), scored by ``scores[keep]``."""
        return dataclasses.replace(
            self,
            edge_index=self.edge_index[:, keep],
            y=self.y[keep],
            y_pid=self.y_pid[keep],
            scores=scores[keep],
            filter_scores=None,
        )

    def with_scores(self, scores: Tensor) -> EventGraph:
        """The graph scored anew; the previous scores are kept as ``filter_scores``."""
        return dataclasses.replace(self, scores=scores, filter_scores=self.scores)

    def check(self, source: str | os.PathLike[str]) -> None:
        super().check(source)
        _check_edges(self.edge_index, "edge_index", self.n_hits, source)
        for name in EDGE_FIELDS + OPTIONAL_EDGE_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if not torch.is_tensor(value) or value.shape != (self.n_edges,):
                raise InputError(source, f"{name} must have shape [{self.n_edges}] like edge_index")

    def to_batch(self) -> GraphBatch:
        """What the GNN trains on and scores: features, edge features, ``y_pid`` labels."""
        from trackgnn.models.edges import hit_edge_features

        ei = self.edge_index
        return GraphBatch(
            x=self.x.float(),
            edge_attr=hit_edge_features(self.r, self.phi, self.z, self.eta, ei).float(),
            edge_index=ei,
            y=self.y_pid.float(),
            weight=torch.ones(ei.shape[1]),
            n_samples=1,
        )

    def to_pyg(self) -> Any:
        """The graph as a ``torch_geometric.data.Data`` (ACORN / gnn_tracking attribute names):
        ``y`` is the truth-graph label, ``y_pid`` the same-particle one, ``pos`` = (r, phi, z)."""
        from torch_geometric.data import Data

        data = Data(**{k: v for k, v in self.to_dict().items() if k != "feature_names"})
        data.pos = torch.stack([self.r, self.phi, self.z], dim=1)
        data.feature_names = self.feature_names
        return data


def _tensors_of(hits: EventHits) -> dict[str, Any]:
    # dataclasses.asdict deep-copies tensors; keep the same tensor objects instead.
    return {f.name: getattr(hits, f.name) for f in dataclasses.fields(EventHits)}


def _check_edges(edges: Any, name: str, n_hits: int, source: str | os.PathLike[str]) -> None:
    if not torch.is_tensor(edges) or edges.ndim != 2 or edges.shape[0] != 2:
        raise InputError(source, f"{name} must have shape [2, E]")
    if edges.dtype != torch.int64:
        raise InputError(source, f"{name} must be int64, not {edges.dtype}")
    if edges.numel() and (int(edges.min()) < 0 or int(edges.max()) >= n_hits):
        raise InputError(source, f"{name} refers to hits outside 0..{n_hits - 1}")


@dataclass
class GraphBatch:
    """What the GNN trains on: one event graph or a batch of ShaDow subgraphs.

    Shapes: ``x`` ``[N, F]``, ``edge_attr`` ``[E, D]``, ``edge_index`` ``[2, E]``, ``y`` and
    ``weight`` ``[E]`` (the loss weight of each edge); ``n_samples`` counts the roots (ShaDow)
    or graphs (full) of the batch on this rank, 0 for a rank's zero-weight stand-in.
    """

    x: Tensor
    edge_attr: Tensor
    edge_index: Tensor
    y: Tensor
    weight: Tensor
    n_samples: int = field(default=1)

    def to(self, device: torch.device | str) -> GraphBatch:
        return GraphBatch(
            self.x.to(device),
            self.edge_attr.to(device),
            self.edge_index.to(device),
            self.y.to(device),
            self.weight.to(device),
            self.n_samples,
        )


def load_hits(path: str | os.PathLike[str]) -> EventHits:
    """A features file (or any later stage's file) as checked :class:`EventHits`."""
    return EventHits.from_dict(load_tensors(path), path).hits()


def load_graph(path: str | os.PathLike[str]) -> EventGraph:
    """A graph file (``build_graph``, ``filter_graph``, ``score_edges``) as a checked
    :class:`EventGraph`."""
    return EventGraph.from_dict(load_tensors(path), path)


def save_event(event: EventHits, path: str | os.PathLike[str]) -> None:
    """Write an event's file atomically (same bytes for the same event)."""
    save_tensors(event.to_dict(), path)
