"""A real single-node SLURM cluster on 127.0.0.1 for tests (Debian's slurm-wlm and munge).

:func:`slurm_cluster` starts munged (unless a working one is already there), slurmctld and slurmd
with a throw-away configuration at the default path ``/etc/slurm/slurm.conf`` (job steps lose
``SLURM_CONF``, so a private path would not reach srun inside a job), state and logs in a
temporary directory, process tracking by ``/proc`` (``proctrack/linuxproc``), no task plugin and
no accounting. It stops every daemon it started, by PID, and removes the configuration.

:func:`slurm_unavailable` says why such a cluster cannot be had here (None when it can): the
packages are missing and cannot be installed (not root, no apt-get, install failed), another
SLURM configuration or daemon owns the machine, or the daemons do not come up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# Written by trackgnn's tests/slurm_fixture.py; removed when the tests end."
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "srun", "sinfo", "scontrol", "munge", "unmunge")
PACKAGES = ("slurm-wlm", "munge")
PARTITION = "debug"
#: CPUs the node advertises: more than a small CI machine has, so a 2-rank training job and the
#: per-event groups can be placed side by side (slurmd accepts it with config_overrides; with
#: task/none nothing is pinned).
NODE_CPUS = 8
#: Seconds SLURM keeps finished jobs visible to squeue (the executor's status queries use
#: squeue, there being no accounting database).
MIN_JOB_AGE_S = 1800


@dataclass
class SlurmCluster:
    """A running single-node cluster: its node name, partition and state directory."""

    node: str
    partition: str
    state_dir: Path

    def jobs(self) -> dict[str, str]:
        """Every job SLURM still knows: job id -> state (PENDING, RUNNING, COMPLETED, ...)."""
        out = subprocess.run(
            ["squeue", "--states=all", "--noheader", "--format=%i|%T"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        return dict(line.split("|", 1) for line in out.split())


def _missing_programs() -> list[str]:
    return [p for p in (*DAEMONS, *CLIENTS) if shutil.which(p) is None]


def _install_packages() -> str | None:
    """Install slurm-wlm and munge with apt-get; return why not, or None on success."""
    if os.geteuid() != 0:
        return "slurm-wlm and munge are not installed, and installing them needs root"
    if shutil.which("apt-get") is None:
        return "slurm-wlm and munge are not installed, and there is no apt-get to install them"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]
    for attempt in range(2):
        result = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=900, check=False
        )
        if result.returncode == 0:
            return None
        if attempt == 0:  # stale package lists: refresh once
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600)
    tail = (result.stderr or result.stdout).strip().splitlines()[-1:]
    return f"apt-get could not install {' '.join(PACKAGES)}: {' '.join(tail)}"


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def slurm_unavailable() -> str | None:
    """Why a throw-away cluster cannot be started here, or None when it can."""
    if os.geteuid() != 0:
        return "starting slurmd (which runs jobs as their users) needs root"
    if _missing_programs():
        reason = _install_packages()
        if reason is not None:
            return reason
        if _missing_programs():
            return f"after installing, still missing: {', '.join(_missing_programs())}"
    if CONF.exists() and MARKER not in CONF.read_text():
        return f"{CONF} belongs to another SLURM installation; not replacing it"
    if _port_in_use(6817) or _port_in_use(6818):
        return "a SLURM daemon already listens on port 6817 or 6818"
    return None


def _munge_works() -> bool:
    try:
        encoded = subprocess.run(
            ["munge", "-n"], capture_output=True, timeout=10, check=True
        ).stdout
        subprocess.run(["unmunge"], input=encoded, capture_output=True, timeout=10, check=True)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
        return False
    return True


def _memory_mb() -> int:
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return max(1000, pages // 2**20 - 1000)


def _config(node: str, state: Path) -> str:
    return "\n".join(
        [
            MARKER,
            "ClusterName=trackgnntest",
            f"SlurmctldHost={node}(127.0.0.1)",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            "SlurmUser=root",
            "SlurmdUser=root",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "MpiDefault=none",
            "SchedulerType=sched/builtin",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SlurmdParameters=config_overrides",
            "ReturnToService=2",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            f"MinJobAge={MIN_JOB_AGE_S}",
            "KillWait=5",
            f"StateSaveLocation={state / 'slurmctld'}",
            f"SlurmdSpoolDir={state / 'slurmd'}",
            f"SlurmctldPidFile={state / 'slurmctld.pid'}",
            f"SlurmdPidFile={state / 'slurmd.pid'}",
            f"SlurmctldLogFile={state / 'slurmctld.log'}",
            f"SlurmdLogFile={state / 'slurmd.log'}",
            f"NodeName={node} NodeAddr=127.0.0.1 CPUs={NODE_CPUS} "
            f"RealMemory={_memory_mb()} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM one daemon we started, SIGKILL it if it lingers."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait(timeout=10)


def _wait_for_idle_node(
    started: list[subprocess.Popen[bytes]], state: Path, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for process in started:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{process.args[0]} exited with {process.returncode}; see the logs in {state}"
                )
        result = subprocess.run(
            ["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, timeout=10
        )
        if result.returncode == 0 and result.stdout.split() == ["idle"]:
            return
        time.sleep(0.5)
    raise TimeoutError(f"the SLURM node did not become idle in {timeout_s:.0f} s; see {state}")


@contextlib.contextmanager
def slurm_cluster(state: Path, startup_timeout_s: float = 90.0) -> Iterator[SlurmCluster]:
    """Start munged (if needed), slurmctld and slurmd; yield the cluster; stop them by PID."""
    node = socket.gethostname().split(".")[0]
    for sub in ("slurmctld", "slurmd"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    started: list[subprocess.Popen[bytes]] = []
    wrote_conf = False
    try:
        if not _munge_works():
            socket_dir = Path("/run/munge")
            socket_dir.mkdir(parents=True, exist_ok=True)
            shutil.chown(socket_dir, "munge", "munge")
            with open(state / "munged.log", "wb") as log:
                started.append(
                    subprocess.Popen(
                        ["munged", "--foreground", f"--log-file={state / 'munged-daemon.log'}"],
                        user="munge",
                        group="munge",
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
            deadline = time.monotonic() + 20
            while not _munge_works():
                if started[-1].poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"munged did not start; see {state / 'munged.log'}")
                time.sleep(0.2)
        CONF.parent.mkdir(parents=True, exist_ok=True)
        CONF.write_text(_config(node, state))
        wrote_conf = True
        for command in (["slurmctld", "-D", "-i"], ["slurmd", "-D"]):
            with open(state / f"{command[0]}.out", "wb") as log:
                started.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
        _wait_for_idle_node(started, state, startup_timeout_s)
        yield SlurmCluster(node=node, partition=PARTITION, state_dir=state)
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(["scancel", "--full", "--partition", PARTITION], timeout=30)
        # slurmd first (it may still hold job steps), the controller, then munged.
        for process in reversed(started):
            _stop(process)
        if wrote_conf:
            with contextlib.suppress(FileNotFoundError):
                CONF.unlink()
