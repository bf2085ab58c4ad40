"""Shared helpers for the workflow-level tests: run Snakemake on the repository's Snakefile in a
temporary working directory and read its plans."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "config" / "smoke.yaml"
#: The smoke config made quicker still: one epoch per training.
QUICK = {"embedding": {"epochs": 1}, "filter": {"epochs": 1}, "gnn": {"epochs": 1}}
#: The smoke run the workflow and reconstruction tests share (trained once per test session).
SMOKE_RUN = "rerun"
#: Epochs and GNN settings with which the smoke events are learnt in about two minutes of
#: training: enough for the physics floors of the workflow tests, which a broken stage would miss.
LEARNS = {
    "run": SMOKE_RUN,
    "embedding": {"epochs": 6},
    "filter": {"epochs": 6},
    "gnn": {"mode": "full", "phi_sectors": 4, "epochs": 12, "n_iterations": 3, "lr": 0.01},
}


def tool_env(extra_path: Sequence[Path] = ()) -> dict[str, str]:
    """The environment for Snakemake and the jobs it starts: this interpreter's bin first."""
    path = [str(p) for p in extra_path] + [str(Path(sys.executable).parent), os.environ["PATH"]]
    return {**os.environ, "PATH": os.pathsep.join(path)}


def write_config(path: Path, overrides: dict) -> Path:
    """Write an override config (merged by Snakemake over config/smoke.yaml)."""
    path.write_text(yaml.safe_dump(overrides))
    return path


def snakemake(
    workdir: Path,
    *args: str,
    configs: Sequence[Path] = (),
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 900,
    cores: int | None = 2,
) -> subprocess.CompletedProcess[str]:
    """Run ``snakemake`` on the repository's Snakefile with results under ``workdir``.

    ``cores=None`` leaves the core count to the profiles (as a user typing the command would).
    """
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]
    command += ["--nocolor", *(["--cores", str(cores)] if cores else []), *args]
    if configs:  # last: --configfile takes every following word
        command += ["--configfile", *map(str, configs)]
    return subprocess.run(
        command,
        cwd=cwd or workdir,
        env=env or tool_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def planned_jobs(output: str) -> dict[str, int]:
    """Job counts per rule from a plan's "Job stats" table (empty when nothing is to be done)."""
    if "Job stats:" not in output:
        return {}
    table = output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {
        rule: int(count)
        for rule, count in re.findall(r"^(\w+)\s+(\d+)$", table, re.M)
        if rule != "total"
    }


def planned_outputs(output: str) -> set[str]:
    """Output files of the planned jobs of a dry run."""
    return {
        f.strip()
        for line in re.findall(r"^\s*output: (.*)$", output, re.M)
        for f in line.split(",")
    }


def toy_graph(seed: int, n_tracks: int = 24, hits: int = 8, n_fake: int = 300) -> dict:
    """A filter-stage graph file: straight tracks plus random fake edges, labelled."""
    gen = torch.Generator().manual_seed(seed)
    track = torch.arange(n_tracks).repeat_interleave(hits)
    r = torch.arange(1, hits + 1).float().repeat(n_tracks) * 100.0
    phi = (torch.rand(n_tracks, generator=gen) * 6 - 3)[track]
    eta = (torch.rand(n_tracks, generator=gen) * 4 - 2)[track]
    z = r * torch.sinh(eta)
    idx = torch.arange(len(r)).view(n_tracks, hits)
    true_edges = torch.stack([idx[:, :-1].flatten(), idx[:, 1:].flatten()])
    fake = torch.randint(0, len(r), (2, n_fake), generator=gen)
    edge_index = torch.cat([true_edges, fake], 1)
    x = torch.stack([r / 1000, phi / torch.pi, z / 1000, eta / 4], 1)
    return graph_file_contents(seed, x, r, phi, z, eta, track, true_edges, edge_index)


def graph_file_contents(
    event_id: int,
    x: torch.Tensor,
    r: torch.Tensor,
    phi: torch.Tensor,
    z: torch.Tensor,
    eta: torch.Tensor,
    track: torch.Tensor,
    true_edges: torch.Tensor,
    edge_index: torch.Tensor,
) -> dict:
    """A complete graph file (``trackgnn.event_data.EventGraph``) of toy tracks: particle
    ``track + 1`` per hit, pT 1 GeV, labels from ``track``."""
    y = track[edge_index[0]] == track[edge_index[1]]
    n = len(r)
    return {
        "event_id": torch.tensor(event_id),
        "hit_id": torch.arange(1, n + 1),
        "x": x,
        "r": r,
        "phi": phi,
        "z": z,
        "eta": eta,
        "particle_id": track + 1,
        "pt": torch.ones(n),
        "nhits": torch.bincount(track)[track],
        "truth_edges": true_edges,
        "edge_index": edge_index,
        "y": y,
        "y_pid": y,
    }


def one_line_error(output: str, prefix: str) -> str:
    """The error line starting with ``prefix``; fails on a traceback or a missing line."""
    assert "Traceback" not in output, output[-3000:]
    lines = [line for line in output.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, output[-3000:]
    return lines[0]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trackgnn.cli", *args],
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A working directory in which the smoke pipeline (``LEARNS``) has run to completion."""
    work = tmp_path_factory.mktemp("smoke-run")
    base = write_config(work / "base.yaml", LEARNS)
    result = snakemake(work, configs=[SMOKE, base])
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    return SimpleNamespace(work=work, base=base, run=work / "results" / SMOKE_RUN)


def pytest_itemcollected(item: pytest.Item) -> None:
    """Group tests for pytest-xdist (``make test`` runs ``-n 2 --dist loadgroup``): each test
    module on one worker, so its module fixtures (the SLURM cluster) are built once; and every
    test of the shared smoke run on one worker, so it is trained once and never used by two
    Snakemake processes at a time."""
    if "smoke_run" in getattr(item, "fixturenames", ()):
        group = "smoke_run"
    else:
        group = item.nodeid.split("::", 1)[0]
    item.add_marker(pytest.mark.xdist_group(group))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Refuse to run when pytest-xdist's loadgroup silently lost the groups (pytest 9.2 with
    pytest-xdist 3.8, pytest-xdist issue 1386): split modules would start two SLURM clusters on
    one port and run two Snakemake processes in the smoke run's directory."""
    if getattr(session.config.option, "loadgroup", False) and session.items:
        if "@" not in session.items[0].nodeid:
            raise pytest.UsageError(
                "pytest-xdist --dist loadgroup did not group the tests (pytest-xdist issue "
                "1386, pytest 9.2); install the test extra's pytest (<9.2)"
            )
