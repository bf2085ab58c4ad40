"""Track building stage: scored edges of one event to a TrackML submission CSV."""

from __future__ import annotations

from pathlib import Path

import torch

from trackgnn.config import Config
from trackgnn.errors import InputError
from trackgnn.event_data import EventGraph, load_graph
from trackgnn.graph.components import build_tracks, write_submission
from trackgnn.models.checkpoint import resolve_device


def track_labels(cfg: Config, graph: EventGraph) -> torch.Tensor:
    """Track label ``[N]`` of each hit (``-1``: in no track) from a graph scored by the GNN.

    The track-building stage in memory; the ``tracks`` section of ``cfg`` sets the cut, minimum
    length and method.
    """
    device = torch.device(resolve_device(cfg.device))
    t = cfg.tracks
    return build_tracks(
        num_nodes=graph.n_hits,
        edge_index=graph.edge_index,
        scores=graph.scores,
        score_cut=t.score_cut,
        min_length=t.min_length,
        method=t.method,
        device=device,
    )


def run_build_tracks(cfg: Config, graph_file: str | Path, out: str | Path) -> dict[str, float]:
    """Cut the GNN scores, build tracks, and write ``hit_id,track_id`` for every hit of the event.

    Returns per-event figures: number of tracks, hits in tracks.
    """
    graph = load_graph(graph_file)
    if graph.scores is None:
        raise InputError(graph_file, "missing key(s) scores (not scored by the GNN)")
    labels = track_labels(cfg, graph)
    write_submission(graph.hit_id, labels, out)
    return track_figures(labels)


def track_figures(labels: torch.Tensor) -> dict[str, float]:
    """Number of tracks and of hits in tracks, from :func:`track_labels`."""
    in_tracks = labels >= 0
    return {
        "n_tracks": float(labels.max().item() + 1 if in_tracks.any() else 0),
        "hits_in_tracks": float(in_tracks.sum().item()),
    }
