"""Faults and bad input: killed jobs, a dead rank, and inputs that must fail in one line.

* A per-event job killed while writing leaves no file under the output's name (only a partial
  ``.tmp-*`` beside it), and rerunning Snakemake completes the job.
* A training killed mid-epoch resumes from its last end-of-epoch checkpoint: it loses at most
  the epoch it was in.
* A two-rank training whose rank 1 is killed fails within seconds (no hang until the
  process-group timeout), and the rerun resumes from the last checkpoint.
* A config that fails the schema, a missing TrackML event directory, a corrupted checkpoint and a
  CUDA config on a machine without CUDA each end in one line naming the problem.

Jobs are slowed or killed from the outside through small Python drivers that patch one function
before running the real ``trackgnn`` command line, so the kills land where they should.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from trackgnn.io import load_tensors, save_tensors

from .conftest import SMOKE, cli, one_line_error, snakemake, tool_env, toy_graph, write_config

pytestmark = pytest.mark.slow
EPOCHS = 4
STEP_DELAY_S = 0.15  # per training step, so an epoch lasts long enough to be killed inside


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("graphs")
    files = []
    for i in range(6):
        files.append(directory / f"event{i:09d}.pt")
        save_tensors(toy_graph(i), files[-1])
    return {"train": [str(f) for f in files[:4]], "val": [str(f) for f in files[4:]]}


def gnn_config(tmp_path: Path, **gnn) -> Path:
    config = {
        "run": "faults",
        "results_dir": str(tmp_path / "results"),
        "seed": 5,
        "threads": 1,
        "gnn": {"hidden": 16, "n_iterations": 2, "epochs": EPOCHS, "mode": "full", **gnn},
    }
    return write_config(tmp_path / "gnn.yaml", config)


def slow_driver(tmp_path: Path) -> Path:
    """A ``trackgnn`` entry point whose GNN training steps each take STEP_DELAY_S longer."""
    driver = tmp_path / "slow_trackgnn.py"
    driver.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            from trackgnn.training import gnn
            step = gnn.GNNModule.training_step
            def slow_step(self, batch, index):
                time.sleep({STEP_DELAY_S})
                return step(self, batch, index)
            gnn.GNNModule.training_step = slow_step
            from trackgnn.cli import main
            sys.exit(main(sys.argv[1:]))
            """
        )
    )
    return driver


def train_args(config: Path, graphs: dict, output: Path) -> list[str]:
    return [
        "train", "gnn", "--config", str(config),
        "--train", *graphs["train"], "--val", *graphs["val"], "--output", str(output),
    ]  # fmt: skip


def wait_for(path: Path, process: subprocess.Popen, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert process.poll() is None, f"training ended before {path.name} appeared"
        assert time.monotonic() < deadline, f"{path.name} did not appear"
        time.sleep(0.02)


def last_epoch(checkpoint: Path) -> int:
    return int(torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"])


def epochs_printed(output: str) -> list[int]:
    return [int(n) for n in re.findall(rf"\[gnn\] epoch (\d+)/{EPOCHS}", output)]


# ----------------------------------------------------------------------------- killed jobs


def rerun_finishes_after(
    launcher: list[str], config: Path, graphs: dict, model: Path, saved: int
) -> str:
    """Rerun the killed training; check it trains only the epochs after ``saved``; its output."""
    rerun = subprocess.run(
        [*launcher, *train_args(config, graphs, model)],
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, output[-3000:]
    # Only the epoch that was running is done again; finished ones are not.
    assert epochs_printed(output) == list(range(saved + 2, EPOCHS + 1))
    assert last_epoch(model) == EPOCHS  # the final checkpoint counts finished epochs
    return output


def test_per_event_job_killed_mid_write_leaves_no_complete_output_and_reruns(tmp_path):
    """Kill a features job while it writes (half the bytes on disk), through Snakemake."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    # Python runs sitecustomize at start-up: in the job's process this one truncates the
    # temporary file to half and SIGKILLs the process just before the rename.
    (hooks / "sitecustomize.py").write_text(
        textwrap.dedent(
            """
            import os, signal
            target = os.environ.get("TRACKGNN_TEST_KILL_WRITING")
            if target:
                rename = os.replace
                def replace(src, dst, *args, **kwargs):
                    if str(dst).endswith(target):
                        os.truncate(src, os.path.getsize(src) // 2)
                        os.kill(os.getpid(), signal.SIGKILL)
                    return rename(src, dst, *args, **kwargs)
                os.replace = replace
            """
        )
    )
    config = write_config(tmp_path / "run.yaml", {"run": "kill"})
    target = "results/kill/features/event000005000.pt"
    env = tool_env()
    env.update(PYTHONPATH=str(hooks), TRACKGNN_TEST_KILL_WRITING="features/event000005000.pt")
    killed = snakemake(tmp_path, target, configs=[SMOKE, config], env=env)
    output = tmp_path / target
    assert killed.returncode != 0
    assert "Error in rule features" in killed.stdout + killed.stderr, killed.stderr[-3000:]
    assert not output.exists(), "a killed write must not leave the output's name behind"
    partial = list(output.parent.glob(".tmp-event000005000.pt-*"))
    assert partial, "the kill should have hit the temporary file"
    with pytest.raises(Exception):  # noqa: B017 - any loader error: the bytes are half a file
        load_tensors(partial[0])

    rerun = snakemake(tmp_path, target, configs=[SMOKE, config])
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    features = load_tensors(output)
    assert features["x"].shape[0] > 0


def test_training_killed_mid_epoch_resumes_losing_at_most_that_epoch(tmp_path, graphs):
    config = gnn_config(tmp_path)
    model = tmp_path / "models" / "gnn.ckpt"
    last = model.with_name("gnn-last.ckpt")
    process = subprocess.Popen(
        [sys.executable, str(slow_driver(tmp_path)), *train_args(config, graphs, model)],
        env=tool_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_for(last, process)
    process.send_signal(signal.SIGKILL)
    first_output = process.communicate(timeout=60)[0]
    assert process.returncode == -signal.SIGKILL
    saved = last_epoch(last)  # 0-based index of the last finished epoch
    assert saved < EPOCHS - 1 and not model.exists(), "killed before training finished"

    output = rerun_finishes_after(
        [sys.executable, "-m", "trackgnn.cli"], config, graphs, model, saved
    )
    assert f"resuming from {last} after epoch {saved + 1}" in output
    assert epochs_printed(first_output)[-1] == saved + 1


def _rank_pid(parent: int, rank: int, timeout_s: float = 60) -> int:
    """The PID of the torchrun worker with RANK=rank among the descendants of ``parent``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in psutil.Process(parent).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if child.environ().get("RANK") == str(rank):
                    return child.pid
        time.sleep(0.1)
    raise AssertionError(f"no rank {rank} under process {parent}")


def test_dead_rank_fails_the_job_quickly_and_the_rerun_resumes(tmp_path, graphs):
    config = gnn_config(tmp_path, world_size=2)
    model = tmp_path / "models" / "gnn.ckpt"
    last = model.with_name("gnn-last.ckpt")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    process = subprocess.Popen(
        [*torchrun, str(slow_driver(tmp_path)), *train_args(config, graphs, model)],
        env=tool_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_for(last, process)
    os.kill(_rank_pid(process.pid, 1), signal.SIGKILL)
    killed_at = time.monotonic()
    process.communicate(timeout=120)
    elapsed = time.monotonic() - killed_at
    assert process.returncode != 0
    # Far below the 300 s process-group timeout: the survivor is torn down, not left waiting.
    assert elapsed < 60, f"the job took {elapsed:.0f} s to fail after rank 1 died"
    assert not model.exists()
    saved = last_epoch(last)

    output = rerun_finishes_after([*torchrun, "-m", "trackgnn.cli"], config, graphs, model, saved)
    assert f"after epoch {saved + 1}" in output


# ----------------------------------------------------------------------------- bad input


def test_config_failing_the_schema_is_one_line(tmp_path):
    bad = write_config(tmp_path / "bad.yaml", {"gnn": {"hidden": -3}})
    result = cli("check-config", "--config", str(bad))
    assert result.returncode == 2
    line = one_line_error(result.stderr, "trackgnn check-config: error:")
    assert f"{bad}: key 'gnn.hidden'" in line and "minimum of 4" in line
    plan = snakemake(tmp_path, "--dry-run", configs=[SMOKE, bad])
    assert plan.returncode != 0
    assert re.search(
        r"^config \(.*bad\.yaml\): key 'gnn\.hidden': -3 is less than",
        plan.stdout + plan.stderr,
        re.M,
    )


def test_unknown_event_directory_is_one_line(tmp_path):
    missing = tmp_path / "no-such-trackml"
    config = write_config(
        tmp_path / "trackml.yaml", {"data": {"source": "trackml", "trackml_dir": str(missing)}}
    )
    plan = snakemake(tmp_path, "--dry-run", configs=[SMOKE, config])
    assert plan.returncode != 0
    assert re.search(
        rf"^{re.escape(str(missing))}: event directory does not exist$",
        plan.stdout + plan.stderr,
        re.M,
    )
    result = cli("features", "--event", str(missing / "event000001000"), "--output", "x.pt")
    assert result.returncode == 2
    line = one_line_error(result.stderr, "trackgnn features: error:")
    assert str(missing) in line


def test_corrupted_checkpoint_is_one_line(tmp_path, graphs):
    corrupt = tmp_path / "gnn.ckpt"
    corrupt.write_bytes(b"PK\x03\x04 this is not a checkpoint" * 10)
    config = gnn_config(tmp_path)
    result = cli(
        "score-edges", "--config", str(config), "--model", str(corrupt),
        "--inputs", graphs["val"][0], "--outputs", str(tmp_path / "scored.pt"),
    )  # fmt: skip
    assert result.returncode == 2
    line = one_line_error(result.stderr, "trackgnn score-edges: error:")
    assert f"{corrupt}: not a readable checkpoint" in line
    assert not (tmp_path / "scored.pt").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_config_without_a_gpu_is_one_line(tmp_path, graphs):
    config = gnn_config(tmp_path)
    cuda = yaml.safe_load(config.read_text()) | {"device": "cuda"}
    config = write_config(tmp_path / "cuda.yaml", cuda)
    result = cli(*train_args(config, graphs, tmp_path / "gnn.ckpt"))
    assert result.returncode == 2
    line = one_line_error(result.stderr, "trackgnn train: error:")
    assert f"{config}: key 'device': 'cuda'" in line and "no CUDA device" in line
