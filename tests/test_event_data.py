"""The per-event contract: graph files round-trip, bad files are named, PyG export is valid."""

from __future__ import annotations

import pytest
import torch

from trackgnn.errors import InputError
from trackgnn.event_data import EventGraph, EventHits, load_graph, load_hits, save_event
from trackgnn.io import save_tensors

from .conftest import toy_graph


def test_graph_file_round_trips_with_the_same_bytes(tmp_path):
    graph = EventGraph.from_dict(toy_graph(3), "toy")
    save_event(graph, tmp_path / "a.pt")
    loaded = load_graph(tmp_path / "a.pt")
    assert loaded.event_id == 3 and loaded.n_hits == 192 and loaded.n_edges == graph.n_edges
    for name in ("x", "edge_index", "y", "y_pid", "truth_edges", "particle_id", "nhits"):
        assert torch.equal(getattr(loaded, name), getattr(graph, name)), name
    save_event(loaded, tmp_path / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()


def test_scoring_keeps_the_previous_scores_and_keep_edges_restricts_every_edge_tensor():
    graph = EventGraph.from_dict(toy_graph(4), "toy")
    scores = torch.linspace(0, 1, graph.n_edges)
    kept = graph.keep_edges(scores > 0.5, scores)
    assert kept.n_edges == int((scores > 0.5).sum())
    assert torch.equal(kept.y, graph.y[scores > 0.5]) and (kept.scores > 0.5).all()
    rescored = kept.with_scores(torch.zeros(kept.n_edges))
    assert torch.equal(rescored.filter_scores, kept.scores)
    kept.check("kept")  # still a consistent graph


def test_a_features_file_is_not_a_graph_and_the_error_names_it(tmp_path):
    contents = toy_graph(5)
    hits_only = {k: v for k, v in contents.items() if k not in ("edge_index", "y", "y_pid")}
    path = tmp_path / "features.pt"
    save_tensors(hits_only, path)
    assert isinstance(load_hits(path), EventHits)
    with pytest.raises(InputError, match="missing key") as err:
        load_graph(path)
    message = str(err.value)
    assert message.startswith(f"{path}: missing key(s) edge_index, y, y_pid")
    assert "\n" not in message


def test_hits_of_a_graph_drop_the_edges(tmp_path):
    path = tmp_path / "graph.pt"
    save_tensors(toy_graph(6), path)
    hits = load_hits(path)
    assert type(hits) is EventHits and not hasattr(hits, "edge_index")


def test_pyg_export_is_a_valid_data_object_with_the_acorn_attribute_names():
    pytest.importorskip("torch_geometric")
    graph = EventGraph.from_dict(toy_graph(7), "toy")
    data = graph.to_pyg()
    assert data.validate(raise_on_error=True)
    assert data.num_nodes == graph.n_hits and data.num_edges == graph.n_edges
    assert torch.equal(data.edge_index, graph.edge_index)
    assert torch.equal(data.y, graph.y) and torch.equal(data.particle_id, graph.particle_id)
    assert data.pos.shape == (graph.n_hits, 3)
    assert torch.equal(data.pos[:, 0], graph.r)
