"""The tracking store: which one, how to reach it without waiting long, and the failure latch.

Any failure to reach the store (bad URI, server down, database locked, MLflow error) is logged as
one warning per URI and process; a URI where opening a run failed is not tried again by this
process. ``mlflow`` is imported only when a store is first used, so importing this module (and
the CLI) stays fast.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from trackgnn.process import process_rank

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = [
    "DEFAULT_EXPERIMENT",
    "TrackingUnavailable",
    "artifact_dir",
    "connect",
    "experiment_id",
    "has_failed",
    "init_store",
    "mlflow_env",
    "process_rank",
    "redact",
    "resolve_tracking_uri",
    "warn_unavailable",
]

log = logging.getLogger("trackgnn.tracking")

DEFAULT_EXPERIMENT = "trackgnn"

#: The experiment tag the MLflow UI (3.x) reads to open an experiment as model training (runs,
#: charts) rather than as a GenAI application (traces); set only where the user has not.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"

# Environment defaults for every MLflow call made from this process (the user's own values win).
# HTTP: MLflow retries 7 times with exponential backoff and a 120 s timeout by default, i.e.
# minutes against a dead server; 2 retries, backoff 1 and 10 s bound a failure to seconds
# (connection refused: about 3 s, measured). Telemetry would try to reach the internet; the
# "View run at" lines would pollute the CLI's stdout; the server's job-queue workers (7 extra
# processes) are useless for a local UI.
_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}
# A socket connect to an http(s) tracking server before the first MLflow call: a blackholed
# host then costs this long, not MLflow's retries times its timeout.
_PROBE_TIMEOUT_S = 3.0

# Tracking URIs where opening a run failed in this process: later runs against them are no-ops
# at once, so a process that logs many runs to a dead server pays (and warns) once.
_failed_uris: set[str] = set()
# Tracking URIs already warned about: one warning per URI per process.
_warned_uris: set[str] = set()
_state_lock = threading.Lock()


class TrackingUnavailable(Exception):
    """The tracking store cannot be used; the message says why (becomes the warning)."""


def resolve_tracking_uri(
    configured: str | None = None, results_dir: str | os.PathLike[str] = "results"
) -> str:
    """The tracking URI: ``configured`` (config) > ``$MLFLOW_TRACKING_URI`` > default.

    The default is an absolute ``sqlite:///<results_dir>/mlflow.db`` so that jobs started in
    another working directory reach the same database.
    """
    if configured:
        return str(configured)
    from_env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if from_env:
        return from_env
    return "sqlite:///" + str(Path(results_dir).resolve() / "mlflow.db")


def artifact_dir(uri: str) -> Path | None:
    """Where artifacts go for a local SQLite store: ``mlartifacts`` beside the database."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path).resolve().parent / "mlartifacts"


def mlflow_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: ``os.environ``) with trackgnn's MLflow defaults added where unset."""
    env = dict(os.environ if base is None else base)
    for key, value in _ENV_DEFAULTS.items():
        env.setdefault(key, value)
    return env


def redact(uri: str) -> str:
    """``uri`` without a password, for messages."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.password:
        netloc = f"{parsed.username}:***@{parsed.hostname}" + (
            f":{parsed.port}" if parsed.port else ""
        )
        return urllib.parse.urlunsplit(parsed._replace(netloc=netloc))
    return uri


def has_failed(uri: str) -> bool:
    """Whether this process has given up on ``uri``."""
    return uri in _failed_uris


def warn_unavailable(
    uri: str, action: str, error: BaseException, *, unreachable: bool = True
) -> None:
    """Log one warning per tracking URI per process.

    With ``unreachable`` the URI is also treated as unavailable for the rest of the process.
    """
    with _state_lock:
        first = uri not in _warned_uris
        _warned_uris.add(uri)
        if unreachable:
            _failed_uris.add(uri)
    if first:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        log.warning(
            "MLflow tracking disabled (%s at %s failed: %s); results are in the output files",
            action,
            redact(uri),
            message[:300],
        )


def _import_mlflow() -> None:
    # Defaults must be in the environment before mlflow is imported: its telemetry client
    # starts at import time.
    for key, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    import mlflow  # noqa: F401

    # MLflow logs INFO lines ("Creating initial MLflow database tables...", system-metrics
    # start/stop) to stderr of every job; keep them out unless the user asked for a level.
    if not os.environ.get("MLFLOW_LOGGING_LEVEL"):
        logging.getLogger("mlflow").setLevel(logging.WARNING)


def _probe_http(uri: str) -> None:
    """Fail fast when an http(s) tracking server does not accept connections."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return
    proxies = urllib.request.getproxies()
    if parsed.scheme in proxies and not urllib.request.proxy_bypass(parsed.hostname):
        return  # reached through a proxy: a direct connect says nothing
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=_PROBE_TIMEOUT_S):
            pass
    except OSError as error:
        raise TrackingUnavailable(f"cannot connect to {parsed.hostname}:{port}: {error}") from None


def connect(uri: str) -> MlflowClient:
    """An MLflow client of ``uri``; raises (TrackingUnavailable or MLflow's errors) when not."""
    if has_failed(uri):
        raise TrackingUnavailable("it failed earlier in this process")
    _probe_http(uri)
    _import_mlflow()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def experiment_id(client: MlflowClient, uri: str, name: str) -> str:
    """The id of experiment ``name``, created (artifacts beside a SQLite database) if missing."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        artifacts = artifact_dir(uri)
        location = artifacts.as_uri() if artifacts is not None else None
        try:
            return client.create_experiment(
                name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING}
            )
        except MlflowException as error:
            # Another process created it between our lookup and create.
            if getattr(error, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage != "active":
        raise TrackingUnavailable(
            f"experiment {name!r} is deleted; restore it in the MLflow UI or choose another name"
        )
    if experiment.tags.get(EXPERIMENT_KIND_TAG) is None:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return experiment.experiment_id


def init_store(uri: str, experiment: str = DEFAULT_EXPERIMENT) -> str | None:
    """Create the tracking database and the experiment if missing; return the experiment id.

    Call once before parallel writers start (Snakemake ``onstart``): concurrent first use of a
    fresh SQLite database races in MLflow's schema migrations. Idempotent. For a local SQLite
    store the experiment's artifacts go to ``mlartifacts`` beside the database. Returns None
    (after one warning) when the store cannot be reached; never raises for MLflow failures.
    """
    if process_rank() != 0:
        return None
    try:
        return experiment_id(connect(uri), uri, experiment)
    except Exception as error:  # tracking must never fail the caller
        warn_unavailable(uri, "initialising the store", error)
        return None
