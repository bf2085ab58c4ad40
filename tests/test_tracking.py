"""trackgnn.tracking against temporary SQLite stores: linking, params, metrics, failures, ranks."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from trackgnn import tracking
from trackgnn.config import section_hash
from trackgnn.errors import TrackGNNError
from trackgnn.tracking import Target
from trackgnn.tracking.names import flatten_metrics, sanitize_key

CONFIG = {
    "run": "unit",
    "seed": 7,
    "gnn": {"hidden": 64, "lr": 0.001, "layers": [64, 64], "amp": False, "note": None},
    "evaluation": {"pt_cuts": {"pt>0.5": 0.5}},
    "long": "x" * 7000,
}
SUMMARY = {
    "physics_efficiency": {
        "pt>0.5": {"value": 0.93, "error": 0.01},
        "all": {"value": 0.81, "error": 0.02},
    },
    "edge_metrics": {"gnn": {"auc": 0.99, "efficiency": 0.95}},
    "timing_s": {"gnn": 0.25},
    "n_events": 2,
    "label": "not a number",
    "table": [1, 2, 3],
}


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow database with the schema only: MLflow's migrations take seconds, a copy doesn't."""
    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_db: Path) -> tuple[str, Path]:
    """A fresh store in the project's default layout, with no rank or URI in the environment."""
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    results = tmp_path / "results"
    results.mkdir()
    shutil.copy(empty_db, results / "mlflow.db")
    uri = tracking.resolve_tracking_uri(None, results)
    assert tracking.init_store(uri, "unit") is not None
    return uri, results


def _runs(uri: str, experiment: str = "unit", filter_string: str = "") -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], filter_string) if exp else []


def test_pipeline_run_links_stage_runs_with_params_metrics_and_artifacts(store, tmp_path):
    uri, results = store
    marker = results / "unit" / "pipeline_run.json"
    target = Target(uri, "unit", marker)
    run_id = tracking.start_pipeline_run(target, CONFIG, "unit-a")
    assert run_id is not None
    assert json.loads(marker.read_text())["run_id"] == run_id

    with tracking.stage_run(target, "train_gnn", CONFIG["gnn"]) as run:
        assert run.active
        for epoch, loss in enumerate([0.9, 0.5, 0.3]):
            run.log_metrics({"loss": loss, "val": {"auc": 0.5 + epoch / 10}}, step=epoch)
        run.set_tags({"device": "cpu"})
    with tracking.stage_run(
        target, "build_tracks", {"score_cut": 0.5}, run_name="tracks-b0"
    ) as run:
        run.log_metrics({"n_tracks": 12, "pt>0.5 eff": 0.9}, step=3)

    report = tmp_path / "report"
    report.mkdir()
    (report / "summary.json").write_text(json.dumps(SUMMARY))
    (report / "eff_vs_pt.png").write_bytes(b"\x89PNG fake")
    ended = tracking.finish_pipeline_run(
        target, report / "summary.json", [report / "eff_vs_pt.png"], status="finished"
    )
    assert ended == run_id
    assert not marker.exists()  # no later stage job may link to a finished run

    client = MlflowClient(uri)
    pipeline = client.get_run(run_id)
    assert pipeline.info.status == "FINISHED"
    assert pipeline.info.run_name == "unit-a"
    tags = pipeline.data.tags
    assert tags["trackgnn.kind"] == "pipeline"
    assert tags["trackgnn.config_hash"] == section_hash(CONFIG)
    assert tags["trackgnn.code_version"]
    params = pipeline.data.params
    assert params["gnn.hidden"] == "64"
    assert params["gnn.layers"] == "[64, 64]"
    assert params["gnn.amp"] == "false" and params["gnn.note"] == "null"
    assert params["evaluation.pt_cuts.pt_gt_0.5"] == "0.5"
    assert len(params["long"]) == 6000 and params["long"].endswith("[truncated]")
    metrics = pipeline.data.metrics
    assert metrics["physics_efficiency/pt_gt_0.5"] == pytest.approx(0.93)
    assert metrics["physics_efficiency/pt_gt_0.5_error"] == pytest.approx(0.01)
    assert metrics["physics_efficiency/all"] == pytest.approx(0.81)
    assert metrics["edge_metrics/gnn/auc"] == pytest.approx(0.99)
    assert metrics["n_events"] == 2
    assert "label" not in metrics and "table" not in metrics
    artifacts = {f.path for f in client.list_artifacts(run_id)}
    assert {"summary.json", "eff_vs_pt.png", "config.json"} <= artifacts
    # Artifacts of the default store live under results/mlartifacts.
    assert list((results / "mlartifacts").rglob("summary.json"))

    stages = _runs(uri, filter_string=f"tags.`trackgnn.pipeline_run_id` = '{run_id}'")
    by_stage = {r.data.tags["trackgnn.stage"]: r for r in stages}
    assert set(by_stage) == {"train_gnn", "build_tracks"}
    train = by_stage["train_gnn"]
    assert train.data.tags["trackgnn.kind"] == "stage"
    assert train.data.tags["mlflow.parentRunId"] == run_id
    assert train.data.tags["trackgnn.config_hash"] == section_hash(CONFIG["gnn"])
    assert train.data.tags["device"] == "cpu"
    assert train.data.params["hidden"] == "64"
    assert train.info.status == "FINISHED"
    history = client.get_metric_history(train.info.run_id, "loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (0, 0.9),
        (1, 0.5),
        (2, 0.3),
    ]
    assert train.data.metrics["val/auc"] == pytest.approx(0.7)
    tracks = by_stage["build_tracks"]
    assert tracks.info.run_name == "tracks-b0"
    assert tracks.data.metrics["pt_gt_0.5 eff"] == pytest.approx(0.9)
    # Only the one pipeline run carries the pipeline tag.
    pipelines = _runs(uri, filter_string="tags.`trackgnn.kind` = 'pipeline'")
    assert [r.info.run_id for r in pipelines] == [run_id]


def test_stage_run_without_pipeline_marker_and_failed_stage(store):
    uri, results = store
    with pytest.raises(RuntimeError, match="boom"):
        with tracking.stage_run(Target(uri, "unit", results / "absent.json"), "filter",
                                {"cut": 0.1}) as run:  # fmt: skip
            run.log_metrics({"edges": 10})
            raise RuntimeError("boom")
    (failed,) = _runs(uri)
    assert failed.info.status == "FAILED"
    assert "trackgnn.pipeline_run_id" not in failed.data.tags
    assert failed.data.metrics["edges"] == 10


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_warns_once_and_never_raises(tmp_path, caplog, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    uri = f"http://127.0.0.1:{_closed_port()}"
    marker = tmp_path / "run" / "pipeline_run.json"
    caplog.set_level(logging.WARNING, logger="trackgnn.tracking")
    start = time.perf_counter()
    target = Target(uri, marker=marker)
    assert tracking.init_store(uri, "unit") is None
    assert tracking.start_pipeline_run(target, CONFIG, "down") is None
    # The marker still records "no run", so stage jobs cannot link to an older one.
    assert json.loads(marker.read_text())["run_id"] is None
    with tracking.stage_run(target, "train_gnn", {"a": 1}, system_metrics=True) as run:
        assert not run.active and run.run_id is None
        run.log_metrics({"loss": 1.0}, step=0)
        run.log_params({"b": 2})
        run.set_tags({"c": 3})
        run.log_artifact(marker)
    assert tracking.finish_pipeline_run(target, SUMMARY, [], status="FAILED") is None
    elapsed = time.perf_counter() - start
    assert elapsed < 10, f"unreachable server cost {elapsed:.1f} s"
    warnings = [r for r in caplog.records if r.name == "trackgnn.tracking"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "127.0.0.1" in warnings[0].getMessage()


def test_mlflow_error_mid_run_degrades_to_noop(store, caplog):
    uri, _ = store
    caplog.set_level(logging.WARNING, logger="trackgnn.tracking")
    with tracking.stage_run(Target(uri, "unit"), "gnn", {"hidden": 8}) as run:
        run.log_params({"hidden": 16})  # params are immutable in MLflow: this call fails
        assert not run.active
        run.log_metrics({"loss": 1.0})  # silently dropped, no second warning
    assert len([r for r in caplog.records if r.name == "trackgnn.tracking"]) == 1
    (broken,) = _runs(uri)
    assert broken.data.params["hidden"] == "8"
    assert "loss" not in broken.data.metrics
    assert broken.info.status == "FINISHED"  # still ended, not left RUNNING
    # The store itself is fine: the next run of this process logs normally.
    with tracking.stage_run(Target(uri, "unit"), "gnn", {"hidden": 8}) as run:
        run.log_metrics({"loss": 2.0})
    assert MlflowClient(uri).get_run(run.run_id).data.metrics == {"loss": 2.0}


def test_more_params_and_metrics_than_one_mlflow_batch_holds_are_all_logged(store):
    # MLflow takes at most 100 params and 1000 metrics per request; log_batch splits larger ones.
    uri, _ = store
    params = {f"p{i:03d}": i for i in range(250)}
    with tracking.stage_run(Target(uri, "unit"), "wide", params) as run:
        run.log_metrics({f"m{i:04d}": float(i) for i in range(2500)}, step=1)
        assert run.active
    logged = MlflowClient(uri).get_run(run.run_id).data
    assert len(logged.params) == 250 and logged.params["p249"] == "249"
    assert len(logged.metrics) == 2500 and logged.metrics["m2499"] == 2499.0


@pytest.mark.parametrize("env", [{"RANK": "1"}, {"SLURM_PROCID": "3"}, {"LOCAL_RANK": "1"}])
def test_nonzero_rank_logs_nothing(store, monkeypatch, env):
    uri, results = store
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert tracking.process_rank() != 0
    marker = results / "pipeline_run.json"
    target = Target(uri, "unit", marker)
    assert tracking.start_pipeline_run(target, CONFIG, "r1") is None
    assert not marker.exists()  # only rank 0 writes the marker
    with tracking.stage_run(target, "train_gnn", {"a": 1}) as run:
        assert not run.active
        run.log_metrics({"loss": 1.0})
    assert _runs(uri) == []


def test_init_store_is_idempotent_and_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    results = tmp_path / "res"
    uri = tracking.resolve_tracking_uri(None, results)
    assert uri == f"sqlite:///{(results / 'mlflow.db').resolve()}"
    first = tracking.init_store(uri, "trackgnn")
    assert first is not None and (results / "mlflow.db").exists()
    assert tracking.init_store(uri, "trackgnn") == first
    exp = MlflowClient(uri).get_experiment_by_name("trackgnn")
    assert exp.artifact_location == (results / "mlartifacts").resolve().as_uri()
    # Opens as model training in the MLflow UI, not as a GenAI application.
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert tracking.resolve_tracking_uri(None, results) == "http://127.0.0.1:9"
    assert tracking.resolve_tracking_uri("sqlite:///x.db", results) == "sqlite:///x.db"


def test_metric_names_are_sanitised():
    assert sanitize_key("pt>0.5") == "pt_gt_0.5"
    assert sanitize_key("|eta|<4") == "_eta__lt_4"
    assert sanitize_key("a b/c-d.e_f") == "a b/c-d.e_f"
    flat = flatten_metrics({"x": {"pt>=1": {"value": 2, "error": None}}, "ok": True})
    assert flat == {"x/pt_ge_1": 2.0, "ok": 1.0}
    flat = flatten_metrics({"x": {"a": {"value": 2, "error": 0.5}, "b": {"c": 3}}})
    assert flat == {"x/a": 2.0, "x/a_error": 0.5, "x/b/c": 3.0}


def test_system_metrics_are_sampled_during_a_stage(store):
    uri, _ = store
    with tracking.stage_run(
        Target(uri, "unit"),
        "train_gnn",
        {},
        system_metrics=True,
        system_metrics_interval_s=0.2,
    ) as run:
        # Poll rather than sleep a fixed time: on a loaded machine the monitor's first batch of
        # samples can take several intervals to be logged.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            metrics = MlflowClient(uri).get_run(run.run_id).data.metrics
            if "system/cpu_utilization_percentage" in metrics:
                break
            time.sleep(0.2)
    metrics = MlflowClient(uri).get_run(run.run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics
    assert any(k.startswith("system/system_memory") for k in metrics), sorted(metrics)


def test_epoch_report_logs_each_epoch_to_the_stage_run_with_the_epoch_as_step(store):
    """The per-epoch path every training uses: EpochReport forwards to RunLogger.log_metrics."""
    torch = pytest.importorskip("torch")
    pl = pytest.importorskip("pytorch_lightning")
    from torch.utils.data import DataLoader, TensorDataset

    from trackgnn.training.driver import EpochReport

    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, _):
            x, y = batch
            loss = ((self.layer(x) - y) ** 2).mean()
            self.log("loss", loss, on_step=False, on_epoch=True)
            self.log("allreduce_ms", 0.0, on_step=False, on_epoch=True)  # same value each epoch
            return loss

        def validation_step(self, batch, _):
            x, y = batch
            self.log("val_loss", ((self.layer(x) - y) ** 2).mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    uri, _ = store
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(32, 2), torch.randn(32, 1))
    with tracking.stage_run(Target(uri, "unit"), "train_tiny", {}) as run:
        trainer = pl.Trainer(
            max_epochs=3,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[EpochReport("tiny", run.log_metrics)],
        )
        trainer.fit(Tiny(), DataLoader(data, batch_size=8), DataLoader(data, batch_size=8))
    client = MlflowClient(uri)

    def steps(key: str) -> dict[int, float]:
        return {m.step: m.value for m in client.get_metric_history(run.run_id, key)}

    assert steps("allreduce_ms") == {0: 0.0, 1: 0.0, 2: 0.0}
    assert sorted(steps("loss")) == [0, 1, 2]
    assert sorted(steps("val_loss")) == [0, 1, 2]
    assert steps("loss")[2] == pytest.approx(float(trainer.callback_metrics["loss"]))


def test_ui_command_targets_the_project_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking.resolve_tracking_uri(None, tmp_path / "results")
    command = tracking.ui_command(uri, port=5123)
    assert command[1:4] == ["-m", "mlflow", "server"]
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--port") + 1] == "5123"
    db = (tmp_path / "results" / "mlflow.db").resolve()
    assert command[command.index("--backend-store-uri") + 1] == f"sqlite:///{db}"
    assert command[command.index("--artifacts-destination") + 1] == str(db.parent / "mlartifacts")
    with pytest.raises(TrackGNNError, match="already a server"):
        tracking.ui_command("http://127.0.0.1:5000")
