"""The run protocol: one MLflow run per pipeline execution, one per stage execution.

A pipeline run carries ``trackgnn.kind=pipeline`` and the whole resolved config as params; it
writes a small JSON marker (run id, store, experiment) into the run directory. A stage run (a
training, a per-event inference batch) carries ``trackgnn.kind=stage``, ``trackgnn.stage`` and,
read from the marker, ``trackgnn.pipeline_run_id``, so the MLflow UI lists each pipeline run's
stage runs. Only rank 0 of a distributed job logs; nothing here raises because of MLflow.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trackgnn.atomic import write_json_atomic
from trackgnn.config import section_hash
from trackgnn.errors import TrackGNNError
from trackgnn.tracking.logger import RunLogger, open_run
from trackgnn.tracking.names import (
    CODE_VERSION_TAG,
    CONFIG_HASH_TAG,
    KIND_TAG,
    PARENT_RUN_TAG,
    PIPELINE_RUN_TAG,
    STAGE_TAG,
    code_version,
)
from trackgnn.tracking.store import (
    DEFAULT_EXPERIMENT,
    connect,
    process_rank,
    resolve_tracking_uri,
    warn_unavailable,
)

if TYPE_CHECKING:
    from trackgnn.config import Config

__all__ = [
    "RUN_STATUSES",
    "Target",
    "finish_pipeline_run",
    "read_marker",
    "stage_run",
    "start_pipeline_run",
]

log = logging.getLogger("trackgnn.tracking")

RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
MARKER_NAME = "pipeline_run.json"


@dataclass(frozen=True)
class Target:
    """Where a process's runs go: the tracking store, the experiment, the pipeline marker."""

    tracking_uri: str
    experiment: str = DEFAULT_EXPERIMENT
    marker: Path | None = None

    @classmethod
    def from_config(cls, cfg: Config) -> Target:
        """A config's target: its store, its experiment, ``<run_dir>/pipeline_run.json``."""
        return cls(
            resolve_tracking_uri(cfg.mlflow.tracking_uri, cfg.results_dir),
            cfg.mlflow.experiment,
            cfg.run_dir / MARKER_NAME,
        )


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
    target: Target,
    config: Mapping[str, Any],
    run_name: str,
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
    if target.marker is None:
        raise TrackGNNError("a pipeline run needs a marker path")
    digest = section_hash(dict(config))
    all_tags = {
        KIND_TAG: "pipeline",
        CONFIG_HASH_TAG: digest,
        CODE_VERSION_TAG: code_version(),
        **{str(k): str(v) for k, v in (tags or {}).items()},
    }
    if process_rank() != 0:
        return None  # the marker belongs to rank 0's pipeline run
    run = open_run(target.tracking_uri, target.experiment, run_name, all_tags)
    run.log_params(config)
    if run.active:
        # The config as a file too: params are flattened and may be truncated.
        with (
            contextlib.suppress(OSError),
            tempfile.TemporaryDirectory(prefix="trackgnn-tracking-") as tmp,
        ):
            config_file = Path(tmp) / "config.json"
            config_file.write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
            run.log_artifact(config_file)
    write_json_atomic(
        target.marker,
        {
            "run_id": run.run_id,
            "run_name": run_name,
            "tracking_uri": target.tracking_uri,
            "experiment": target.experiment,
            "experiment_id": run.experiment_id,
            "config_hash": digest,
            # wall-clock start, so that a failed execution can tell its own report from an older one
            "started_at": time.time(),
        },
    )
    return run.run_id


def execution_report(
    target: Target, report_dir: str | os.PathLike[str], status: str
) -> tuple[dict[str, Any], list[Path]]:
    """The summary (``report_dir/summary.json``) and artifacts of the ending pipeline execution.

    After a success the report is up to date (Snakemake made it so). After a failure only a report
    written during this execution (since the marker's ``started_at``) is this execution's: an
    older one is not, and the result is then empty.
    """
    report_dir = Path(report_dir)
    summary_path = report_dir / "summary.json"
    current = summary_path.exists()
    if current and status.upper() == "FAILED":
        started = (read_marker(target.marker) or {}).get("started_at")
        current = isinstance(started, int | float) and summary_path.stat().st_mtime >= started
    if not current:
        return {}, []
    return json.loads(summary_path.read_text()), sorted(report_dir.glob("*"))


def finish_pipeline_run(
    target: Target,
    summary: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    artifacts: Iterable[str | os.PathLike[str]] = (),
    status: str = "FINISHED",
) -> str | None:
    """Log the pipeline's summary metrics and artifacts, end its run and remove the marker.

    ``summary`` is the summary dict or the path of ``summary.json`` (then also logged as an
    artifact); it is flattened by :func:`~trackgnn.tracking.names.flatten_metrics`. ``status``
    is FINISHED, FAILED or KILLED. The run is the marker's, in the marker's store. Returns the
    run id, or None when there was no run (no marker, MLflow unreachable).
    """
    status = status.upper()
    if status not in RUN_STATUSES:
        raise TrackGNNError(f"runlog: status {status!r} is not one of {', '.join(RUN_STATUSES)}")
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
    marker = read_marker(target.marker)
    if marker is None:
        return None
    run = RunLogger()
    if marker.get("run_id"):
        uri = str(marker.get("tracking_uri") or target.tracking_uri)
        try:
            run = RunLogger(connect(uri), str(marker["run_id"]), uri)
        except Exception as error:  # tracking must never fail the caller
            warn_unavailable(uri, "finishing the pipeline run", error)
    if isinstance(summary, Mapping):
        run.log_metrics(summary)
    for path in artifacts:
        run.log_artifact(path)
    run.end(status)
    # The run is over (or never started): no later stage job may link to it.
    with contextlib.suppress(FileNotFoundError):
        Path(target.marker).unlink()  # type: ignore[arg-type]
    return run.run_id if run.active else None


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
    target: Target,
    stage: str,
    params: Mapping[str, Any] | None = None,
    *,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    system_metrics: bool = False,
    system_metrics_interval_s: float = 5.0,
) -> Iterator[RunLogger]:
    """One MLflow run for one stage execution (a training, a per-event inference batch).

    Tags: ``trackgnn.kind=stage``, ``trackgnn.stage``, ``trackgnn.pipeline_run_id`` (from the
    marker, when a pipeline run is in progress in the same store), the hash of ``params`` and
    the code version; params: ``params`` (the resolved config section) flattened. With
    ``system_metrics`` MLflow samples CPU/memory/GPU every ``system_metrics_interval_s``
    seconds (``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` overrides it).

    Yields a :class:`RunLogger`; a no-op one on ranks other than 0 or when MLflow fails. The
    run ends FINISHED, FAILED on an exception (which propagates), KILLED on KeyboardInterrupt.
    """
    params = dict(params or {})
    if process_rank() != 0:
        yield RunLogger()
        return
    marker = read_marker(target.marker) or {}
    pipeline_run_id = (
        marker.get("run_id") if marker.get("tracking_uri") == target.tracking_uri else None
    )
    all_tags = {
        KIND_TAG: "stage",
        STAGE_TAG: stage,
        CONFIG_HASH_TAG: section_hash(params),
        CODE_VERSION_TAG: code_version(),
    }
    if pipeline_run_id:
        all_tags[PIPELINE_RUN_TAG] = pipeline_run_id
        all_tags[PARENT_RUN_TAG] = pipeline_run_id
    all_tags.update({str(k): str(v) for k, v in (tags or {}).items()})
    run = open_run(target.tracking_uri, target.experiment, run_name or stage, all_tags)
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
        run.end(status)
