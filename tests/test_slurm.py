"""The cluster path for real: the smoke pipeline on a single-node SLURM cluster.

A module fixture stands up munged, slurmctld and slurmd on 127.0.0.1 (tests/slurm_fixture.py;
skipped with the reason where that is impossible), then runs the smoke pipeline once with a test
profile that uses Snakemake's SLURM executor: per-event jobs grouped into a few SLURM jobs, the
GNN trained by two data-parallel ranks that srun starts inside the job (resource ``mpi``), as the
perlmutter profile does with one rank per GPU. The tests then read what happened. A second
cluster runs the first two stages with workflow.events_per_job 2, as the perlmutter profile's
config does (50): one SLURM job per chunk of events, with the stage's resources.
"""

from __future__ import annotations

import collections
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .slurm_fixture import slurm_cluster, slurm_unavailable

REPO = Path(__file__).resolve().parents[1]
RUN = "slurm"
pytestmark = pytest.mark.slow

# The perlmutter profile's choices, scaled down to a 2-core machine with no GPUs and no accounting.
TEST_PROFILE = {
    "executor": "slurm",
    "jobs": 8,
    "latency-wait": 5,
    "retries": 0,
    "seconds-between-status-checks": 1,
    "max-status-checks-per-second": 10,
    "slurm-logdir": "logs/slurm",
    "slurm-keep-successful-logs": True,
    "slurm-status-command": "squeue",  # no accounting database, hence no sacct
    "slurm-init-seconds-before-status-checks": 1,
    "default-resources": {"slurm_partition": "debug", "mem_mb": 500, "runtime": 20},
    # As on Perlmutter: srun starts the ranks; one dead rank ends the step.
    "set-resources": {"train_gnn": {"mpi": "'srun --kill-on-bad-exit=1'", "cpus_per_task": 1}},
    # Few SLURM jobs keep the test quick (the executor polls less often the longer a job runs):
    # everything up to filtering in one group job, the srun-launched training, the rest.
    "groups": {
        **dict.fromkeys(
            ("simulate_event", "features", "train_embedding", "build_graph", "train_filter"),
            "prepare",
        ),
        "filter_graph": "prepare",
        **dict.fromkeys(("score_edges", "build_tracks", "evaluate"), "tracks"),
    },
}
OVERRIDES = {
    "run": RUN,
    "embedding": {"epochs": 1},
    "filter": {"epochs": 1},
    "gnn": {"epochs": 1, "world_size": 2},
}


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory):
    """Run the smoke pipeline through SLURM once; yield (workdir, snakemake output, squeue)."""
    reason = slurm_unavailable()
    if reason is not None:
        pytest.skip(f"no single-node SLURM cluster: {reason}")
    work = tmp_path_factory.mktemp("slurm")
    (work / "profile").mkdir()
    (work / "profile" / "config.yaml").write_text(yaml.safe_dump(TEST_PROFILE))
    (work / "overrides.yaml").write_text(yaml.safe_dump(OVERRIDES))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with slurm_cluster(work / "slurm-state") as cluster:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "snakemake",
                "--snakefile",
                str(REPO / "Snakefile"),
                "--profile",
                str(work / "profile"),
                "--configfile",
                str(REPO / "config" / "smoke.yaml"),
                str(work / "overrides.yaml"),
                "--nocolor",
            ],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        jobs = cluster.jobs()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    yield work, output, jobs


def test_pipeline_outputs_exist(slurm_run):
    work, _, _ = slurm_run
    run = work / "results" / RUN
    summary = yaml.safe_load((run / "report" / "summary.json").read_text())
    assert "counts" in summary
    for stage, ext in (("tracks", "csv"), ("gnn", "pt"), ("filter", "pt"), ("features", "pt")):
        assert list((run / stage).glob(f"event*.{ext}")), stage
    assert (run / "models" / "gnn.ckpt").stat().st_size > 0


def test_every_job_went_through_slurm(slurm_run):
    _, output, jobs = slurm_run
    planned = {
        rule: int(count)
        for rule, count in re.findall(r"^(\w+)\s+(\d+)$", output.split("Job stats:")[1], re.M)
        if rule not in ("total", "all")
    }
    assert planned["features"] == 4 and planned["train_gnn"] == 1
    # The main process ran nothing itself but the aggregation rule `all`.
    assert set(re.findall(r"^localrule (\w+):", output, re.M)) == {"all"}
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)", output)
    ids = [job_id for job_id, _ in submitted]
    # Grouping: 23 jobs in 3 SLURM jobs (the group before training, training, the group after).
    assert len(ids) == len(set(ids)) == 3, submitted
    assert all(jobs.get(job_id) == "COMPLETED" for job_id in ids), jobs
    # Every planned job ran inside one of those SLURM jobs: each is a target of a Snakemake job
    # step there (a group's step names all its jobs, the step under it each one again).
    targets: set[str] = set()
    for _, log in submitted:
        for spec in re.findall(r"--target-jobs (.+?) --", Path(log).read_text()):
            targets.update(spec.split())
    executed = collections.Counter(target.split(":", 1)[0] for target in targets)
    assert dict(executed) == planned


def test_training_ran_as_two_srun_ranks_in_one_process_group(slurm_run):
    work, output, _ = slurm_run
    train_log = (work / "results" / RUN / "logs" / "train_gnn.log").read_text()
    # Both ranks initialised the same process group of two members...
    members = re.findall(r"GLOBAL_RANK: (\d), MEMBER: (\d)/(\d)", train_log)
    assert sorted(members) == [("0", "1", "2"), ("1", "2", "2")]
    # ...and trained as one: a world of 2, one all-reduce per optimizer step.
    epoch = re.search(r"\[gnn\] epoch 1/1 (.*)", train_log)
    assert epoch is not None, train_log[-3000:]
    figures = dict(item.split("=") for item in epoch.group(1).split() if "=" in item)
    assert float(figures["world_size"]) == 2.0
    assert float(figures["allreduce_calls_per_step"]) == 1.0
    # srun, not torchrun, started them (the jobstep ran the rule's command as is).
    [gnn_log] = re.findall(
        r"submitted with SLURM jobid \d+ \(log: (\S+rule_train_gnn\S+)\)", output
    )
    assert re.search(
        r"srun --kill-on-bad-exit=1 -n 2 --ntasks-per-node=2 trackgnn train gnn",
        Path(gnn_log).read_text(),
    )


def test_mlflow_has_the_pipeline_and_stage_runs(slurm_run):
    work, _, _ = slurm_run
    with sqlite3.connect(work / "results" / "mlflow.db") as db:
        kinds = collections.Counter(
            value for (value,) in db.execute("SELECT value FROM tags WHERE key = 'trackgnn.kind'")
        )
        stages = {
            value: status
            for value, status in db.execute(
                "SELECT t.value, r.status FROM tags t JOIN runs r ON r.run_uuid = t.run_uuid "
                "WHERE t.key = 'trackgnn.stage'"
            )
        }
        pipeline_status = db.execute(
            "SELECT r.status FROM runs r JOIN tags t ON r.run_uuid = t.run_uuid "
            "WHERE t.key = 'trackgnn.kind' AND t.value = 'pipeline'"
        ).fetchall()
        world = db.execute(
            "SELECT m.value FROM metrics m JOIN tags t ON m.run_uuid = t.run_uuid "
            "WHERE t.key = 'trackgnn.stage' AND t.value = 'train_gnn' AND m.key = 'world_size'"
        ).fetchall()
    assert kinds["pipeline"] == 1 and pipeline_status == [("FINISHED",)]
    for stage in ("train_embedding", "train_filter", "train_gnn", "evaluate"):
        assert stages.get(stage) == "FINISHED", stages
    assert world and {value for (value,) in world} == {2.0}


def test_chunked_per_event_stages_run_one_slurm_job_per_chunk(tmp_path):
    """workflow.events_per_job 2, no groups: the smoke events' simulation and features are two
    chunk rules each, each one SLURM job that writes its events' files, with its stage's
    set-resources (as the perlmutter profile's chunked stages)."""
    reason = slurm_unavailable()
    if reason is not None:
        pytest.skip(f"no single-node SLURM cluster: {reason}")
    profile = {k: v for k, v in TEST_PROFILE.items() if k != "groups"}
    profile["set-resources"] = {**profile["set-resources"], "features": {"mem_mb": 321}}
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile" / "config.yaml").write_text(yaml.safe_dump(profile))
    overrides = tmp_path / "chunks.yaml"
    overrides.write_text(yaml.safe_dump({"run": "chunks", "workflow": {"events_per_job": 2}}))
    targets = [f"results/chunks/features/event00000500{i}.pt" for i in range(4)]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
    command += ["--profile", str(tmp_path / "profile"), "--nocolor", *targets]
    command += ["--configfile", str(REPO / "config" / "smoke.yaml"), str(overrides)]
    with slurm_cluster(tmp_path / "slurm-state") as cluster:
        result = subprocess.run(
            command,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        jobs = cluster.jobs()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    submitted = re.findall(r"submitted with SLURM jobid (\d+) \(log: \S+/rule_(\w+)/", output)
    assert sorted(rule for _, rule in submitted) == [
        "features_000005000",
        "features_000005002",
        "simulate_event_000005000",
        "simulate_event_000005002",
    ]
    assert all(jobs.get(job_id) == "COMPLETED" for job_id, _ in submitted), jobs
    assert all((tmp_path / target).stat().st_size > 0 for target in targets)
    features = re.findall(r"^rule features_\d{9}:\n(?:\s+.*\n)*?\s+resources: (.*)$", output, re.M)
    assert len(features) == 2 and all("mem_mb=321" in line for line in features), features
