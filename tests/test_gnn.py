"""Interaction GNN: message-passing semantics, options, training modes, resume, DDP, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trackgnn.config import config_from_dict
from trackgnn.errors import CheckpointError
from trackgnn.event_data import EventGraph, GraphBatch
from trackgnn.io import save_tensors
from trackgnn.models.interaction_gnn import InteractionGNN, InteractionLayer
from trackgnn.scoring import edge_classification_metrics, score_edges
from trackgnn.training.gnn import train_gnn

from .conftest import graph_file_contents

ROOT = Path(__file__).parents[1]


def toy_event(seed: int, n_tracks: int = 30, hits_per_track: int = 8, n_fake: int = 400) -> dict:
    """Straight tracks from the origin (phi, eta per track) plus random fake edges."""
    gen = torch.Generator().manual_seed(seed)
    phi_t = torch.rand(n_tracks, generator=gen) * 6.0 - 3.0
    eta_t = torch.rand(n_tracks, generator=gen) * 4.0 - 2.0
    r = torch.arange(1, hits_per_track + 1).float().repeat(n_tracks) * 100.0
    track = torch.arange(n_tracks).repeat_interleave(hits_per_track)
    phi = phi_t[track] + 0.002 * torch.randn(len(r), generator=gen)
    eta = eta_t[track] + 0.002 * torch.randn(len(r), generator=gen)
    z = r * torch.sinh(eta)
    n = len(r)
    idx = torch.arange(n).view(n_tracks, hits_per_track)
    true_edges = torch.stack([idx[:, :-1].flatten(), idx[:, 1:].flatten()])
    fake = torch.randint(0, n, (2, n_fake), generator=gen)
    fake = fake[:, track[fake[0]] != track[fake[1]]]
    edge_index = torch.cat([true_edges, fake], 1)
    x = torch.stack([r / 1000, phi / torch.pi, z / 1000, eta / 4], 1)
    return graph_file_contents(seed, x, r, phi, z, eta, track, true_edges, edge_index)


def write_toy_events(directory: Path, count: int, **toy: int) -> list[str]:
    """``count`` toy event graphs ``event#########.pt`` (seeds 0, 1, ...); their paths."""
    files = []
    for i in range(count):
        path = directory / f"event{i:09d}.pt"
        save_tensors(toy_event(i, **toy), path)
        files.append(str(path))
    return files


@pytest.fixture(scope="module")
def graph_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return write_toy_events(tmp_path_factory.mktemp("filter"), 4)


def small_cfg(tmp_path: Path, **gnn: object) -> object:
    base = {"hidden": 16, "n_iterations": 2, "epochs": 3, "lr": 0.005, "shadow": {"batch_size": 64}}
    base.update(gnn)
    return config_from_dict(
        {"run": "t", "results_dir": str(tmp_path / "results"), "seed": 3, "gnn": base}
    )


def test_layer_sums_messages_into_destination_and_source() -> None:
    torch.manual_seed(0)
    layer = InteractionLayer(node_in=3, edge_in=2, hidden=4, mlp_layers=1, layer_norm=False)
    x = torch.randn(3, 3)
    e = torch.randn(2, 2)
    ei = torch.tensor([[0, 0], [1, 2]])  # node 0 is source of both edges
    x_new, e_new = layer(x, e, ei)
    expected_e = layer.edge_mlp(torch.cat([e, x[ei[0]], x[ei[1]]], 1))
    torch.testing.assert_close(e_new, expected_e)
    m_dst = torch.stack([torch.zeros(4), expected_e[0], expected_e[1]])
    m_src = torch.stack([expected_e.sum(0), torch.zeros(4), torch.zeros(4)])
    torch.testing.assert_close(x_new, layer.node_mlp(torch.cat([m_dst, m_src, x], 1)))


def test_sum_max_layer_also_passes_the_largest_message_of_each_side() -> None:
    torch.manual_seed(0)
    layer = InteractionLayer(
        node_in=3, edge_in=2, hidden=4, mlp_layers=1, layer_norm=False, aggregation="sum_max"
    )
    x = torch.randn(3, 3)
    e = torch.randn(3, 2)
    ei = torch.tensor([[0, 0, 1], [1, 2, 2]])  # node 2 is the destination of two edges
    x_new, _ = layer(x, e, ei)
    m = layer.edge_mlp(torch.cat([e, x[ei[0]], x[ei[1]]], 1))
    zero = torch.zeros(4)
    m_dst = torch.stack([zero, m[0], m[1] + m[2]])
    m_src = torch.stack([m[0] + m[1], m[2], zero])
    # element-wise maxima, and 0 (not -inf) for a node without edges on that side
    max_dst = torch.stack([zero, m[0], torch.maximum(m[1], m[2])])
    max_src = torch.stack([torch.maximum(m[0], m[1]), m[2], zero])
    expected = layer.node_mlp(torch.cat([m_dst, m_src, max_dst, max_src, x], 1))
    torch.testing.assert_close(x_new, expected)
    x_new.sum().backward()  # the maximum passes gradients
    assert all(p.grad is not None for p in layer.edge_mlp.parameters())


@pytest.mark.parametrize(
    ("skip", "aggregation"), [("concat", "sum"), ("residual", "sum"), ("concat", "sum_max")]
)
def test_disjoint_components_are_scored_independently(skip: str, aggregation: str) -> None:
    """The premise of ShaDow minibatches: subgraphs in one batch graph do not interact."""
    torch.manual_seed(1)
    model = InteractionGNN(
        node_features=4, hidden=8, n_iterations=3, skip=skip, aggregation=aggregation
    ).eval()
    a, b = toy_event(1, n_tracks=3), toy_event(2, n_tracks=4)

    def run(ev: dict) -> torch.Tensor:
        g = load_event_graph_from_dict(ev)
        return model(g[0], g[1], g[2])

    union = {k: torch.cat([a[k], b[k]]) for k in a if a[k].ndim == 1 or k == "x"}
    union["event_id"] = a["event_id"]
    union["edge_index"] = torch.cat([a["edge_index"], b["edge_index"] + len(a["x"])], 1)
    union["truth_edges"] = torch.cat([a["truth_edges"], b["truth_edges"] + len(a["x"])], 1)
    out = run(union)
    torch.testing.assert_close(out, torch.cat([run(a), run(b)]), atol=1e-5, rtol=1e-5)


def load_event_graph_from_dict(ev: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch = EventGraph.from_dict(ev, "toy").to_batch()
    return batch.x, batch.edge_attr, batch.edge_index


def test_gradient_checkpointing_gives_same_outputs_and_gradients() -> None:
    torch.manual_seed(2)
    plain = InteractionGNN(node_features=4, hidden=8, n_iterations=3)
    ckpt = InteractionGNN(node_features=4, hidden=8, n_iterations=3, checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x, ea, ei = load_event_graph_from_dict(toy_event(3, n_tracks=5))
    out_a, out_b = plain(x, ea, ei), ckpt(x, ea, ei)
    torch.testing.assert_close(out_a, out_b)
    out_a.sum().backward()
    out_b.sum().backward()
    for (name, pa), pb in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, msg=name)


def test_autocast_bf16_close_to_fp32() -> None:
    torch.manual_seed(4)
    model = InteractionGNN(node_features=4, hidden=16, n_iterations=2).eval()
    x, ea, ei = load_event_graph_from_dict(toy_event(4, n_tracks=5))
    ref = torch.sigmoid(model(x, ea, ei))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = torch.sigmoid(model(x, ea, ei).float())
    assert (ref - low).abs().max() < 0.05


def test_roc_auc_and_metrics() -> None:
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8])
    truth = torch.tensor([False, False, True, True])
    m = edge_classification_metrics(torch.logit(scores), truth.float(), cut=0.3)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == 1.0
    assert m["auc"] == pytest.approx(0.75)


@pytest.mark.parametrize("mode", ["full", "shadow"])
def test_training_learns_toy_tracks(mode: str, graph_files: list[str], tmp_path: Path) -> None:
    cfg = small_cfg(tmp_path, mode=mode, epochs=4 if mode == "full" else 3)
    ckpt = tmp_path / "gnn.ckpt"
    train_gnn(cfg, graph_files[:3], graph_files[3:], ckpt)
    metrics = score_edges(cfg, ckpt, graph_files[3], tmp_path / "scored.pt")
    # random scores give AUC 0.5; the toy is easy, a working GNN separates it
    assert metrics["auc"] > 0.9, metrics


def test_more_epochs_after_a_shorter_run_give_the_model_of_a_fresh_run(
    graph_files: list[str], tmp_path: Path
) -> None:
    """The same config gives the same model whether or not a shorter run left checkpoints.

    The epoch count sets the one-cycle schedule, so continuing a 1-epoch training for a second
    epoch gives other weights than a fresh 2-epoch training: the rerun must start afresh.
    """
    fresh = tmp_path / "fresh" / "gnn.ckpt"
    two = small_cfg(tmp_path, mode="full", epochs=2)
    train_gnn(two, graph_files[:2], graph_files[3:], fresh)
    ckpt = tmp_path / "gnn.ckpt"
    train_gnn(small_cfg(tmp_path, mode="full", epochs=1), graph_files[:2], graph_files[3:], ckpt)
    ckpt.unlink()  # only gnn-last.ckpt of the 1-epoch run is left
    trainer = train_gnn(two, graph_files[:2], graph_files[3:], ckpt).trainer
    assert trainer.current_epoch == 2 and trainer.global_step == 4
    expected = torch.load(fresh, weights_only=False)["state_dict"]
    got = torch.load(ckpt, weights_only=False)["state_dict"]
    assert all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.parametrize("mode", ["full", "shadow"])
def test_how_often_the_gnn_is_validated_leaves_its_weights_unchanged(
    mode: str, graph_files: list[str], tmp_path: Path
) -> None:
    weights = []
    for val_every in (1, 2):
        ckpt = tmp_path / f"every{val_every}" / "gnn.ckpt"
        cfg = small_cfg(tmp_path, mode=mode, epochs=2, val_every=val_every)
        metrics = train_gnn(cfg, graph_files[:2], graph_files[3:], ckpt).metrics
        assert "val_auc" in metrics  # the last epoch is always validated
        weights.append(torch.load(ckpt, weights_only=True)["state_dict"])
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name


def test_changed_inputs_train_afresh(graph_files: list[str], tmp_path: Path) -> None:
    """A rerun because the training graphs changed must not continue the old model."""
    import shutil

    inputs = [tmp_path / Path(f).name for f in graph_files[:2]]
    for src, dst in zip(graph_files[:2], inputs, strict=True):
        shutil.copy(src, dst)
    ckpt = tmp_path / "gnn.ckpt"
    cfg = small_cfg(tmp_path, mode="full", epochs=1)
    train_gnn(cfg, [str(p) for p in inputs], graph_files[3:], ckpt)
    first = torch.load(ckpt, weights_only=False)["state_dict"]
    ckpt.unlink()
    save_tensors(toy_event(11), inputs[0])  # new graphs for the same event
    train_gnn(cfg, [str(p) for p in inputs], graph_files[3:], ckpt)
    second = torch.load(ckpt, weights_only=False)["state_dict"]
    # resuming the finished run would return the first model unchanged
    assert any(not torch.equal(first[k], second[k]) for k in first)


def test_score_edges_rejects_corrupted_checkpoint(graph_files: list[str], tmp_path: Path) -> None:
    bad = tmp_path / "gnn.ckpt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    cfg = small_cfg(tmp_path)
    out = tmp_path / "scored.pt"
    with pytest.raises(CheckpointError, match=r"gnn\.ckpt: not a readable checkpoint"):
        score_edges(cfg, bad, graph_files[0], out)
    assert not out.exists()


def test_ddp_two_ranks_one_allreduce_per_step(graph_files: list[str], tmp_path: Path) -> None:
    import yaml

    config = tmp_path / "ddp.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "run": "ddp",
                "results_dir": str(tmp_path / "results"),
                "threads": 1,
                "gnn": {
                    "hidden": 8,
                    "n_iterations": 1,
                    "epochs": 1,
                    "world_size": 2,
                    "shadow": {"batch_size": 64},
                },
            }
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": ""}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "trackgnn.cli",
            "train",
            "gnn",
            "--config",
            str(config),
            "--train",
            *graph_files[:2],
            "--val",
            graph_files[3],
            "--output",
            str(tmp_path / "gnn.ckpt"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    epoch_lines = [line for line in result.stdout.splitlines() if line.startswith("[gnn] epoch")]
    assert len(epoch_lines) == 1, result.stdout  # rank 0 reports alone
    assert "allreduce_calls_per_step=1 " in epoch_lines[0]
    assert "world_size=2" in epoch_lines[0]
    assert (tmp_path / "gnn.ckpt").stat().st_size > 0


def test_phi_sectors_partition_the_edges_by_inner_hit_azimuth() -> None:
    from trackgnn.training.gnn_streams import split_phi_sectors

    torch.manual_seed(5)
    n, e = 200, 1000
    phi = torch.rand(n) * 2 * torch.pi - torch.pi
    x = torch.cat([torch.arange(n, dtype=torch.float32)[:, None], phi[:, None] / torch.pi], 1)
    edge_index = torch.randint(0, n, (2, e))
    graph = GraphBatch(
        x=x,
        edge_attr=torch.arange(e, dtype=torch.float32)[:, None],
        edge_index=edge_index,
        y=(torch.rand(e) > 0.5).float(),
        weight=torch.ones(e),
        n_samples=1,
    )
    parts = split_phi_sectors(graph, phi, 4)
    assert len(parts) == 4
    seen = torch.cat([p.edge_attr[:, 0].long() for p in parts])
    assert torch.equal(seen.sort().values, torch.arange(e))  # every edge exactly once
    for k, part in enumerate(parts):
        ids = part.edge_attr[:, 0].long()
        # Node features follow the renumbering: column 0 holds the original node id.
        assert torch.equal(part.x[part.edge_index, 0].long(), edge_index[:, ids])
        assert torch.equal(part.y, graph.y[ids])
        inner_phi = phi[edge_index[0, ids]]
        low, high = -torch.pi + k * torch.pi / 2, -torch.pi + (k + 1) * torch.pi / 2
        assert ((inner_phi >= low - 1e-6) & (inner_phi <= high + 1e-6)).all()
        assert part.x.shape[0] == len(torch.unique(edge_index[:, ids]))
    assert split_phi_sectors(graph, phi, 1) == [graph]


def test_trackml_pt_weights_favour_high_pt_true_edges_and_leave_fakes_at_one() -> None:
    from trackgnn.event_data import EventGraph
    from trackgnn.training.gnn import training_batch

    contents = toy_event(7, n_tracks=4, hits_per_track=5, n_fake=50)
    track = contents["particle_id"] - 1
    contents["pt"] = torch.tensor([0.3, 1.0, 3.0, 10.0])[track]  # one pT per toy track
    graph = EventGraph.from_dict(contents, "toy")
    true = graph.y_pid > 0.5

    uniform = training_batch(graph, small_cfg(Path("unused")).gnn, 0.5)
    assert torch.equal(uniform.weight, torch.ones(graph.n_edges))

    weighted = training_batch(
        graph, small_cfg(Path("unused"), true_edge_weights="trackml_pt").gnn, 0.5
    )
    assert torch.equal(weighted.weight[~true], torch.ones(int((~true).sum())))
    assert float(weighted.weight[true].mean()) == pytest.approx(1.0)
    # TrackML pT weight: 0.2 at 0.3 GeV, 0.2 + 0.8 * 0.5 / 2.5 = 0.36 at 1 GeV, 1 from 3 GeV
    by_track = {
        int(t): float(weighted.weight[true][track[graph.edge_index[0, true]] == t][0])
        for t in range(4)
    }
    assert by_track[1] / by_track[0] == pytest.approx(0.36 / 0.2)
    assert by_track[2] == pytest.approx(by_track[3])
    assert by_track[2] / by_track[0] == pytest.approx(5.0)


def test_trackml_pt_boost_weights_only_weight_high_pt_true_edges_up() -> None:
    from trackgnn.event_data import EventGraph
    from trackgnn.training.gnn import training_batch

    contents = toy_event(7, n_tracks=5, hits_per_track=5, n_fake=50)
    track = contents["particle_id"] - 1
    contents["pt"] = torch.tensor([0.01, 0.3, 1.0, 3.0, 10.0])[track]
    graph = EventGraph.from_dict(contents, "toy")
    true = graph.y_pid > 0.5
    settings = small_cfg(Path("unused"), true_edge_weights="trackml_pt_boost").gnn
    weighted = training_batch(graph, settings, 0.5)
    assert torch.equal(weighted.weight[~true], torch.ones(int((~true).sum())))
    edge_track = track[graph.edge_index[0]]
    # no true edge below a fake (0.01 GeV has TrackML weight 0); 0.36 / 0.2 at 1 GeV; 5 from 3
    for t, expected in enumerate([1.0, 1.0, 0.36 / 0.2, 5.0, 5.0]):
        weights = weighted.weight[true & (edge_track == t)]
        assert len(weights) > 0
        assert weights.tolist() == pytest.approx([expected] * len(weights))


def test_signal_weights_drop_only_true_edges_of_particles_below_signal_pt() -> None:
    from trackgnn.event_data import EventGraph
    from trackgnn.training.gnn import training_batch

    contents = toy_event(7, n_tracks=4, hits_per_track=5, n_fake=50)
    track = contents["particle_id"] - 1
    contents["pt"] = torch.tensor([0.3, 0.6, 3.0, 10.0])[track]
    graph = EventGraph.from_dict(contents, "toy")
    true = graph.y_pid > 0.5
    low = true & (track[graph.edge_index[0]] == 0)
    assert int(low.sum()) > 0 and int((true & ~low).sum()) > 0 and int((~true).sum()) > 0

    batch = training_batch(graph, small_cfg(Path("unused"), true_edge_weights="signal").gnn, 0.5)
    assert torch.equal(batch.weight[low], torch.zeros(int(low.sum())))
    assert torch.equal(batch.weight[~low], torch.ones(int((~low).sum())))  # fakes stay at 1
    # the threshold is the one given: at 0.7 GeV the 0.6 GeV track leaves the loss as well
    higher = training_batch(graph, small_cfg(Path("unused"), true_edge_weights="signal").gnn, 0.7)
    assert int((higher.weight == 0).sum()) == int((true & (track[graph.edge_index[0]] <= 1)).sum())


def test_validation_figures_count_only_the_edges_the_loss_counts() -> None:
    import pytorch_lightning as pl

    from trackgnn.training.gnn import GNNModule, training_batch, validation_loader

    contents = toy_event(3, n_tracks=6, hits_per_track=5, n_fake=60)
    contents["pt"] = torch.tensor([0.3, 0.3, 0.3, 2.0, 2.0, 2.0])[contents["particle_id"] - 1]
    graph = EventGraph.from_dict(contents, "toy")
    settings = small_cfg(Path("unused"), true_edge_weights="signal").gnn
    batch = training_batch(graph, settings, 0.5)
    counted = batch.weight > 0
    assert 0 < int(counted.sum()) < graph.n_edges

    torch.manual_seed(0)
    module = GNNModule({"node_features": 4, "hidden": 8, "n_iterations": 1}, settings)
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.validate(module, validation_loader([batch], 0, 1), verbose=False)
    with torch.no_grad():
        logits = module(batch)
    expected = edge_classification_metrics(logits[counted], batch.y[counted])
    all_edges = edge_classification_metrics(logits, batch.y)
    assert expected["auc"] != pytest.approx(all_edges["auc"])  # the mask matters here
    for name in ("precision", "recall", "auc"):
        assert float(trainer.callback_metrics[f"val_{name}"]) == pytest.approx(expected[name])
