"""Set-up and dependencies: the Makefile's install follows TORCH_SPEC, and pyproject declares what
the profiles and the GPU path need."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {
        (r := Requirement(line)).name.lower().replace("_", "-"): r
        for line in project["dependencies"]
    }


def _plan(workdir: Path, *args: str) -> str:
    """``make -n`` (what make would run) in ``workdir``."""
    result = subprocess.run(
        ["make", "-n", *args], cwd=workdir, capture_output=True, text=True, check=True
    )
    return result.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_a_changed_torch_spec_replaces_the_installed_torch(tmp_path):
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)
    assert "pip install --quiet torch==2.13.0" in _plan(tmp_path, "test")  # fresh: installs
    # As after `make test` on a CPU machine: a venv and both stamps, newer than their inputs.
    venv = tmp_path / ".venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    (venv / "bin" / "python").write_text("#!/bin/sh\n")
    (venv / "bin" / "python").chmod(0o755)
    past = time.time() - 1000  # inputs, then the recorded spec, then the stamps
    files = ["pyproject.toml", "Makefile", ".venv/.torch-spec"]
    files += [".venv/.torch-installed", ".venv/.installed"]
    for order, name in enumerate(files):
        (tmp_path / name).touch()
        os.utime(tmp_path / name, (past + order, past + order))
    assert "pip install" not in _plan(tmp_path, "test")
    cuda = "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
    plan = _plan(tmp_path, "run", f"TORCH_SPEC={cuda}")
    assert "pip uninstall --quiet --yes torch" in plan
    assert f"pip install --quiet {cuda}" in plan
    assert "pip install --quiet -e '.[test]'" in plan  # the project over the new build


def test_the_slurm_executor_floor_handles_tasks_per_gpu():
    """The Perlmutter profile sets ``tasks_per_gpu``; plugin versions before 1.6.1 ignore it
    or drop ``tasks`` for GPU jobs (snakemake-executor-plugin-slurm PRs #318 and #347)."""
    profile = yaml.safe_load((REPO / "profiles" / "perlmutter" / "config.yaml").read_text())
    assert "tasks_per_gpu" in str(profile)
    slurm = _requirements()["snakemake-executor-plugin-slurm"].specifier
    assert not slurm.contains("1.6.0") and slurm.contains("1.6.1")


def test_every_package_of_the_job_environments_is_a_dependency():
    """A pip install of the project gets what the conda environments' jobs import, e.g.
    nvidia-ml-py for MLflow's GPU system metrics."""
    required = _requirements()
    for env_file in ("cpu.yaml", "cuda.yaml"):
        env = yaml.safe_load((REPO / "envs" / env_file).read_text())
        pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
        for line in pip:
            if line.startswith("-"):
                continue
            name = Requirement(line).name.lower().replace("_", "-")
            assert name in required, f"envs/{env_file}: {name} is not in pyproject's dependencies"
