"""Facts about this process that every stage reports or needs: peak memory and global rank."""

from __future__ import annotations

import contextlib
import os
import resource
import sys

#: Launchers' global-rank variables, most specific first: torchrun, srun, Open MPI, MPICH/PMI.
_RANK_ENV_VARS = ("SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK")


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (MiB); ``ru_maxrss`` is KiB on Linux, bytes on
    macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _env_int(name: str) -> int | None:
    # Never raises: logging and file writing ask for the rank, and a malformed launcher variable
    # must not stop them (the distributed set-up reports such variables itself).
    with contextlib.suppress(ValueError):
        return int(os.environ.get(name, "").strip())
    return None


def process_rank() -> int:
    """Global rank of this process in a distributed job (0 when not distributed).

    The one rank helper: writing files, logging and sharding data all ask it. The process group
    wins once it exists (only looked at if torch is already imported: importing it here would
    cost seconds); before that the launcher's environment: torchrun's ``RANK``; srun's
    ``SLURM_PROCID`` or MPI's variables; and Lightning's own child processes, which get only
    ``LOCAL_RANK`` and ``NODE_RANK`` (with an inherited ``SLURM_PROCID=0`` in an interactive
    allocation, so a non-zero local rank wins over a zero launcher rank).
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        dist = getattr(torch, "distributed", None)
        with contextlib.suppress(Exception):
            if dist is not None and dist.is_available() and dist.is_initialized():
                return int(dist.get_rank())
    rank = _env_int("RANK")
    if rank is not None:
        return rank
    launcher = next((r for r in map(_env_int, _RANK_ENV_VARS) if r is not None), None)
    if launcher:
        return launcher
    local, node = _env_int("LOCAL_RANK") or 0, _env_int("NODE_RANK") or 0
    if node:
        # Lightning starts the same number of processes on every node.
        per_node = _env_int("LOCAL_WORLD_SIZE") or local + 1
        return node * per_node + local
    return local
