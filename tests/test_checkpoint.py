"""Checkpoints: resuming a killed training, and clear errors for bad checkpoint files."""

from __future__ import annotations

import re
import shutil
from types import SimpleNamespace

import pytest
import torch

from tests.test_embedding import synthetic_features, tiny_config, write_synthetic_events
from trackgnn.errors import CheckpointError, TrackGNNError
from trackgnn.graph.construction import build_graph, filter_graph
from trackgnn.io import save_tensors
from trackgnn.models.checkpoint import load_model, read_checkpoint
from trackgnn.models.embedding import EmbeddingNet
from trackgnn.training.checkpoint import last_checkpoint_path
from trackgnn.training.driver import ValidateEvery, format_duration
from trackgnn.training.embedding import train_embedding


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Features files and a 2-epoch embedding checkpoint (shared by the error tests)."""
    tmp = tmp_path_factory.mktemp("trained")
    files = write_synthetic_events(tmp / "features", [1, 2, 3], n_particles=30, n_noise=20)
    cfg = tiny_config(tmp)
    ckpt = tmp / "models" / "embedding.ckpt"
    train_embedding(cfg, files[:2], files[2:], ckpt)
    return cfg, files, ckpt


def weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


def test_durations_read_as_hours_minutes_seconds():
    assert [format_duration(s) for s in (0.4, 42, 185, 3725)] == ["0s", "42s", "3m05s", "1h02m"]


@pytest.mark.parametrize(
    ("max_epochs", "validated"),
    [(5, [False, True, False, True, True]), (-1, [False, True, False, True, False])],
)
def test_validation_runs_every_nth_epoch_and_after_the_last(max_epochs, validated):
    """``-1`` is a step-bounded run: it has no last epoch, so only every n-th is validated."""
    trainer = SimpleNamespace(max_epochs=max_epochs, check_val_every_n_epoch=1)
    callback = ValidateEvery(2)
    got = []
    for epoch in range(5):
        trainer.current_epoch = epoch
        callback.on_train_epoch_start(trainer, None)
        # the fit loop's own test (training_epoch_loop._should_check_val_epoch)
        got.append((epoch + 1) % trainer.check_val_every_n_epoch == 0)
    assert got == validated


def test_killed_training_resumes_from_the_last_epoch(tmp_path, capsys):
    files = write_synthetic_events(tmp_path / "features", [1, 2, 3], n_particles=30, n_noise=20)
    cfg = tiny_config(tmp_path, embedding={"epochs": 4})

    # Reference: four epochs without interruption.
    reference = tmp_path / "reference" / "embedding.ckpt"
    train_embedding(cfg, files[:2], files[2:], reference)

    # The same training, killed after its second epoch (the metrics hook raises).
    ckpt = tmp_path / "models" / "embedding.ckpt"

    def crash(metrics, epoch):
        if epoch == 1:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        train_embedding(cfg, files[:2], files[2:], ckpt, log=crash)
    last = last_checkpoint_path(ckpt)
    assert not ckpt.exists()  # no final checkpoint from an unfinished training
    assert read_checkpoint(last, "embedding")["epoch"] == 1
    capsys.readouterr()

    # The rerun continues with epochs 3 and 4 only ...
    epochs_run = []
    train_embedding(cfg, files[:2], files[2:], ckpt, log=lambda m, epoch: epochs_run.append(epoch))
    assert epochs_run == [2, 3]
    out = capsys.readouterr().out
    assert "resuming from" in out
    # Progress of the resumed run: its epochs, with elapsed and remaining time.
    lines = [line for line in out.splitlines() if line.startswith("[embedding] epoch")]
    assert [line.split()[2] for line in lines] == ["3/4", "4/4"]
    assert all(re.search(r" elapsed (\d+m)?\d+s remaining (\d+m)?\d+s ", line) for line in lines), (
        lines
    )
    assert lines[-1].split(" remaining ")[1].startswith("0s ")
    # ... and ends with exactly the weights of the uninterrupted training (RNG restored too).
    final, expected = weights(ckpt), weights(reference)
    assert final.keys() == expected.keys()
    assert all(torch.equal(final[k], expected[k]) for k in final)


def test_changed_epochs_or_settings_train_afresh_to_the_model_of_a_fresh_run(tmp_path, capsys):
    files = write_synthetic_events(tmp_path / "features", [1, 2], n_particles=20, n_noise=10)
    fresh = tmp_path / "fresh" / "embedding.ckpt"
    train_embedding(tiny_config(tmp_path, embedding={"epochs": 2}), files[:1], files[1:], fresh)
    ckpt = tmp_path / "models" / "embedding.ckpt"
    epochs_run = []
    record = lambda m, epoch: epochs_run.append(epoch)  # noqa: E731
    train_embedding(tiny_config(tmp_path, embedding={"epochs": 1}), files[:1], files[1:], ckpt)
    capsys.readouterr()
    # More epochs change the learning-rate schedule: the 1-epoch run is not continued, and the
    # result is bit for bit the fresh 2-epoch model.
    train_embedding(
        tiny_config(tmp_path, embedding={"epochs": 2}), files[:1], files[1:], ckpt, log=record
    )
    assert epochs_run == [0, 1]
    assert "training from scratch" in capsys.readouterr().err
    got, expected = weights(ckpt), weights(fresh)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    # A different learning rate shapes other weights: the last checkpoint is not resumed.
    epochs_run.clear()
    capsys.readouterr()
    cfg = tiny_config(tmp_path, embedding={"epochs": 2, "lr": 0.01})
    train_embedding(cfg, files[:1], files[1:], ckpt, log=record)
    assert epochs_run == [0, 1]
    assert "training from scratch" in capsys.readouterr().err
    # Rewritten training inputs (a rerun after the features changed) also start afresh.
    save_tensors(synthetic_features(1, n_particles=20, n_noise=11), files[0])
    epochs_run.clear()
    train_embedding(cfg, files[:1], files[1:], ckpt, log=record)
    assert epochs_run == [0, 1]


def test_truncated_or_garbage_checkpoint_gives_one_line_error(trained, tmp_path):
    cfg, files, ckpt = trained
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x00not a checkpoint at all" * 10)
    for bad in (truncated, garbage):
        with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
            build_graph(cfg, bad, files[0], tmp_path / "graph.pt")
        assert str(bad) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "graph.pt").exists()
    with pytest.raises(CheckpointError, match="does not exist"):
        build_graph(cfg, tmp_path / "missing.ckpt", files[0], tmp_path / "graph.pt")


def test_mismatched_checkpoints_are_refused(trained, tmp_path):
    cfg, files, ckpt = trained
    # An embedding checkpoint where a filter one is expected.
    graph = tmp_path / "graph.pt"
    build_graph(cfg, ckpt, files[0], graph)
    with pytest.raises(CheckpointError, match="is a embedding checkpoint, expected filter"):
        filter_graph(cfg, ckpt, graph, tmp_path / "filtered.pt")

    # Hyperparameters that do not fit the stored weights.
    data = torch.load(ckpt, weights_only=True)
    data["hyper_parameters"]["model"]["hidden"] = 64
    wrong_width = tmp_path / "wrong_width.ckpt"
    torch.save(data, wrong_width)
    with pytest.raises(CheckpointError, match="weights do not match the embedding model"):
        load_model(wrong_width, "embedding", EmbeddingNet)
    data["hyper_parameters"]["model"]["depth"] = 3
    with pytest.raises(CheckpointError, match="incompatible embedding hyperparameters"):
        torch.save(data, wrong_width)
        load_model(wrong_width, "embedding", EmbeddingNet)

    # A tensor file that is not a checkpoint at all.
    with pytest.raises(CheckpointError, match="not a model checkpoint"):
        load_model(files[0], "embedding", EmbeddingNet)

    # A model trained on 8 features applied to an event with 6.
    narrow = synthetic_features(9, n_particles=10, n_noise=5)
    narrow["x"], narrow["feature_names"] = narrow["x"][:, :6], narrow["feature_names"][:6]
    save_tensors(narrow, tmp_path / "narrow.pt")
    with pytest.raises(CheckpointError, match="expects 8 hit features"):
        build_graph(cfg, ckpt, tmp_path / "narrow.pt", tmp_path / "graph6.pt")


def test_corrupt_last_checkpoint_stops_the_rerun_with_a_clear_error(trained, tmp_path):
    cfg, files, ckpt = trained
    target = tmp_path / "models" / "embedding.ckpt"
    last = last_checkpoint_path(target)
    last.parent.mkdir(parents=True)
    shutil.copy(ckpt, last)
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"embedding-last\.ckpt: not a readable checkpoint"):
        train_embedding(cfg, files[:2], files[2:], target)
    assert not target.exists()


def test_training_errors_are_user_errors(tmp_path):
    cfg = tiny_config(tmp_path)
    with pytest.raises(TrackGNNError, match="does not exist"):
        train_embedding(cfg, [tmp_path / "nope.pt"], [], tmp_path / "m.ckpt")
