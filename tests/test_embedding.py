"""Embedding stage: the pairwise hinge loss, training pairs, training and graph building."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from trackgnn.config import config_from_dict
from trackgnn.event_data import load_graph
from trackgnn.graph.construction import build_graph
from trackgnn.graph.truth import undirected_keys
from trackgnn.io import load_tensors, save_tensors
from trackgnn.models.edges import NO_CLUSTER_ETA
from trackgnn.models.embedding import EmbeddingNet
from trackgnn.models.mlp import angle_columns
from trackgnn.training.embedding import pairwise_hinge_loss, train_embedding, training_pairs

BARREL_RADII = np.array([32.0, 72.0, 116.0, 172.0, 260.0, 360.0, 500.0, 660.0, 820.0, 1020.0])


def synthetic_features(event_id: int, n_particles: int = 60, n_noise: int = 40, seed: int = 0):
    """A features dict (trackgnn.features layout) of helical tracks in a 10-layer barrel.

    Particles come from near the origin with pT in [0.3, 5] GeV in a 2 T field; hits are
    smeared by 0.1 mm; the truth graph links consecutive layers of each particle.
    """
    rng = np.random.default_rng(seed + event_id)
    pt = np.exp(rng.uniform(np.log(0.3), np.log(5.0), n_particles))
    charge = rng.choice([-1.0, 1.0], n_particles)
    phi0 = rng.uniform(-np.pi, np.pi, n_particles)
    eta0 = rng.uniform(-1.5, 1.5, n_particles)
    z0 = rng.normal(0.0, 30.0, n_particles)
    curvature = 0.3 * 2.0 * charge / pt / 1000.0  # 1/mm
    r = np.broadcast_to(BARREL_RADII, (n_particles, len(BARREL_RADII)))
    arg = np.clip(r * curvature[:, None] / 2.0, -1.0, 1.0)
    phi = phi0[:, None] + np.arcsin(arg)
    z = z0[:, None] + r * np.sinh(eta0)[:, None]
    inside = (np.abs(arg) < 0.99) & (np.abs(z) < 1000.0)
    pid = np.broadcast_to(np.arange(1, n_particles + 1)[:, None], r.shape)
    hits_r = r[inside] + rng.normal(0, 0.1, inside.sum())
    hits_phi = phi[inside] + rng.normal(0, 1e-4, inside.sum())
    hits_z = z[inside] + rng.normal(0, 0.1, inside.sum())
    hits_pid = pid[inside]
    noise_r = rng.choice(BARREL_RADII, n_noise)
    hits_r = np.r_[hits_r, noise_r]
    hits_phi = np.r_[hits_phi, rng.uniform(-np.pi, np.pi, n_noise)]
    hits_z = np.r_[hits_z, rng.uniform(-1000.0, 1000.0, n_noise)]
    hits_pid = np.r_[hits_pid, np.zeros(n_noise, dtype=np.int64)]
    order = rng.permutation(len(hits_r))
    hits_r, hits_phi, hits_z, hits_pid = (a[order] for a in (hits_r, hits_phi, hits_z, hits_pid))
    hits_phi = np.remainder(hits_phi + np.pi, 2 * np.pi) - np.pi
    eta = np.arcsinh(hits_z / hits_r)
    n_hits = len(hits_r)
    nhits_of = np.bincount(hits_pid, minlength=n_particles + 1)
    is_signal = hits_pid > 0
    pt_hit = np.where(is_signal, pt[np.maximum(hits_pid - 1, 0)], 0.0)
    # Truth graph: consecutive hits (by r) of each particle.
    idx = np.flatnonzero(is_signal)
    idx = idx[np.lexsort((hits_r[idx], hits_pid[idx]))]
    same = hits_pid[idx[1:]] == hits_pid[idx[:-1]]
    truth_edges = np.stack([idx[:-1][same], idx[1:][same]])
    x = np.stack(
        [
            hits_r / 1000,
            hits_phi / np.pi,
            hits_z / 1000,
            eta / 4,
            rng.uniform(0, 1, n_hits),
            rng.uniform(0, 1, n_hits),
            np.zeros(n_hits),
            np.zeros(n_hits),
        ],
        axis=1,
    )
    as_f32 = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
    return {
        "event_id": torch.tensor(event_id),
        "hit_id": torch.arange(1, n_hits + 1),
        "x": as_f32(x),
        "feature_names": ["r", "phi", "z", "eta", "cell_count", "cell_value", "u", "v"],
        "r": as_f32(hits_r),
        "phi": as_f32(hits_phi),
        "z": as_f32(hits_z),
        "eta": as_f32(eta),
        "particle_id": torch.as_tensor(hits_pid, dtype=torch.int64),
        "pt": as_f32(pt_hit),
        "particle_eta": as_f32(np.where(is_signal, eta, 0.0)),
        "nhits": torch.as_tensor(nhits_of[hits_pid] * is_signal, dtype=torch.int64),
        "primary": torch.as_tensor(is_signal),
        "truth_edges": torch.as_tensor(truth_edges, dtype=torch.int64),
        # pixel hits' clusters point along their hit (noise too); strips imply no direction
        "cluster_eta": as_f32(np.where(hits_r < 200, eta, NO_CLUSTER_ETA)),
    }


def write_synthetic_events(directory: Path, ids: list[int], **kwargs) -> list[Path]:
    """Write synthetic features files ``directory/event#########.pt``; return their paths."""
    paths = []
    for event_id in ids:
        path = directory / f"event{event_id:09d}.pt"
        save_tensors(synthetic_features(event_id, **kwargs), path)
        paths.append(path)
    return paths


def tiny_config(tmp_path: Path, **sections) -> object:
    """A config with tiny models and few epochs (sections override)."""
    raw = {
        "results_dir": str(tmp_path / "results"),
        "embedding": {"hidden": 32, "n_layers": 2, "epochs": 2, "knn_k": 8, "lr": 0.003},
        "filter": {"hidden": 32, "n_layers": 2, "epochs": 2},
        "graph": {"radius": 0.1, "k_max": 16},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config_from_dict(raw)


# ----------------------------------------------------------------------------- the loss


def test_hinge_loss_exact_values_on_hand_made_pairs():
    # Pairs at distances 0.3 (positive), 0.5 (positive), 0.2 (negative, inside the margin 1)
    # and 1.5 (negative, outside the margin: no loss).
    a = torch.zeros(4, 2)
    b = torch.tensor([[0.3, 0.0], [0.3, 0.4], [0.0, 0.2], [1.5, 0.0]])
    y = torch.tensor([True, True, False, False])
    loss = pairwise_hinge_loss(a, b, y, margin=1.0)
    positives = (0.3**2 + 0.5**2) / 2
    negatives = ((1.0 - 0.2) ** 2 + 0.0) / 2
    assert loss.item() == pytest.approx(positives + negatives, rel=1e-6)

    # Weights: the 0.5 positive counts three times as much as the 0.3 one.
    weight = torch.tensor([1.0, 3.0, 1.0, 1.0])
    loss = pairwise_hinge_loss(a, b, y, margin=1.0, weight=weight)
    assert loss.item() == pytest.approx((0.09 + 3 * 0.25) / 4 + 0.32, rel=1e-6)

    # The margin is in distance units: at margin 0.25 the 0.2 pair pays (0.05)^2.
    loss = pairwise_hinge_loss(a, b, y, margin=0.25)
    assert loss.item() == pytest.approx(positives + 0.05**2 / 2, rel=1e-5)


def test_hinge_loss_gradients_pull_positives_and_push_negatives():
    a = torch.zeros(2, 2)
    b = torch.tensor([[0.3, 0.0], [0.2, 0.0]], requires_grad=True)
    loss = pairwise_hinge_loss(a, b, torch.tensor([True, False]), margin=1.0)
    loss.backward()
    assert b.grad[0, 0] > 0  # descending moves the positive towards a (x decreases)
    assert b.grad[1, 0] < 0  # and the negative away from a (x increases)
    # Coincident points of a negative pair: finite gradient (no sqrt(0) NaN).
    c = torch.zeros(1, 2, requires_grad=True)
    pairwise_hinge_loss(torch.zeros(1, 2), c, torch.tensor([False]), margin=1.0).backward()
    assert torch.isfinite(c.grad).all()


def test_training_pairs_hold_truth_random_and_knn_pairs_once():
    torch.manual_seed(0)
    emb = torch.randn(200, 4)
    truth = torch.tensor([[0, 1, 5], [1, 2, 9]])
    pairs = training_pairs(emb, torch.cat([truth, truth.flip(0)], 1), 50, knn_k=3)
    keys = undirected_keys(pairs, 200)
    assert len(torch.unique(keys)) == len(keys)  # each unordered pair once
    assert (pairs[0] != pairs[1]).all()
    assert torch.isin(undirected_keys(truth, 200), keys).all()
    # Every hit's 3 nearest neighbours (exact) are among the pairs.
    dist = torch.cdist(emb, emb)
    dist.fill_diagonal_(math.inf)
    nearest = dist.topk(3, largest=False).indices
    knn_pairs = torch.stack([torch.arange(200).repeat_interleave(3), nearest.reshape(-1)])
    assert torch.isin(undirected_keys(knn_pairs, 200), keys).all()


def test_phi_enters_periodically_so_both_sides_of_pi_embed_alike():
    torch.manual_seed(0)
    net = EmbeddingNet(in_dim=3, emb_dim=4, hidden=16, n_layers=2, angle_columns=[1])
    near_plus_pi = torch.tensor([[0.3, 0.999999, 0.1]])
    near_minus_pi = torch.tensor([[0.3, -0.999999, 0.1]])
    assert torch.allclose(net(near_plus_pi), net(near_minus_pi), atol=1e-4)
    assert not torch.allclose(net(near_plus_pi), net(torch.tensor([[0.3, 0.0, 0.1]])), atol=1e-2)
    assert angle_columns(["r", "phi", "z"]) == [1] and angle_columns(None) == []


# ----------------------------------------------------------------------------- training


def test_train_embedding_learns_and_build_graph_writes_labelled_graph(tmp_path):
    files = write_synthetic_events(tmp_path / "features", [1, 2, 3, 4])
    cfg = tiny_config(tmp_path, embedding={"epochs": 12, "lr": 0.01})
    ckpt = tmp_path / "models" / "embedding.ckpt"
    metrics = train_embedding(cfg, files[:3], files[3:], ckpt).metrics
    assert ckpt.exists() and (tmp_path / "models" / "embedding-last.ckpt").exists()
    assert not (Path.cwd() / "lightning_logs").exists()
    # Tiny model, a few seconds of training: most truth edges are already within the radius.
    assert metrics["val_efficiency_all"] > 0.8, metrics

    out = tmp_path / "graph" / "event000000004.pt"
    stage = build_graph(cfg, ckpt, files[3], out)
    graph = load_graph(out)
    edges = graph.edge_index
    assert edges.shape[1] == stage["n_edges"] > 0
    # Stored once, inner -> outer, no self loops.
    r = graph.r
    assert (r[edges[0]] <= r[edges[1]]).all() and (edges[0] != edges[1]).all()
    keys = undirected_keys(edges, len(r))
    assert len(torch.unique(keys)) == len(keys)
    # Labels: y = truth-graph edge in either orientation, y_pid = same non-noise particle.
    truth_keys = undirected_keys(graph.truth_edges, len(r))
    assert torch.equal(graph.y, torch.isin(keys, truth_keys))
    pid = graph.particle_id
    assert torch.equal(graph.y_pid, (pid[edges[0]] == pid[edges[1]]) & (pid[edges[0]] > 0))
    assert stage["n_true"] == int(graph.y.sum())
    assert stage["efficiency_all"] == pytest.approx(stage["n_true"] / stage["n_truth"])
    # The features travel along unchanged.
    features = load_tensors(files[3])
    assert torch.equal(graph.x, features["x"])


def test_the_embedding_learns_the_same_weights_however_often_it_is_validated(tmp_path):
    files = write_synthetic_events(tmp_path / "features", [8, 9, 10])
    weights = []
    for val_every in (1, 2):
        cfg = tiny_config(tmp_path, embedding={"epochs": 3, "val_every": val_every})
        ckpt = tmp_path / f"every{val_every}" / "embedding.ckpt"
        metrics = train_embedding(cfg, files[:2], files[2:], ckpt).metrics
        assert "val_efficiency" in metrics  # the last epoch is always validated
        weights.append(torch.load(ckpt, weights_only=True)["state_dict"])
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name


def test_each_event_gives_steps_per_event_optimizer_steps(tmp_path):
    files = write_synthetic_events(tmp_path / "features", [5, 6, 7])
    cfg = tiny_config(tmp_path, embedding={"epochs": 2, "steps_per_event": 3})
    ckpt = tmp_path / "models" / "embedding.ckpt"
    train_embedding(cfg, files[:2], files[2:], ckpt)
    checkpoint = torch.load(ckpt, weights_only=False)
    assert checkpoint["global_step"] == 2 * 2 * 3  # epochs x events x steps per event
    assert checkpoint["lr_schedulers"][0]["last_epoch"] == 12


def test_a_step_on_a_subset_of_hits_embeds_them_as_the_whole_event_does():
    # Each step embeds only the hits of its pairs: the network must treat rows independently.
    from trackgnn.models.embedding import EmbeddingNet

    torch.manual_seed(3)
    net = EmbeddingNet(in_dim=8, emb_dim=4, hidden=16, n_layers=2, angle_columns=[1])
    x = torch.randn(300, 8)
    subset = torch.tensor([5, 17, 299, 0])
    torch.testing.assert_close(net(x[subset]), net(x)[subset])
