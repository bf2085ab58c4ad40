"""End to end: two pipeline executions with two configs, compared in the MLflow UI.

Starts trackgnn's MLflow server on 127.0.0.1 (temporary SQLite store and artifacts), runs the
smoke pipeline twice with two configurations against it, checks runs, metrics, params, stage
links and artifacts through the REST API, then renders the run-comparison page of the two
pipeline runs in headless Chromium and checks that both run names and a logged metric appear.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from trackgnn import runlog

from .e2e_helpers import CHROMIUM, compare_runs_url, mlflow_server, render_dom, rest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (Debian package 'chromium')"
    ),
]

EXPERIMENT = "trackgnn"
COMPARED_METRIC = "physics_efficiency.pt_gt_0.5"

# Two smoke configurations that differ in a GNN and a track-building parameter.
VARIANTS: dict[str, dict[str, Any]] = {
    "smoke-alpha": {"gnn": {"hidden": 16, "epochs": 2}, "tracks": {"score_cut": 0.5}},
    "smoke-beta": {"gnn": {"hidden": 32, "epochs": 2}, "tracks": {"score_cut": 0.7}},
}


def run_smoke_pipeline(tracking_uri: str, configfile: Path, workdir: Path) -> None:
    """Run the smoke pipeline with ``configfile`` in ``workdir``, logging to ``tracking_uri``.

    TODO(lead): replace this simulation with the real workflow, e.g.
        subprocess.run(["snakemake", "--cores", "2", "--configfile", str(configfile),
                        "--directory", str(workdir), "--snakefile", str(REPO / "Snakefile")],
                       env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}, check=True)
    with ``configfile`` a variant of config/smoke.yaml. Until then it does through runlog's
    public API what the Snakefile (onstart/onsuccess) and the stage commands do.
    """
    config = yaml.safe_load(configfile.read_text())
    run_dir = workdir / "results" / config["run"]
    marker = run_dir / "pipeline_run.json"
    runlog.init_store(tracking_uri, config["mlflow"]["experiment"])
    runlog.start_pipeline_run(
        config,
        config["run"],
        marker,
        tracking_uri=tracking_uri,
        experiment=config["mlflow"]["experiment"],
    )
    cut = config["tracks"]["score_cut"]
    with runlog.stage_run("train_gnn", config["gnn"], marker, system_metrics=True) as run:
        for epoch in range(config["gnn"]["epochs"]):
            run.log_metrics({"loss": 1.0 / (epoch + 1), "val_auc": 0.9 + 0.01 * epoch}, epoch)
    with runlog.stage_run("build_tracks", config["tracks"], marker) as run:
        for step in range(2):
            run.log_metrics({"n_tracks": 100 + step, "time_s": 0.1}, step)
    efficiency = round(0.95 - (cut - 0.5) / 4, 4)
    summary = {
        "physics_efficiency": {
            "pt>0.5": {"value": efficiency, "error": 0.01},
            "all": {"value": efficiency - 0.1, "error": 0.01},
        },
        "trackml_score": {"pt>0.5": {"value": 0.85, "error": 0.02}, "all": {"value": 0.8}},
        "n_events": 2,
    }
    summary_path = run_dir / "report" / "summary.json"
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(summary))
    runlog.finish_pipeline_run(marker, summary_path, [configfile])


def _search(base: str, experiment_id: str, filter_string: str) -> list[dict[str, Any]]:
    payload = {"experiment_ids": [experiment_id], "filter": filter_string, "max_results": 100}
    return rest(base, "runs/search", payload).get("runs", [])


def _kv(entries: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {e["key"]: e["value"] for e in entries or []}


def test_two_configs_compared_in_the_mlflow_ui(tmp_path: Path) -> None:
    timings: dict[str, float] = {}
    start = time.perf_counter()
    with mlflow_server(tmp_path / "server") as base:
        timings["server_start_s"] = time.perf_counter() - start

        for name, variant in VARIANTS.items():
            config = {"run": name, "mlflow": {"tracking_uri": None, "experiment": EXPERIMENT}}
            config.update(variant)
            configfile = tmp_path / f"{name}.yaml"
            configfile.write_text(yaml.safe_dump(config))
            run_smoke_pipeline(base, configfile, tmp_path / name)
        timings["pipelines_s"] = time.perf_counter() - start - timings["server_start_s"]

        experiment = rest(base, "experiments/get-by-name", experiment_name=EXPERIMENT)
        experiment_id = experiment["experiment"]["experiment_id"]
        pipelines = _search(base, experiment_id, "tags.`trackgnn.kind` = 'pipeline'")
        names = {run["info"]["run_name"]: run for run in pipelines}
        assert sorted(names) == sorted(VARIANTS), sorted(names)

        for name, run in names.items():
            info, data = run["info"], run["data"]
            assert info["status"] == "FINISHED", (name, info["status"])
            metrics, params = _kv(data.get("metrics")), _kv(data.get("params"))
            assert 0 < metrics[COMPARED_METRIC] <= 1
            assert "trackml_score.all" in metrics
            assert params["tracks.score_cut"] == str(VARIANTS[name]["tracks"]["score_cut"])
            stages = _search(
                base, experiment_id, f"tags.`trackgnn.pipeline_run_id` = '{info['run_id']}'"
            )
            assert {_kv(s["data"]["tags"])["trackgnn.stage"] for s in stages} >= {
                "train_gnn",
                "build_tracks",
            }
            artifacts = rest(base, "artifacts/list", run_id=info["run_id"]).get("files", [])
            assert "summary.json" in {f["path"] for f in artifacts}

        alpha, beta = (names[n]["data"] for n in VARIANTS)
        assert (
            _kv(alpha["tags"])["trackgnn.config_hash"] != _kv(beta["tags"])["trackgnn.config_hash"]
        )
        assert _kv(alpha["metrics"])[COMPARED_METRIC] != _kv(beta["metrics"])[COMPARED_METRIC]

        url = compare_runs_url(
            base, [names[n]["info"]["run_id"] for n in VARIANTS], [experiment_id]
        )
        expected = [*VARIANTS, COMPARED_METRIC]
        render_start = time.perf_counter()
        dom = render_dom(url, tmp_path / "chromium", expected)
        timings["render_s"] = time.perf_counter() - render_start
    missing = [text for text in expected if text not in dom]
    assert not missing, f"{missing} not in the rendered compare page ({len(dom)} chars): {url}"
    assert "Comparing 2 Runs" in dom
    print("timings:", {k: round(v, 1) for k, v in timings.items()})
