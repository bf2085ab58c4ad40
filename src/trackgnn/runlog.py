"""Experiment tracking: the only module of trackgnn that talks to MLflow.

Every pipeline execution and every stage execution (a training, a per-event inference batch) is
one MLflow run. Pipeline runs carry the tag ``trackgnn.kind=pipeline`` and the whole resolved
config as params; stage runs carry ``trackgnn.kind=stage``, ``trackgnn.stage`` and
``trackgnn.pipeline_run_id`` (read from a small JSON marker the pipeline run writes), so the
MLflow UI can compare pipeline runs across configurations and list the stage runs of each.

MLflow is a *view* of results that callers have already written to files. Any failure to reach
the tracking store (bad URI, server down, database locked, MLflow error) is logged as one warning
and turns the logger into a no-op: nothing here raises into the caller, and nothing waits long.
Only rank 0 of a distributed job logs.

``mlflow`` is imported lazily so that importing this module (and the CLI) stays fast.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trackgnn.atomic import write_json_atomic
from trackgnn.errors import TrackGNNError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = [
    "DEFAULT_EXPERIMENT",
    "MlflowEpochLogger",  # noqa: F822 - built on first access, see __getattr__
    "RunLogger",
    "code_version",
    "config_hash",
    "finish_pipeline_run",
    "flatten_metrics",
    "flatten_params",
    "init_store",
    "main",
    "mlflow_env",
    "process_rank",
    "read_marker",
    "resolve_tracking_uri",
    "sanitize_key",
    "stage_run",
    "start_pipeline_run",
    "ui",
    "ui_command",
]

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "trackgnn"
KIND_TAG = "trackgnn.kind"
STAGE_TAG = "trackgnn.stage"
PIPELINE_RUN_TAG = "trackgnn.pipeline_run_id"
CONFIG_HASH_TAG = "trackgnn.config_hash"
CODE_VERSION_TAG = "trackgnn.code_version"
# MLflow's own tag: the UI nests a run under its parent in the runs table.
PARENT_RUN_TAG = "mlflow.parentRunId"

# MLflow limits (mlflow.utils.validation): keys 250 chars, param values 6000 chars,
# 100 params+tags and 1000 metrics per log_batch call.
_MAX_KEY_LEN = 250
_MAX_PARAM_LEN = 6000
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_TRUNCATED = "...[truncated]"
_RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")

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


# --------------------------------------------------------------------------------------------
# Pure helpers: names, flattening, hashes, versions, ranks, URIs
# --------------------------------------------------------------------------------------------

_KEY_REPLACEMENTS = ((">=", "_ge_"), ("<=", "_le_"), (">", "_gt_"), ("<", "_lt_"), ("=", "_eq_"))
_INVALID_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


def sanitize_key(key: str) -> str:
    """Return ``key`` as a valid MLflow metric/param name.

    MLflow allows alphanumerics, ``_ - . /`` and space. Comparisons are spelled out
    (``pt>0.5`` -> ``pt_gt_0.5``) so the names stay readable; any other character becomes ``_``.
    """
    for old, new in _KEY_REPLACEMENTS:
        key = key.replace(old, new)
    key = _INVALID_KEY_CHARS.sub("_", key)
    return key[:_MAX_KEY_LEN]


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, name)
        else:
            yield name, value


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    if len(text) > _MAX_PARAM_LEN:
        text = text[: _MAX_PARAM_LEN - len(_TRUNCATED)] + _TRUNCATED
    return text


def flatten_params(config: Mapping[str, Any]) -> dict[str, str]:
    """Flatten a nested config into MLflow params: ``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``.

    Lists and scalars are JSON-encoded (strings stay as they are); values longer than MLflow's
    limit are truncated with a visible marker rather than rejected.
    """
    return {sanitize_key(key): _param_value(value) for key, value in _flatten(config)}


def _as_float(value: Any) -> float | None:
    """A metric value as float, or None when it is not a scalar number."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    item = getattr(value, "item", None)  # numpy scalars, 0-d arrays and 0-d torch tensors
    if callable(item) and getattr(value, "ndim", 0) == 0:
        try:
            result = item()
        except (TypeError, ValueError, RuntimeError):
            return None
        return float(result) if isinstance(result, int | float) else None
    return None


def flatten_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """Flatten a nested summary into MLflow metrics.

    Nested keys are joined by ``/``, which the MLflow UI groups charts by (its first part), and
    sanitised (``pt>0.5`` -> ``pt_gt_0.5``). A ``{"value": v, "error": e}`` leaf becomes
    ``name = v`` and ``name_error = e``, so ``summary["physics_efficiency"]["pt>0.5"]["value"]``
    is ``physics_efficiency/pt_gt_0.5``. Non-numeric leaves (strings, lists, None) are skipped:
    tables belong in artifacts.
    """
    metrics: dict[str, float] = {}

    def visit(tree: Mapping[str, Any], prefix: str) -> None:
        for key, value in tree.items():
            name = f"{prefix}/{key}" if prefix else str(key)
            if isinstance(value, Mapping):
                if "value" in value and _as_float(value["value"]) is not None:
                    metrics[sanitize_key(name)] = _as_float(value["value"])  # type: ignore[assignment]
                    error = _as_float(value.get("error"))
                    if error is not None:
                        metrics[sanitize_key(f"{name}_error")] = error
                    rest = {k: v for k, v in value.items() if k not in ("value", "error")}
                    visit(rest, name)
                else:
                    visit(value, name)
            else:
                number = _as_float(value)
                if number is not None:
                    metrics[sanitize_key(name)] = number

    visit(summary, "")
    return metrics


def config_hash(config: Mapping[str, Any]) -> str:
    """Short sha256 (12 hex digits) of the canonical JSON of ``config``."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


@cache
def code_version() -> str:
    """Package version plus ``git describe`` of the source tree when it is a git checkout."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        try:
            pkg_version = version("trackgnn")
        except PackageNotFoundError:
            pkg_version = "unknown"
    except ImportError:  # pragma: no cover - stdlib
        pkg_version = "unknown"
    source_dir = Path(__file__).resolve().parent
    try:
        described = subprocess.run(
            ["git", "-C", str(source_dir), "describe", "--always", "--dirty", "--tags"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return pkg_version
    if described.returncode == 0 and described.stdout.strip():
        return f"{pkg_version} git:{described.stdout.strip()}"
    return pkg_version


_RANK_ENV_VARS = ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK")


def _env_int(name: str) -> int | None:
    with contextlib.suppress(ValueError):
        return int(os.environ.get(name, "").strip())
    return None


def process_rank() -> int:
    """Global rank of this process in a distributed job (0 when not distributed).

    torch.distributed wins when it is initialised (only looked at if torch is already imported:
    importing it here would cost seconds); otherwise the launcher's environment: torchrun's
    ``RANK``, srun's ``SLURM_PROCID``, MPI's variables, and last Lightning's own child processes,
    which get only ``LOCAL_RANK`` / ``NODE_RANK`` (any non-zero one means "not rank 0").
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        dist = getattr(torch, "distributed", None)
        with contextlib.suppress(Exception):
            if dist is not None and dist.is_available() and dist.is_initialized():
                return int(dist.get_rank())
    for name in _RANK_ENV_VARS:
        rank = _env_int(name)
        if rank is not None:
            return rank
    local, node = _env_int("LOCAL_RANK") or 0, _env_int("NODE_RANK") or 0
    return 0 if local == 0 and node == 0 else max(local, 1)


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


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path)


def _artifact_dir(uri: str) -> Path | None:
    """Where artifacts go for a local SQLite store: ``mlartifacts`` beside the database."""
    db = _sqlite_path(uri)
    return None if db is None else db.resolve().parent / "mlartifacts"


def mlflow_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: ``os.environ``) with trackgnn's MLflow defaults added where unset."""
    env = dict(os.environ if base is None else base)
    for key, value in _ENV_DEFAULTS.items():
        env.setdefault(key, value)
    return env


# --------------------------------------------------------------------------------------------
# MLflow access
# --------------------------------------------------------------------------------------------


class _TrackingUnavailable(Exception):
    """The tracking store cannot be used; the message says why (becomes the warning)."""


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
        raise _TrackingUnavailable(f"cannot connect to {parsed.hostname}:{port}: {error}") from None


def _client(uri: str) -> MlflowClient:
    if uri in _failed_uris:
        raise _TrackingUnavailable("it failed earlier in this process")
    _probe_http(uri)
    _import_mlflow()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


#: The experiment tag the MLflow UI (3.x) reads to open an experiment as model training (runs,
#: charts) rather than as a GenAI application (traces); set only where the user has not.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"


def _get_or_create_experiment(client: MlflowClient, uri: str, name: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        artifact_dir = _artifact_dir(uri)
        location = artifact_dir.as_uri() if artifact_dir is not None else None
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
        raise _TrackingUnavailable(
            f"experiment {name!r} is deleted; restore it in the MLflow UI or choose another name"
        )
    if experiment.tags.get(EXPERIMENT_KIND_TAG) is None:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return experiment.experiment_id


def _warn_unavailable(
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
            _redact(uri),
            message[:300],
        )


def _redact(uri: str) -> str:
    """``uri`` without a password, for messages."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.password:
        netloc = f"{parsed.username}:***@{parsed.hostname}" + (
            f":{parsed.port}" if parsed.port else ""
        )
        return urllib.parse.urlunsplit(parsed._replace(netloc=netloc))
    return uri


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --------------------------------------------------------------------------------------------
# The run logger handed to callers
# --------------------------------------------------------------------------------------------


class RunLogger:
    """Logs to one MLflow run; a no-op when tracking is off, failed, or this is not rank 0.

    Methods never raise because of MLflow: the first failure logs one warning and turns the
    logger into a no-op. ``run_id`` is None for a no-op logger.
    """

    def __init__(
        self, client: MlflowClient | None = None, run_id: str | None = None, uri: str = ""
    ) -> None:
        self._client = client
        self.run_id = run_id
        self.tracking_uri = uri
        self.experiment_id: str | None = None
        self._failed = False

    @property
    def active(self) -> bool:
        """Whether calls still reach MLflow."""
        return self._client is not None and self.run_id is not None and not self._failed

    def _call(self, action: str, fn: Any, *args: Any, **kwargs: Any) -> bool:
        if not self.active:
            return False
        try:
            fn(*args, **kwargs)
        except Exception as error:  # MLflow failures must never reach the caller
            # Not necessarily an unreachable store (a rejected value, a lock timeout): other
            # runs of this process may still log, and this one is still ended.
            _warn_unavailable(self.tracking_uri, action, error, unreachable=False)
            self._failed = True
            return False
        return True

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log numeric values (nested mappings are flattened, non-numbers skipped) at ``step``."""
        if not self.active:
            return
        from mlflow.entities import Metric

        flat = flatten_metrics(metrics)
        stamp = int(time.time() * 1000)
        entries = [Metric(key, value, stamp, int(step or 0)) for key, value in flat.items()]
        for chunk in _chunks(entries, _MAX_METRICS_PER_BATCH):
            if not self._call("log_metrics", self._client.log_batch, self.run_id, metrics=chunk):
                return

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (nested mappings flattened to ``a.b.c``; values JSON-encoded)."""
        if not self.active:
            return
        from mlflow.entities import Param

        entries = [Param(key, value) for key, value in flatten_params(params).items()]
        for chunk in _chunks(entries, _MAX_PARAMS_PER_BATCH):
            if not self._call("log_params", self._client.log_batch, self.run_id, params=chunk):
                return

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags (values converted with ``str``)."""
        if not self.active:
            return
        from mlflow.entities import RunTag

        entries = [RunTag(str(key), str(value)) for key, value in tags.items()]
        for chunk in _chunks(entries, _MAX_PARAMS_PER_BATCH):
            if not self._call("set_tags", self._client.log_batch, self.run_id, tags=chunk):
                return

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Copy a file (or a directory's contents) into the run's artifacts."""
        if not self.active:
            return
        local = Path(path)
        if not local.exists():
            log.warning("MLflow artifact %s does not exist; not logged", local)
            return
        if local.is_dir():
            self._call(
                "log_artifacts", self._client.log_artifacts, self.run_id, str(local), artifact_path
            )
        else:
            self._call(
                "log_artifact", self._client.log_artifact, self.run_id, str(local), artifact_path
            )

    def _end(self, status: str) -> None:
        """End the run, even after a failed logging call (else it shows RUNNING forever)."""
        if self._client is None or self.run_id is None or self.tracking_uri in _failed_uris:
            return
        self._failed = False
        self._call("ending the run", self._client.set_terminated, self.run_id, status)


def _open_run(
    uri: str,
    experiment: str | None,
    experiment_id: str | None,
    run_name: str,
    tags: Mapping[str, str],
) -> RunLogger:
    """Create a run, or return a no-op logger after one warning."""
    try:
        client = _client(uri)
        if experiment_id is None:
            experiment_id = _get_or_create_experiment(client, uri, experiment or DEFAULT_EXPERIMENT)
        run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
    except Exception as error:  # see module docstring
        _warn_unavailable(uri, "starting a run", error)
        return RunLogger(uri=uri)
    logger = RunLogger(client, run.info.run_id, uri)
    logger.experiment_id = run.info.experiment_id
    return logger


# --------------------------------------------------------------------------------------------
# Store initialisation
# --------------------------------------------------------------------------------------------


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
        client = _client(uri)
        return _get_or_create_experiment(client, uri, experiment)
    except Exception as error:  # see module docstring
        _warn_unavailable(uri, "initialising the store", error)
        return None


# --------------------------------------------------------------------------------------------
# Pipeline runs
# --------------------------------------------------------------------------------------------


def read_marker(marker_path: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """The pipeline-run marker as a dict, or None when absent or unreadable."""
    if marker_path is None:
        return None
    try:
        marker = json.loads(Path(marker_path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        log.warning("ignoring unreadable MLflow pipeline marker %s: %s", marker_path, error)
        return None
    return marker if isinstance(marker, dict) else None


def start_pipeline_run(
    config: Mapping[str, Any],
    run_name: str,
    marker_path: str | os.PathLike[str],
    *,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    results_dir: str | os.PathLike[str] = "results",
    tags: Mapping[str, Any] | None = None,
) -> str | None:
    """Start the run of one pipeline execution; write the marker stage jobs link to.

    Params are the whole resolved ``config`` flattened (``a.b.c``); tags are
    ``trackgnn.kind=pipeline``, the config hash and the code version (plus ``tags``); the config
    itself is logged as artifact ``config.json``. The marker (JSON: ``run_id``,
    ``tracking_uri``, ``experiment``, ``experiment_id``, ``config_hash``) is written atomically
    even when MLflow is unreachable (with ``run_id`` null) so that no stage job links to the
    run of an earlier execution. Returns the run id, or None.
    """
    uri = resolve_tracking_uri(tracking_uri, results_dir)
    experiment = experiment or DEFAULT_EXPERIMENT
    digest = config_hash(config)
    all_tags = {
        KIND_TAG: "pipeline",
        CONFIG_HASH_TAG: digest,
        CODE_VERSION_TAG: code_version(),
        **{str(k): str(v) for k, v in (tags or {}).items()},
    }
    if process_rank() != 0:
        return None  # the marker belongs to rank 0's pipeline run
    run = _open_run(uri, experiment, None, run_name, all_tags)
    run.log_params(config)
    if run.active:
        # The config as a file too: params are flattened and may be truncated.
        with (
            contextlib.suppress(OSError),
            tempfile.TemporaryDirectory(prefix="trackgnn-runlog-") as tmp,
        ):
            config_file = Path(tmp) / "config.json"
            config_file.write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
            run.log_artifact(config_file)
    write_json_atomic(
        marker_path,
        {
            "run_id": run.run_id,
            "run_name": run_name,
            "tracking_uri": uri,
            "experiment": experiment,
            "experiment_id": run.experiment_id,
            "config_hash": digest,
            # wall-clock start, so that a failed execution can tell its own report from an older one
            "started_at": time.time(),
        },
    )
    return run.run_id


def finish_pipeline_run(
    marker_path: str | os.PathLike[str],
    summary: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    artifacts: Iterable[str | os.PathLike[str]] = (),
    status: str = "FINISHED",
) -> str | None:
    """Log the pipeline's summary metrics and artifacts, end its run and remove the marker.

    ``summary`` is the summary dict or the path of ``summary.json`` (then also logged as an
    artifact); it is flattened by :func:`flatten_metrics`. ``status`` is FINISHED, FAILED or
    KILLED. Returns the run id, or None when there was no run (no marker, MLflow unreachable).
    """
    status = status.upper()
    if status not in _RUN_STATUSES:
        raise TrackGNNError(f"runlog: status {status!r} is not one of {', '.join(_RUN_STATUSES)}")
    artifacts = [Path(a) for a in artifacts]
    if summary is not None and not isinstance(summary, Mapping):
        summary_path = Path(summary)
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, ValueError) as error:
            log.warning("summary %s not logged to MLflow: %s", summary_path, error)
            summary = None
        if summary_path not in artifacts:
            artifacts.append(summary_path)
    if process_rank() != 0:
        return None
    marker = read_marker(marker_path)
    if marker is None:
        return None
    run = RunLogger()
    if marker.get("run_id"):
        uri = str(marker.get("tracking_uri") or resolve_tracking_uri())
        try:
            run = RunLogger(_client(uri), str(marker["run_id"]), uri)
        except Exception as error:  # see module docstring
            _warn_unavailable(uri, "finishing the pipeline run", error)
    if isinstance(summary, Mapping):
        run.log_metrics(summary)
    for path in artifacts:
        run.log_artifact(path)
    run._end(status)
    # The run is over (or never started): no later stage job may link to it.
    with contextlib.suppress(FileNotFoundError):
        Path(marker_path).unlink()
    return run.run_id if run.active else None


# --------------------------------------------------------------------------------------------
# Stage runs
# --------------------------------------------------------------------------------------------


def _start_system_metrics(run: RunLogger, interval_s: float) -> Any:
    """Start MLflow's system-metrics sampler (CPU, memory, disk, network; GPU with pynvml)."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(
            run.run_id, sampling_interval=interval_s, tracking_uri=run.tracking_uri
        )
        monitor.start()
    except Exception as error:  # optional feature (psutil missing, API change)
        log.warning("MLflow system metrics not recorded: %s", error)
        return None
    return monitor


@contextlib.contextmanager
def stage_run(
    stage: str,
    params: Mapping[str, Any] | None = None,
    marker_path: str | os.PathLike[str] | None = None,
    *,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    system_metrics: bool = False,
    system_metrics_interval_s: float = 5.0,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    results_dir: str | os.PathLike[str] = "results",
) -> Iterator[RunLogger]:
    """One MLflow run for one stage execution (a training, a per-event inference batch).

    Tags: ``trackgnn.kind=stage``, ``trackgnn.stage``, ``trackgnn.pipeline_run_id`` (from the
    marker, when a pipeline run is in progress), the hash of ``params`` and the code version;
    params: ``params`` (the resolved config section) flattened. The tracking URI is
    ``tracking_uri`` if given, else the marker's, else :func:`resolve_tracking_uri`. With
    ``system_metrics`` MLflow samples CPU/memory/GPU every ``system_metrics_interval_s``
    seconds (``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` overrides it).

    Yields a :class:`RunLogger`; a no-op one on ranks other than 0 or when MLflow fails. The
    run ends FINISHED, FAILED on an exception (which propagates), KILLED on KeyboardInterrupt.
    """
    params = dict(params or {})
    if process_rank() != 0:
        yield RunLogger()
        return
    marker = read_marker(marker_path) or {}
    uri = tracking_uri or marker.get("tracking_uri") or resolve_tracking_uri(None, results_dir)
    same_store = marker.get("tracking_uri") == uri
    pipeline_run_id = marker.get("run_id") if same_store else None
    experiment_id = marker.get("experiment_id") if same_store and experiment is None else None
    all_tags = {
        KIND_TAG: "stage",
        STAGE_TAG: stage,
        CONFIG_HASH_TAG: config_hash(params),
        CODE_VERSION_TAG: code_version(),
    }
    if pipeline_run_id:
        all_tags[PIPELINE_RUN_TAG] = pipeline_run_id
        all_tags[PARENT_RUN_TAG] = pipeline_run_id
    all_tags.update({str(k): str(v) for k, v in (tags or {}).items()})
    run = _open_run(
        uri, experiment or marker.get("experiment"), experiment_id, run_name or stage, all_tags
    )
    run.log_params(params)
    monitor = (
        _start_system_metrics(run, system_metrics_interval_s)
        if system_metrics and run.active
        else None
    )
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if monitor is not None:
            with contextlib.suppress(Exception):
                monitor.finish()
        run._end(status)


# --------------------------------------------------------------------------------------------
# Lightning callback (built lazily: importing Lightning costs seconds)
# --------------------------------------------------------------------------------------------


def _make_epoch_logger_class() -> type:
    import pytorch_lightning as pl

    class MlflowEpochLogger(pl.Callback):
        """Forward ``trainer.callback_metrics`` to a stage run once per epoch (step = epoch).

        Lightning fills ``callback_metrics`` in stages: validation before the training epoch
        ends, the training epoch aggregates at its end, and keys logged in the module's own
        ``on_train_epoch_end`` (epoch time, throughput, memory) only after the callbacks' hook.
        So epoch N is flushed when epoch N+1 starts (or training ends), when all of them are
        in. Values still held from an earlier epoch (validation every k epochs) are recognised
        by identity and not logged again under the wrong epoch.
        """

        def __init__(self, run: RunLogger) -> None:
            super().__init__()
            self.run = run
            self._pending_epoch: int | None = None
            self._seen: dict[str, Any] = {}

        def _fresh_metrics(self, trainer: pl.Trainer) -> dict[str, float]:
            current = dict(trainer.callback_metrics)
            fresh = {}
            for key, value in current.items():
                if self._seen.get(key) is value:
                    continue
                number = _as_float(value)
                if number is not None:
                    fresh[key] = number
            self._seen = current
            return fresh

        def _flush(self, trainer: pl.Trainer) -> None:
            fresh = self._fresh_metrics(trainer)
            epoch, self._pending_epoch = self._pending_epoch, None
            if epoch is not None and fresh and trainer.is_global_zero:
                self.run.log_metrics(fresh, step=epoch)

        def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
            self._flush(trainer)

        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
            self._pending_epoch = trainer.current_epoch

        def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
            self._flush(trainer)

        def on_exception(
            self, trainer: pl.Trainer, pl_module: Any, exception: BaseException
        ) -> None:
            self._flush(trainer)

        def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
            # Within fit, validation metrics go out with their training epoch; a standalone
            # trainer.validate() has no training epoch, so it is logged here.
            if trainer.sanity_checking or trainer.training or self._is_fitting(trainer):
                return
            self._pending_epoch = trainer.current_epoch
            self._flush(trainer)

        @staticmethod
        def _is_fitting(trainer: pl.Trainer) -> bool:
            return str(getattr(trainer.state.fn, "value", trainer.state.fn)) == "fit"

    return MlflowEpochLogger


def __getattr__(name: str) -> Any:
    if name == "MlflowEpochLogger":
        cls = _make_epoch_logger_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------
# The UI
# --------------------------------------------------------------------------------------------


def ui_command(
    host: str = "127.0.0.1",
    port: int = 5000,
    uri: str | None = None,
    results_dir: str | os.PathLike[str] = "results",
    workers: int = 1,
) -> list[str]:
    """The command line of an MLflow server (UI + REST API) on the project's store.

    ``uri`` defaults to :func:`resolve_tracking_uri`. Raises TrackGNNError when the tracking
    URI is itself a server: open that in a browser.
    """
    uri = resolve_tracking_uri(uri, results_dir)
    if urllib.parse.urlsplit(uri).scheme in ("http", "https", "databricks"):
        raise TrackGNNError(
            f"tracking URI {_redact(uri)} is already a server; open it in a browser instead"
        )
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", uri,
        "--host", host,
        "--port", str(int(port)),
        "--workers", str(int(workers)),
    ]  # fmt: skip
    artifact_dir = _artifact_dir(uri)
    if artifact_dir is not None:
        # Experiments created through the UI keep their artifacts beside the database too.
        command += ["--artifacts-destination", str(artifact_dir)]
    return command


def ui(
    host: str = "127.0.0.1",
    port: int = 5000,
    uri: str | None = None,
    results_dir: str | os.PathLike[str] = "results",
    experiment: str = DEFAULT_EXPERIMENT,
) -> int:
    """Run the MLflow UI on ``host:port`` against the project's store until interrupted.

    Returns the server's exit status (0 after Ctrl-C or SIGTERM). Stopping this process with
    SIGINT or SIGTERM stops the server it started (its own process group: the server's workers
    go with it), so no orphan keeps holding the port.
    """
    command = ui_command(host, port, uri, results_dir)
    uri = command[command.index("--backend-store-uri") + 1]
    init_store(uri, experiment)
    print(f"MLflow UI on http://{host}:{port} (store {_redact(uri)}); Ctrl-C stops it", flush=True)
    process = subprocess.Popen(command, env=mlflow_env(), start_new_session=True)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        return process.wait()
    except KeyboardInterrupt:
        _stop_process_group(process)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        if process.poll() is None:  # any other way out of the wait
            _stop_process_group(process)


def _stop_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process's group, then SIGKILL what is left after 10 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


# --------------------------------------------------------------------------------------------
# Command line: python -m trackgnn.runlog {init,start,finish,ui}
# --------------------------------------------------------------------------------------------


def _load_config_file(path: str) -> dict[str, Any]:
    import yaml

    try:
        config = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise TrackGNNError(f"{path}: cannot read config: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise TrackGNNError(f"{path}: not valid YAML/JSON: {error}".splitlines()[0]) from None
    if not isinstance(config, dict):
        raise TrackGNNError(f"{path}: config must be a mapping")
    return config


def main(argv: list[str] | None = None) -> int:
    """``init | start | finish | ui`` for Snakemake handlers and the ``trackgnn`` CLI."""
    import argparse

    parser = argparse.ArgumentParser(prog="trackgnn runlog", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def store_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tracking-uri", default=None, help="overrides $MLFLOW_TRACKING_URI")
        p.add_argument("--experiment", default=DEFAULT_EXPERIMENT)
        p.add_argument("--results-dir", default="results", help="for the default SQLite store")

    p_init = sub.add_parser("init", help="create the database and experiment (before jobs)")
    store_options(p_init)
    p_start = sub.add_parser("start", help="start a pipeline run and write its marker")
    store_options(p_start)
    p_start.add_argument("--config", required=True, help="resolved config (YAML or JSON)")
    p_start.add_argument("--run-name", required=True)
    p_start.add_argument("--marker", required=True)
    p_finish = sub.add_parser("finish", help="log summary and artifacts, end the pipeline run")
    p_finish.add_argument("--marker", required=True)
    p_finish.add_argument("--summary", default=None, help="summary.json")
    p_finish.add_argument("--artifact", action="append", default=[], help="repeatable")
    p_finish.add_argument("--status", default="FINISHED", choices=_RUN_STATUSES, type=str.upper)
    p_ui = sub.add_parser("ui", help="run the MLflow UI against the project's store")
    store_options(p_ui)
    p_ui.add_argument("--host", default="127.0.0.1")
    p_ui.add_argument("--port", type=int, default=5000)

    args = parser.parse_args(argv)
    if args.command == "init":
        init_store(resolve_tracking_uri(args.tracking_uri, args.results_dir), args.experiment)
    elif args.command == "start":
        run_id = start_pipeline_run(
            _load_config_file(args.config),
            args.run_name,
            args.marker,
            tracking_uri=args.tracking_uri,
            experiment=args.experiment,
            results_dir=args.results_dir,
        )
        if run_id:
            print(f"MLflow pipeline run {run_id}")
    elif args.command == "finish":
        finish_pipeline_run(args.marker, args.summary, args.artifact, args.status)
    elif args.command == "ui":
        return ui(args.host, args.port, args.tracking_uri, args.results_dir, args.experiment)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except TrackGNNError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
