"""Per-hit features and the truth graph."""

from __future__ import annotations

import numpy as np
import torch

from tests.test_io import small_event
from trackgnn.features import build_features, truth_graph


def test_truth_graph_connects_consecutive_layers_and_all_overlap_pairs() -> None:
    # particle 1: layers 5, 10, 20 (two overlapping hits), 30; particle 2: layers 10, 20
    hit_index = np.array([0, 1, 2, 3, 4, 5, 6])
    particle = np.array([1, 1, 1, 1, 1, 2, 2])
    distance = np.array([1.0, 2.0, 2.1, 3.0, 0.5, 1.0, 2.0])
    layer = np.array([10, 20, 20, 30, 5, 10, 20])
    edges = {tuple(e) for e in truth_graph(hit_index, particle, distance, layer).T.tolist()}
    assert edges == {(4, 0), (0, 1), (0, 2), (1, 3), (2, 3), (5, 6)}
    # never an edge within one layer (the overlap pair 1-2 is not connected)
    assert (1, 2) not in edges and (2, 1) not in edges


def test_truth_graph_orders_by_distance_not_by_input_order() -> None:
    edges = truth_graph(
        np.array([7, 8, 9]), np.array([3, 3, 3]), np.array([3.0, 1.0, 2.0]), np.array([30, 10, 20])
    )
    assert edges.T.tolist() == [[8, 9], [9, 7]]


def test_build_features_values() -> None:
    feats = build_features(small_event())
    assert feats.x.shape == (6, 8) and feats.x.dtype == torch.float32
    r = torch.hypot(torch.tensor([30.0, 70, 115, 0, 0, 50]), torch.tensor([1.0, 2, 3, 32, 72, 50]))
    torch.testing.assert_close(feats.r, r)
    # hit 1 has two cells: count 2, extent u 2 (ch0 10..11), extent v 1
    torch.testing.assert_close(feats.x[0, 4:], torch.log1p(torch.tensor([2.0, 0.15, 2.0, 1.0])))
    assert feats.particle_id[5] == 0 and feats.pt[5] == 0
    torch.testing.assert_close(feats.pt[:3], torch.ones(3))
    assert feats.nhits.tolist() == [3, 3, 3, 2, 2, 0]
    assert feats.primary[:5].all()
    assert feats.truth_edges.T.tolist() == [[0, 1], [1, 2], [3, 4]]


def test_features_without_truth() -> None:
    event = small_event()
    event.truth = None
    event.particles = None
    feats = build_features(event)
    assert feats.truth_edges.shape == (2, 0)
    assert (feats.particle_id == 0).all()
