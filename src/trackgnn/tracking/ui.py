"""The MLflow UI: an MLflow server (UI and REST API) on the project's tracking store."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import urllib.parse
from typing import Any

from trackgnn.errors import TrackGNNError
from trackgnn.tracking.store import (
    DEFAULT_EXPERIMENT,
    artifact_dir,
    init_store,
    mlflow_env,
    redact,
)

__all__ = ["stop_process_group", "ui", "ui_command"]


def ui_command(uri: str, host: str = "127.0.0.1", port: int = 5000, workers: int = 1) -> list[str]:
    """The command line of an MLflow server (UI + REST API) on the store ``uri``.

    Raises TrackGNNError when ``uri`` is itself a server: open that in a browser.
    """
    if urllib.parse.urlsplit(uri).scheme in ("http", "https", "databricks"):
        raise TrackGNNError(
            f"tracking URI {redact(uri)} is already a server; open it in a browser instead"
        )
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", uri,
        "--host", host,
        "--port", str(int(port)),
        "--workers", str(int(workers)),
    ]  # fmt: skip
    artifacts = artifact_dir(uri)
    if artifacts is not None:
        # Experiments created through the UI keep their artifacts beside the database too.
        command += ["--artifacts-destination", str(artifacts)]
    return command


def ui(
    uri: str, host: str = "127.0.0.1", port: int = 5000, experiment: str = DEFAULT_EXPERIMENT
) -> int:
    """Run the MLflow UI on ``host:port`` against the store ``uri`` until interrupted.

    Returns the server's exit status (0 after Ctrl-C or SIGTERM). Stopping this process with
    SIGINT or SIGTERM stops the server it started (its own process group: the server's workers
    go with it), so no orphan keeps holding the port.
    """
    command = ui_command(uri, host, port)
    init_store(uri, experiment)
    print(f"MLflow UI on http://{host}:{port} (store {redact(uri)}); Ctrl-C stops it", flush=True)
    process = subprocess.Popen(command, env=mlflow_env(), start_new_session=True)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        return process.wait()
    except KeyboardInterrupt:
        stop_process_group(process)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        if process.poll() is None:  # any other way out of the wait
            stop_process_group(process)


def stop_process_group(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM the process group of a process started with ``start_new_session``; SIGKILL
    what is left after ``grace_s`` seconds.

    The whole group, even after the process itself has exited: its children (a server's
    workers) may not have.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
