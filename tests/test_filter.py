"""Edge filter: inputs, chunked inference, negative sampling, training and the filter stage."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from tests.test_embedding import synthetic_features, tiny_config
from trackgnn.errors import CheckpointError, InputError
from trackgnn.event_data import load_graph
from trackgnn.graph.construction import filter_graph
from trackgnn.graph.radius import radius_graph
from trackgnn.graph.truth import edge_labels
from trackgnn.io import save_tensors
from trackgnn.models.edges import (
    CLUSTER_EDGE_FEATURES,
    EDGE_FEATURE_SCALES,
    EDGE_FEATURES,
    NO_CLUSTER_ETA,
    cluster_edge_features,
    edge_features,
    geometry_tensor,
)
from trackgnn.models.filter import FilterNet, edge_inputs
from trackgnn.models.mlp import ROW_TILE
from trackgnn.training.filter import negative_candidates, select_training_edges, train_filter


def synthetic_graph(event_id: int) -> dict:
    """A synthetic event with candidate edges: neighbours in (phi, eta) direction, labelled."""
    data = synthetic_features(event_id, n_particles=80, n_noise=60)
    direction = torch.stack(
        [torch.cos(data["phi"]), torch.sin(data["phi"]), data["eta"] / 2], dim=1
    )
    edge_index = radius_graph(direction, data["r"], 0.4, 12, backend="faiss")
    y, y_pid = edge_labels(edge_index, data["truth_edges"], data["particle_id"])
    return {**data, "edge_index": edge_index, "y": y, "y_pid": y_pid}


def write_graphs(directory: Path, ids: list[int], cluster_eta: bool = True) -> list[Path]:
    paths = []
    for event_id in ids:
        path = directory / f"event{event_id:09d}.pt"
        graph = synthetic_graph(event_id)
        if not cluster_eta:  # as built from features that predate cluster_eta
            del graph["cluster_eta"]
        save_tensors(graph, path)
        paths.append(path)
    return paths


def test_edge_inputs_concatenate_hit_features_and_scaled_edge_features():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    geometry = torch.tensor([[100.0, 3.1, 10.0, 0.5], [300.0, -3.1, -40.0, 0.2]])
    inputs = edge_inputs(x, geometry, torch.tensor([[0], [1]]))
    assert inputs.shape == (1, 2 * 2 + len(EDGE_FEATURES))
    assert inputs[0, :4].tolist() == [1.0, 2.0, 3.0, 4.0]
    unscaled = dict(zip(EDGE_FEATURES, unscale(inputs[0, 4:]).tolist(), strict=True))
    assert unscaled["dr"] == pytest.approx(200.0, rel=1e-5)
    # -3.1 - 3.1 = -6.2 rad wraps to 2 pi - 6.2 = +0.083 rad, not -6.2.
    assert unscaled["dphi"] == pytest.approx(2 * math.pi - 6.2, rel=1e-4)
    assert unscaled["dz"] == pytest.approx(-50.0, rel=1e-5)
    assert unscaled["deta"] == pytest.approx(-0.3, rel=1e-5)


def unscale(features: torch.Tensor) -> torch.Tensor:
    """Edge features back in mm and rad."""
    return features * torch.tensor(EDGE_FEATURE_SCALES)


def test_segment_direction_features_vanish_for_a_straight_track_from_the_origin():
    # Two hits on a straight line from the origin (any phi, across phi = pi too).
    edge = torch.tensor([[0], [1]])
    for phi in (0.3, 3.14159):
        inner = [100.0, phi, 50.0, 0.0]
        outer = [300.0, phi, 150.0, 0.0]
        features = edge_features(torch.tensor([inner, outer]), edge)[0]
        named = dict(zip(EDGE_FEATURES, unscale(features).tolist(), strict=True))
        assert named["dtheta"] == pytest.approx(0.0, abs=1e-5)
        assert named["dalpha"] == pytest.approx(0.0, abs=1e-5)
    # The outer hit 10 mm sideways (phi up) and 20 mm higher in z than on that line.
    outer_phi = 0.3 + math.atan2(10.0, 300.0)
    geometry = torch.tensor([[100.0, 0.3, 50.0, 0.0], [math.hypot(300, 10), outer_phi, 170.0, 0.0]])
    features = unscale(edge_features(geometry, torch.tensor([[0], [1]]))[0])
    named = dict(zip(EDGE_FEATURES, features.tolist(), strict=True))
    assert named["dalpha"] == pytest.approx(math.atan2(10.0, 200.0), rel=1e-4)
    expected_dtheta = math.atan2(math.hypot(200.0, 10.0), 120.0) - math.atan2(100.0, 50.0)
    assert named["dtheta"] == pytest.approx(expected_dtheta, rel=1e-4)
    # Same-layer pairs (dr of a few mm) and adjacent-layer pairs are far apart in the inputs.
    same_layer = edge_features(torch.tensor([[100.0, 0, 0, 0], [102.0, 0, 0, 0]]), edge)
    next_layer = edge_features(torch.tensor([[100.0, 0, 0, 0], [130.0, 0, 0, 0]]), edge)
    assert next_layer[0, 0] - same_layer[0, 0] == pytest.approx(28.0 / EDGE_FEATURE_SCALES[0])


def test_chunked_and_unchunked_inference_are_identical():
    torch.manual_seed(0)
    n_hits, n_edges = 500, 20_000
    model = FilterNet(node_dim=8, hidden=64, n_layers=3).eval()
    x = torch.randn(n_hits, 8)
    geometry = torch.rand(n_hits, 4) * torch.tensor([1000.0, 6.0, 2000.0, 8.0])
    edge_index = torch.randint(0, n_hits, (2, n_edges))
    whole = model.scores(x, geometry, edge_index, chunk_edges=n_edges)
    for chunk in (1, 777, 4999, 10_000):
        assert torch.equal(model.scores(x, geometry, edge_index, chunk_edges=chunk), whole)
    assert whole.shape == (n_edges,) and ((whole > 0) & (whole < 1)).all()
    # Not just equal to itself: the same as scoring edge by edge, to float precision.
    single = torch.sigmoid(model(x, geometry, edge_index[:, :50]))
    assert torch.allclose(whole[:50], single, atol=1e-6)
    assert model.scores(x, geometry, edge_index[:, :0]).shape == (0,)


def test_chunked_inference_bounds_the_rows_per_forward_pass():
    model = FilterNet(node_dim=8, hidden=16, n_layers=1).eval()
    rows_seen = []
    model.net.register_forward_hook(lambda mod, inputs, out: rows_seen.append(len(inputs[0])))
    edge_index = torch.randint(0, 100, (2, 10_000))
    model.scores(torch.randn(100, 8), torch.rand(100, 4), edge_index, chunk_edges=3000)
    assert max(rows_seen) <= 3000
    assert sum(rows_seen) < 10_000 + ROW_TILE  # each edge once, plus at most one tile of padding


def test_training_edges_are_all_true_plus_hardest_and_random_fakes():
    torch.manual_seed(0)
    y = torch.zeros(100, dtype=torch.bool)
    y[[3, 50, 70]] = True
    fake_scores = torch.linspace(0, 1, 97)  # fakes in edge order; the last ones score highest
    chosen = select_training_edges(y, fake_scores, negative_ratio=2.0)
    assert len(chosen) == 3 + 6 + 6
    assert chosen[:3].tolist() == [3, 50, 70]
    fake_idx = torch.nonzero(~y).squeeze(1)
    assert sorted(chosen[3:9].tolist()) == sorted(fake_idx[-6:].tolist())  # hardest six
    assert not y[chosen[3:]].any()  # negatives are fakes


def test_layer_skips_of_one_particle_can_be_left_out_of_the_negatives():
    torch.manual_seed(0)
    y = torch.zeros(100, dtype=torch.bool)
    y[[3, 50, 70]] = True
    y_pid = y.clone()
    y_pid[90:] = True  # same particle, not truth-graph neighbours: the highest-scoring fakes
    for same_particle_negatives, expect_skips in ((True, True), (False, False)):
        candidates = negative_candidates(y, y_pid, same_particle_negatives)
        fake_scores = torch.arange(int(candidates.sum()), dtype=torch.float32)
        chosen = select_training_edges(y, fake_scores, 3.0, candidates)
        negatives = chosen[3:]
        assert not y[negatives].any()
        assert bool(y_pid[negatives].any()) is expect_skips
        # the hardest (last) candidates are taken: the skips when allowed, edges 80-89 otherwise
        hard = sorted(negatives[:9].tolist())
        assert hard == (list(range(91, 100)) if expect_skips else list(range(81, 90)))


def test_train_filter_then_filter_graph_removes_edges_under_the_cut(tmp_path):
    files = write_graphs(tmp_path / "graph", [11, 12, 13])
    cfg = tiny_config(tmp_path, filter={"epochs": 15, "lr": 0.01, "cut": 0.5, "chunk_edges": 1000})
    ckpt = tmp_path / "models" / "filter.ckpt"
    metrics = train_filter(cfg, files[:2], files[2:], ckpt).metrics
    assert metrics["val_auc"] > 0.9, metrics

    out = tmp_path / "filter" / "event000000013.pt"
    stage = filter_graph(cfg, ckpt, files[2], out)
    before = load_graph(files[2])
    after = load_graph(out)
    assert stage["n_edges_in"] == before.edge_index.shape[1]
    assert stage["n_edges"] == after.edge_index.shape[1] < before.edge_index.shape[1]
    assert (after.scores >= 0.5).all()
    # Kept edges are the input edges whose score passes, with their labels.
    model = FilterNet(**torch.load(ckpt, weights_only=True)["hyper_parameters"]["model"])
    model.load_state_dict(
        {k[6:]: v for k, v in torch.load(ckpt, weights_only=True)["state_dict"].items()}
    )
    geometry = geometry_tensor(before.r, before.phi, before.z, before.eta)
    scores = model.scores(before.x, geometry, before.edge_index)
    keep = scores >= 0.5
    assert torch.equal(after.edge_index, before.edge_index[:, keep])
    assert torch.equal(after.y, before.y[keep])
    assert torch.allclose(after.scores, scores[keep])
    assert stage["auc"] > 0.9
    assert stage["efficiency_all"] == pytest.approx(int(after.y.sum()) / stage["n_truth"])


def test_filter_stage_rejects_an_embedding_checkpoint(tmp_path):
    files = write_graphs(tmp_path / "graph", [21, 22])
    cfg = tiny_config(tmp_path, filter={"epochs": 1})
    ckpt = tmp_path / "models" / "filter.ckpt"
    train_filter(cfg, files[:1], files[1:], ckpt)
    # The filter checkpoint is not an embedding model.
    from trackgnn.graph.construction import build_graph

    with pytest.raises(CheckpointError, match=r"filter\.ckpt: is a filter checkpoint, expected"):
        build_graph(cfg, ckpt, files[0], tmp_path / "out.pt")


def test_each_event_gives_steps_of_batch_edges_and_the_schedule_spans_them(tmp_path):
    files = write_graphs(tmp_path / "graph", [31, 32, 33])
    batch_edges, epochs = 64, 2
    cfg = tiny_config(tmp_path, filter={"epochs": epochs, "batch_edges": batch_edges})
    ckpt = tmp_path / "models" / "filter.ckpt"
    train_filter(cfg, files[:2], files[2:], ckpt)
    expected = 0
    for path in files[:2]:
        y = load_graph(path).y.bool()
        n_true = int(y.sum())
        n_negative = min(math.ceil(max(n_true, 1)), len(y) - n_true)
        expected += math.ceil((n_true + 2 * n_negative) / batch_edges)
    assert expected > 4  # several optimizer steps per event, not one
    checkpoint = torch.load(ckpt, weights_only=False)
    assert checkpoint["global_step"] == epochs * expected
    scheduler = checkpoint["lr_schedulers"][0]
    assert scheduler["last_epoch"] == epochs * expected
    # The one-cycle schedule ends at its floor: the last step's rate is 1 % of the peak.
    assert scheduler["_last_lr"][0] == pytest.approx(0.01 * cfg.filter.lr, rel=1e-6)


def test_one_cycle_factor_warms_up_peaks_and_decays_to_the_floor():
    from trackgnn.training.schedule import one_cycle_factor

    assert one_cycle_factor(0, 100) == pytest.approx(0.01)
    assert one_cycle_factor(5, 100) == pytest.approx(0.01 + 0.99 * 0.5)
    assert one_cycle_factor(10, 100) == pytest.approx(1.0)
    assert one_cycle_factor(55, 100) == pytest.approx(0.01 + 0.99 * 0.5)
    assert one_cycle_factor(100, 100) == pytest.approx(0.01)
    assert one_cycle_factor(250, 100) == pytest.approx(0.01)  # past the end: stays at the floor
    factors = [one_cycle_factor(s, 100) for s in range(10, 101)]
    assert all(a >= b for a, b in itertools.pairwise(factors))


def test_cluster_edge_features_compare_the_segment_with_each_hits_cluster():
    # One edge rising at 45 degrees (segment eta = asinh(1)); the inner cluster agrees, the outer
    # is a strip hit (no direction); a second edge whose inner cluster is far off is clipped at 2.
    geometry = torch.tensor(
        [
            [100.0, 0.0, 0.0, 0.0, math.asinh(1.0)],
            [200.0, 0.0, 100.0, 0.4, NO_CLUSTER_ETA],
            [100.0, 0.5, 0.0, 0.0, -3.0],
            [200.0, 0.5, 100.0, 0.4, 0.5],
        ]
    )
    features = cluster_edge_features(geometry, torch.tensor([[0, 2], [1, 3]]))
    assert features.shape == (2, len(CLUSTER_EDGE_FEATURES))
    assert features[0].tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    assert features[1].tolist() == pytest.approx([2.0, abs(math.asinh(1.0) - 0.5)], abs=1e-6)
    # The filter sees them after the six geometric features; without cluster_eta it does not.
    x = torch.zeros(4, 1)
    with_cluster = edge_inputs(x, geometry, torch.tensor([[2], [3]]))
    without = edge_inputs(x, geometry[:, :4], torch.tensor([[2], [3]]))
    assert with_cluster.shape == (1, 2 + len(EDGE_FEATURES) + 2)
    assert torch.equal(with_cluster[:, :-2], without)


def test_a_cluster_direction_filter_trains_and_refuses_graphs_without_cluster_eta(tmp_path):
    files = write_graphs(tmp_path / "graph", [41, 42, 43])
    cfg = tiny_config(
        tmp_path, filter={"epochs": 15, "lr": 0.01, "cut": 0.5, "cluster_direction": True}
    )
    ckpt = tmp_path / "models" / "filter.ckpt"
    metrics = train_filter(cfg, files[:2], files[2:], ckpt).metrics
    assert metrics["val_auc"] > 0.9, metrics
    hparams = torch.load(ckpt, weights_only=True)["hyper_parameters"]["model"]
    assert hparams["cluster_direction"] is True
    filter_graph(cfg, ckpt, files[2], tmp_path / "filter" / "ok.pt")
    # A graph from features that predate cluster_eta: a clear error naming it, no output.
    old = write_graphs(tmp_path / "old", [44], cluster_eta=False)[0]
    out = tmp_path / "filter" / "event000000044.pt"
    with pytest.raises(InputError, match=r"event000000044\.pt: has no cluster_eta"):
        filter_graph(cfg, ckpt, old, out)
    assert not out.exists()


def test_validating_every_other_epoch_learns_the_same_weights_and_reports_only_fresh_figures(
    tmp_path, capsys
):
    files = write_graphs(tmp_path / "graph", [41, 42, 43])
    weights, lines = {}, {}
    for val_every in (1, 2):
        cfg = tiny_config(tmp_path, filter={"epochs": 3, "val_every": val_every})
        ckpt = tmp_path / f"every{val_every}" / "filter.ckpt"
        metrics = train_filter(cfg, files[:2], files[2:], ckpt).metrics
        assert "val_auc" in metrics  # the last epoch is always validated
        weights[val_every] = torch.load(ckpt, weights_only=True)["state_dict"]
        lines[val_every] = [
            line for line in capsys.readouterr().out.splitlines() if line.startswith("[filter]")
        ]
    assert weights[1].keys() == weights[2].keys()
    for name, tensor in weights[1].items():
        assert torch.equal(tensor, weights[2][name]), name
    assert all("val_auc=" in line for line in lines[1])
    # Every 2nd epoch and the last; Lightning keeps the last validation's figures, and an epoch
    # without one must not repeat them.
    assert ["val_auc=" in line for line in lines[2]] == [False, True, True]
    assert all("train_loss=" in line for line in lines[2])
