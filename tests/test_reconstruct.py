"""Reconstruction of a user's events with a finished run's models: the workflow target and the
one-process command.

A quick smoke pipeline trains tiny models once for the module. The events to reconstruct are
written by the generator with ids that are not one range, gzipped, and stripped of their truth,
as in a TrackML ``test/`` download. The workflow's ``reconstruct`` target and ``trackgnn
reconstruct`` must then give one submission covering every hit of every event exactly once,
train nothing and write nothing into the training run; each bad input is one line naming the
file, exit status 2 and no output at all.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from trackgnn.cli import main
from trackgnn.io import list_event_ids
from trackgnn.models.embedding import EmbeddingNet
from trackgnn.simulation import simulate_events

from .conftest import QUICK, SMOKE, SMOKE_RUN, planned_jobs, snakemake, write_config

pytestmark = pytest.mark.slow
TRAINING_RUN = SMOKE_RUN
EVENT_IDS = (7001, 7005, 7042)  # not one consecutive range
TEST_EVENT = "000005003"  # the smoke config's only test event


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``directory`` with its size and modification time (ns)."""
    return {
        str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def write_events(directory: Path, ids, truth: bool, seed: int = 11) -> Path:
    """Generator events with these ids, gzipped; without truth and particles unless ``truth``."""
    for event_id in ids:
        simulate_events(1, 3, seed, directory, first_event_id=event_id, compress=True)
    if not truth:
        for path in [*directory.glob("*-truth.csv.gz"), *directory.glob("*-particles.csv.gz")]:
            path.unlink()
    return directory


@pytest.fixture(scope="module")
def trained(smoke_run):
    """The shared smoke run (its models) and a directory of truth-less gzipped events."""
    events = write_events(smoke_run.work / "test_events", EVENT_IDS, truth=False)
    return SimpleNamespace(
        work=smoke_run.work, run=smoke_run.run, models=smoke_run.run / "models", events=events
    )


def check_submission(output: Path, events: Path, ids) -> pd.DataFrame:
    """The combined submission covers every hit of every event exactly once; per-event files too."""
    combined = pd.read_csv(output / "submission.csv")
    assert list(combined.columns) == ["event_id", "hit_id", "track_id"]
    assert sorted(combined["event_id"].unique()) == sorted(ids)
    assert not combined.duplicated(["event_id", "hit_id"]).any()
    for event_id in ids:
        hits = pd.read_csv(events / f"event{event_id:09d}-hits.csv.gz")
        rows = combined[combined["event_id"] == event_id]
        assert sorted(rows["hit_id"]) == sorted(hits["hit_id"])
        assert (rows["track_id"] >= 0).all()
        per_event = pd.read_csv(output / f"event{event_id:09d}.csv")
        assert list(per_event.columns) == ["hit_id", "track_id"]
        assert per_event.equals(rows[["hit_id", "track_id"]].reset_index(drop=True))
    return combined


def test_reconstruct_target_covers_every_hit_once_and_trains_nothing(trained):
    before = snapshot(trained.run)
    config = write_config(
        trained.work / "reco.yaml",
        {
            **QUICK,
            "run": "reco",
            "reconstruct": {
                "models": str(trained.models),
                "events": str(trained.events),
                "ids": [7001, "7005-7042"],
            },
        },
    )
    plan = snakemake(trained.work, "reconstruct", "--dry-run", configs=[SMOKE, config])
    jobs = planned_jobs(plan.stdout + plan.stderr)
    assert jobs == {"reconstruct_events": 1, "reconstruct": 1}, plan.stdout[-3000:]
    result = snakemake(trained.work, "reconstruct", configs=[SMOKE, config])
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    output = trained.work / "results" / "reco" / "reconstruct"
    check_submission(output, trained.events, EVENT_IDS)
    assert not (output / "report").exists()  # no truth, no evaluation
    assert snapshot(trained.run) == before  # nothing retrained, nothing written there


def test_reconstruct_target_refuses_the_training_run_as_its_run(trained):
    config = write_config(
        trained.work / "same-run.yaml",
        {
            **QUICK,
            "run": TRAINING_RUN,
            "reconstruct": {"models": str(trained.models), "events": str(trained.events)},
        },
    )
    result = snakemake(trained.work, "reconstruct", "--dry-run", configs=[SMOKE, config])
    assert result.returncode != 0
    assert "is the training run of reconstruct.models" in result.stdout + result.stderr


def test_reconstruct_command_equals_the_per_stage_workflow_and_evaluates_with_truth(
    trained, tmp_path
):
    # The training run's test event went through the workflow's per-stage jobs; the one-process
    # command (the training run's config, found beside the models) gives the same tracks.
    output = tmp_path / "out"
    before = snapshot(trained.run)
    prefix = trained.run / "events" / f"event{TEST_EVENT}"
    args = ["reconstruct", "--models", str(trained.models), "--events", str(prefix)]
    assert main([*args, "--output", str(output)]) == 0
    workflow_tracks = pd.read_csv(trained.run / "tracks" / f"event{TEST_EVENT}.csv")
    assert pd.read_csv(output / f"event{TEST_EVENT}.csv").equals(workflow_tracks)
    combined = pd.read_csv(output / "submission.csv")
    assert (combined["event_id"] == int(TEST_EVENT)).all()
    assert combined[["hit_id", "track_id"]].equals(workflow_tracks)
    summary = json.loads((output / "report" / "summary.json").read_text())
    assert summary["n_events"] == 1
    assert snapshot(trained.run) == before
    # Again into the same directory: the outputs are replaced, the same.
    assert main([*args, "--output", str(output)]) == 0
    assert pd.read_csv(output / "submission.csv").equals(combined)


def copy_models(trained, tmp_path: Path) -> Path:
    models = tmp_path / "copied-run" / "models"
    shutil.copytree(trained.models, models)
    shutil.copytree(trained.run / "configs", models.parent / "configs")
    return models


def bad_events_without_cells(trained, tmp_path: Path) -> tuple[Path, Path]:
    events = tmp_path / "no-cells"
    shutil.copytree(trained.events, events)
    missing = events / "event000007005-cells.csv.gz"
    missing.unlink()
    return events, missing


def bad_events_with_empty_cells(trained, tmp_path: Path) -> tuple[Path, Path]:
    # The last event's cells file has a header and no rows: the first events reconstruct fine,
    # and still nothing may be left behind.
    events = tmp_path / "empty-cells"
    shutil.copytree(trained.events, events)
    empty = events / "event000007042-cells.csv"
    (events / "event000007042-cells.csv.gz").unlink()
    empty.write_text("hit_id,ch0,ch1,value\n")
    return events, empty


def mismatched_feature_models(trained, tmp_path: Path) -> tuple[Path, Path]:
    # A consistent checkpoint (weights match its hyperparameters) of an embedding trained on
    # six hit features, where the events give eight.
    models = copy_models(trained, tmp_path)
    path = models / "embedding.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    hparams = dict(checkpoint["hyper_parameters"]["model"], in_dim=6, angle_columns=[1])
    net = EmbeddingNet(**hparams)
    checkpoint["hyper_parameters"]["model"] = hparams
    checkpoint["state_dict"] = {f"model.{k}": v for k, v in net.state_dict().items()}
    torch.save(checkpoint, path)
    return models, path


@pytest.mark.parametrize(
    "case",
    [
        "missing-checkpoint",
        "mismatched-features",
        "empty-events-dir",
        "event-without-cells",
        "event-with-empty-cells",
        "id-not-in-directory",
        "output-inside-training-run",
    ],
)
def test_bad_input_is_one_line_naming_the_file_and_leaves_no_output(
    trained, tmp_path, case, capsys
):
    models, events, extra = trained.models, trained.events, []
    output = tmp_path / "out"
    if case == "missing-checkpoint":
        models = copy_models(trained, tmp_path)
        (models / "gnn.ckpt").unlink()
        named, problem = models / "gnn.ckpt", "gnn checkpoint missing"
    elif case == "mismatched-features":
        models, named = mismatched_feature_models(trained, tmp_path)
        problem = "trained on 6 hit features"
    elif case == "empty-events-dir":
        events = tmp_path / "empty"
        events.mkdir()
        named, problem = events, "no TrackML events"
    elif case == "event-without-cells":
        events, missing = bad_events_without_cells(trained, tmp_path)
        named, problem = missing.with_suffix(""), "does not exist"
    elif case == "event-with-empty-cells":
        events, named = bad_events_with_empty_cells(trained, tmp_path)
        problem = "event has no cells"
    elif case == "id-not-in-directory":
        extra = ["--ids", "7001", "7002"]
        named, problem = events, "no event 000007002"
    else:
        output = trained.run / "reconstruct"
        named, problem = output, "inside the training run"
    parent_before = sorted(p.name for p in output.parent.iterdir())
    args = ["--models", str(models), "--events", str(events), "--output", str(output), *extra]
    code = main(["reconstruct", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    message = err[-1]
    assert message.startswith("trackgnn reconstruct: error: ")
    assert str(named) in message and problem in message, message
    assert not output.exists()
    assert sorted(p.name for p in output.parent.iterdir()) == parent_before  # no temp leftovers


def test_event_selection_and_ids(trained):
    from trackgnn.errors import ConfigError, InputError
    from trackgnn.io import parse_event_ids
    from trackgnn.reconstruct import select_events

    assert parse_event_ids([7001, "7003-7005", "9"]) == [(7001, 7001), (7003, 7005), (9, 9)]
    with pytest.raises(ConfigError, match="FIRST-LAST"):
        parse_event_ids(["7001:7005"])
    with pytest.raises(ConfigError, match="before the first"):
        parse_event_ids(["7005-7001"])
    every = select_events([trained.events])
    assert [int(p.name[5:]) for p in every] == list(EVENT_IDS) == list_event_ids(trained.events)
    chosen = select_events([trained.events], [7042, "7000-7010", 7001])
    assert [p.name for p in chosen] == ["event000007042", "event000007001", "event000007005"]
    with pytest.raises(InputError, match="no event in 7100-7200 here"):
        select_events([trained.events], ["7100-7200"])
    assert np.array_equal(
        [p.name for p in select_events([str(p) for p in chosen])], [p.name for p in chosen]
    )


def test_chunked_gnn_inference_gives_the_whole_graph_scores():
    from trackgnn.models.interaction_gnn import InteractionGNN

    torch.manual_seed(0)
    model = InteractionGNN(5, hidden=16, n_iterations=3, angle_columns=[1]).eval()
    x, edge_attr = torch.randn(300, 5), torch.randn(2000, 6)
    edge_index = torch.randint(0, 300, (2, 2000))
    with torch.no_grad():
        whole = model(x, edge_attr, edge_index)
        chunked = [model(x, edge_attr, edge_index, edge_chunk=c) for c in (768, 1536, 100_000)]
    assert torch.allclose(whole, chunked[0], atol=1e-5)
    # Tile-padded chunks: the same bits whatever the chunk size.
    assert torch.equal(chunked[0], chunked[1]) and torch.equal(chunked[0], chunked[2])
    with pytest.raises(ValueError, match="inference"):
        model(x, edge_attr, edge_index, edge_chunk=768)
