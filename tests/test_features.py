"""Per-hit features and the truth graph."""

from __future__ import annotations

import numpy as np
import torch

from tests.test_io import small_event
from trackgnn.features import FEATURE_NAMES, build_features, truth_graph
from trackgnn.geometry import Detector
from trackgnn.models.edges import NO_CLUSTER_ETA
from trackgnn.simulation.generator import simulate_event


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


def test_cluster_eta_follows_the_particle_in_the_pixel_barrel_and_is_absent_in_strips() -> None:
    event, _ = simulate_event(Detector.load(), event_id=1, mu=10, seed=3)
    feats = build_features(event)
    cluster_eta = feats.cluster_eta.numpy()
    r, z, eta = feats.r.numpy(), feats.z.numpy(), feats.particle_eta.numpy()
    barrel = (feats.particle_id.numpy() != 0) & feats.primary.numpy() & (r < 200) & (abs(z) < 480)
    barrel &= feats.pt.numpy() > 0.5
    assert barrel.sum() > 200
    # The v extent measures |cot theta| of the crossing once rotated to the global frame; the
    # sign comes from pointing away from the beam spot.
    assert np.corrcoef(cluster_eta[barrel], eta[barrel])[0, 1] > 0.9
    assert np.median(np.abs(cluster_eta[barrel] - eta[barrel])) < 0.25
    # Strips measure one axis: no direction. The hit features themselves are unchanged.
    assert (cluster_eta[r > 300] == NO_CLUSTER_ETA).all()
    assert (np.abs(cluster_eta[r < 200]) <= 4).mean() > 0.9
    assert feats.x.shape[1] == len(FEATURE_NAMES) == 8


def test_cluster_eta_is_absent_without_cells() -> None:
    event = small_event()
    event.cells = None
    assert (build_features(event).cluster_eta == NO_CLUSTER_ETA).all()
