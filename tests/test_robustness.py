"""Pile-up and noise studies: the trained smoke pipeline applied to other pile-up and noise levels.

The study's point at the run's own settings reproduces the run's test events and must give the
pipeline's own figures (a study that reconstructed or evaluated differently would not); the other
points must really change the events (more hits at higher pile-up or noise), train nothing, and
log one MLflow run per point.
"""

from __future__ import annotations

import json
import sqlite3

import pandas as pd
import pytest

from .conftest import SMOKE, cli, planned_jobs, snakemake, write_config

pytestmark = pytest.mark.slow
PILEUP = [3, 12]  # the smoke config's mu is 3
NOISE = [0.0, 0.15, 0.3]  # its noise fraction is the default 0.15


@pytest.fixture(scope="module")
def studied(smoke_run):
    overrides = write_config(
        smoke_run.work / "studies.yaml",
        {"studies": {"pileup_mu": PILEUP, "noise_fractions": NOISE}},
    )
    configs = [SMOKE, smoke_run.base, overrides]
    plan = snakemake(smoke_run.work, "pileup_study", "noise_study", "-n", configs=configs)
    assert plan.returncode == 0, plan.stderr[-3000:]
    result = snakemake(smoke_run.work, "pileup_study", "noise_study", configs=configs)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    return smoke_run, planned_jobs(plan.stdout), result.stdout


def test_studies_train_nothing_and_simulate_each_point_once(studied):
    _, jobs, _ = studied
    assert not [rule for rule in jobs if rule.startswith("train_")], jobs
    assert jobs["simulate_study_events"] == len(PILEUP) + len(NOISE)
    assert jobs["measure_study_point"] == len(PILEUP) + len(NOISE)


def test_point_at_the_runs_own_settings_reproduces_the_pipelines_figures(studied):
    run, _, _ = studied
    summary = json.loads((run.run / "report" / "summary.json").read_text())
    for study, label in (("pileup", "mu3"), ("noise", "noise0.15")):
        events = run.run / "study" / study / label / "events"
        # the same event, simulated anew from its id and the seed
        for kind in ("hits", "truth"):
            assert (events / f"event000005003-{kind}.csv").read_bytes() == (
                run.run / "events" / f"event000005003-{kind}.csv"
            ).read_bytes()
        point = json.loads((run.run / "study" / study / f"{label}.json").read_text())
        figures = point["figures"]
        assert figures["technical_efficiency"]["value"] == pytest.approx(
            summary["technical_efficiency"]["pt>0.5"]["value"]
        )
        assert figures["purity"]["value"] == pytest.approx(summary["purity"]["all"]["value"])
        assert figures["trackml_score"]["value"] == pytest.approx(
            summary["trackml_score"]["all"]["value"]
        )


def test_tables_plots_and_mlflow_runs(studied):
    run, _, stdout = studied
    assert "tech.eff" in stdout  # each report prints its table
    report = run.run / "report"
    pileup = pd.read_csv(report / "pileup" / "pileup.csv")
    noise = pd.read_csv(report / "noise" / "noise.csv")
    assert pileup["mu"].tolist() == PILEUP and noise["noise_fraction"].tolist() == NOISE
    # other settings really reach the simulation: more hits at higher pile-up and noise
    assert pileup["n_hits_per_event"].is_monotonic_increasing
    assert noise["n_hits_per_event"].is_monotonic_increasing
    assert pileup["n_hits_per_event"].iloc[-1] > 2 * pileup["n_hits_per_event"].iloc[0]
    for frame in (pileup, noise):
        assert frame["technical_efficiency"].between(0, 1).all()
        assert (frame["seconds_per_event"] > 0).all()
    events = pd.read_csv(report / "pileup" / "pileup_events.csv")
    assert len(events) == len(PILEUP) and {"n_hits", "seconds", "purity"} <= set(events.columns)
    for study in ("pileup", "noise"):
        assert (report / study / f"{study}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with sqlite3.connect(run.work / "results" / "mlflow.db") as db:
        names = {
            name
            for (name,) in db.execute(
                "SELECT r.name FROM runs r JOIN tags t ON r.run_uuid = t.run_uuid "
                "WHERE t.key = 'trackgnn.study' AND t.value IN ('pileup', 'noise')"
            )
        }
    assert names == {
        "pileup_study",
        "noise_study",
        "pileup-mu3",
        "pileup-mu12",
        "noise-noise0",
        "noise-noise0.15",
        "noise-noise0.3",
    }


def test_report_refuses_a_file_that_is_not_a_point(tmp_path):
    bad = tmp_path / "point.json"
    bad.write_text('{"study": "noise", "events": []}')
    result = cli("study", "pileup", "report", "--inputs", str(bad), "--output-dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"trackgnn study: error: {bad}: not a point of the pileup study"
    ]
    assert not (tmp_path / "pileup.csv").exists()
