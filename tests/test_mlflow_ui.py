"""End to end: two pipeline executions with two configs, compared in the MLflow UI.

Starts trackgnn's MLflow server on 127.0.0.1 (temporary SQLite store and artifacts), runs the
smoke pipeline twice with two configurations against it, checks runs, metrics, params, stage
links and artifacts through the REST API, then renders the run-comparison page of the two
pipeline runs in headless Chromium and checks that both run names and a logged metric appear.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from .e2e_helpers import CHROMIUM, compare_runs_url, mlflow_server, render_dom, rest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent (Debian package 'chromium')"
    ),
]

EXPERIMENT = "trackgnn"
COMPARED_METRIC = "trackml_score/all"
# The compare page renders only the first rows of its (alphabetical) metric table, so the
# browser check looks for an early metric; the REST checks cover the headline ones.
RENDERED_METRIC = "counts/n_selected.all"
REPO = Path(__file__).parents[1]

# Two configurations of one smoke run that differ in the track-building cut: the second execution
# reruns only track building and evaluation (the rest is up to date), and is a second pipeline run.
VARIANTS: dict[str, dict[str, Any]] = {
    "alpha": {"tracks": {"score_cut": 0.5}},
    "beta": {"tracks": {"score_cut": 0.8}},
}


def run_smoke_pipeline(tracking_uri: str, configfile: Path, workdir: Path) -> None:
    """Run the real smoke workflow with ``configfile`` in ``workdir``, logging to the server."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--cores",
            "2",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(workdir),
            "--configfile",
            str(REPO / "config" / "smoke.yaml"),
            str(configfile),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]


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

        workdir = tmp_path / "work"
        shutil.copytree(REPO / "config", workdir / "config")
        for name, variant in VARIANTS.items():
            configfile = tmp_path / f"{name}.yaml"
            configfile.write_text(yaml.safe_dump(variant))
            run_smoke_pipeline(base, configfile, workdir)
        timings["pipelines_s"] = time.perf_counter() - start - timings["server_start_s"]

        experiment = rest(base, "experiments/get-by-name", experiment_name=EXPERIMENT)
        experiment_id = experiment["experiment"]["experiment_id"]
        pipelines = _search(base, experiment_id, "tags.`trackgnn.kind` = 'pipeline'")
        assert len(pipelines) == 2, [p["info"]["run_name"] for p in pipelines]
        # oldest first: alpha ran first
        pipelines.sort(key=lambda run: run["info"]["start_time"])
        names = {variant: run for variant, run in zip(VARIANTS, pipelines, strict=True)}
        run_names = [run["info"]["run_name"] for run in pipelines]
        assert len(set(run_names)) == 2 and all(n.startswith("smoke-") for n in run_names)

        for name, run in names.items():
            info, data = run["info"], run["data"]
            assert info["status"] == "FINISHED", (name, info["status"])
            metrics, params = _kv(data.get("metrics")), _kv(data.get("params"))
            assert 0 <= metrics[COMPARED_METRIC] <= 1
            assert RENDERED_METRIC in metrics
            assert "physics_efficiency/pt_gt_0.5_error" in metrics
            assert params["tracks.score_cut"] == str(VARIANTS[name]["tracks"]["score_cut"])
            stages = _search(
                base, experiment_id, f"tags.`trackgnn.pipeline_run_id` = '{info['run_id']}'"
            )
            stage_names = {_kv(s["data"]["tags"])["trackgnn.stage"] for s in stages}
            # the first execution runs every stage; the second only what the cut change reruns
            assert stage_names >= {"build_tracks", "evaluate"}, stage_names
            if name == "alpha":  # every stage execution is a run, simulation and features too
                every_stage = {"simulate_event", "features", "build_graph", "filter_graph"}
                every_stage |= {"train_embedding", "train_filter", "train_gnn", "score_edges"}
                assert stage_names >= every_stage, every_stage - stage_names
            else:
                assert "train_gnn" not in stage_names
            artifacts = rest(base, "artifacts/list", run_id=info["run_id"]).get("files", [])
            assert "summary.json" in {f["path"] for f in artifacts}

        alpha, beta = (names[n]["data"] for n in VARIANTS)
        assert (
            _kv(alpha["tags"])["trackgnn.config_hash"] != _kv(beta["tags"])["trackgnn.config_hash"]
        )
        assert _kv(alpha["params"])["tracks.score_cut"] != _kv(beta["params"])["tracks.score_cut"]

        url = compare_runs_url(
            base, [names[n]["info"]["run_id"] for n in VARIANTS], [experiment_id]
        )
        expected = [*run_names, RENDERED_METRIC]
        render_start = time.perf_counter()
        dom = render_dom(url, tmp_path / "chromium", expected)
        timings["render_s"] = time.perf_counter() - render_start
    missing = [text for text in expected if text not in dom]
    assert not missing, f"{missing} not in the rendered compare page ({len(dom)} chars): {url}"
    assert "Comparing 2 Runs" in dom
    print("timings:", {k: round(v, 1) for k, v in timings.items()})
