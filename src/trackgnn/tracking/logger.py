"""The never-raise logger of one MLflow run, handed to the code that has metrics to log."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trackgnn.tracking.names import flatten_metrics, flatten_params
from trackgnn.tracking.store import (
    DEFAULT_EXPERIMENT,
    connect,
    experiment_id,
    has_failed,
    warn_unavailable,
)

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = ["RunLogger", "open_run"]

log = logging.getLogger("trackgnn.tracking")


class RunLogger:
    """Logs to one MLflow run; a no-op when tracking is off, failed, or this is not rank 0.

    Methods never raise because of MLflow: the first failure logs one warning and turns the
    logger into a no-op. ``run_id`` is None for a no-op logger. Batches larger than MLflow's
    per-request limits are split by ``MlflowClient.log_batch`` itself.
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

    def _call(self, action: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        if not self.active:
            return
        try:
            fn(*args, **kwargs)
        except Exception as error:  # MLflow failures must never reach the caller
            # Not necessarily an unreachable store (a rejected value, a lock timeout): other
            # runs of this process may still log, and this one is still ended.
            warn_unavailable(self.tracking_uri, action, error, unreachable=False)
            self._failed = True

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log numeric values (nested mappings are flattened, non-numbers skipped) at ``step``."""
        if not self.active:
            return
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        entries = [Metric(k, v, stamp, int(step or 0)) for k, v in flatten_metrics(metrics).items()]
        self._call("log_metrics", self._client.log_batch, self.run_id, metrics=entries)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (nested mappings flattened to ``a.b.c``; values JSON-encoded)."""
        if not self.active:
            return
        from mlflow.entities import Param

        entries = [Param(key, value) for key, value in flatten_params(params).items()]
        self._call("log_params", self._client.log_batch, self.run_id, params=entries)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set tags (values converted with ``str``)."""
        if not self.active:
            return
        from mlflow.entities import RunTag

        entries = [RunTag(str(key), str(value)) for key, value in tags.items()]
        self._call("set_tags", self._client.log_batch, self.run_id, tags=entries)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Copy a file (or a directory's contents) into the run's artifacts."""
        if not self.active:
            return
        local = Path(path)
        if not local.exists():
            log.warning("MLflow artifact %s does not exist; not logged", local)
            return
        method = self._client.log_artifacts if local.is_dir() else self._client.log_artifact
        self._call(method.__name__, method, self.run_id, str(local), artifact_path)

    def end(self, status: str) -> None:
        """End the run, even after a failed logging call (else it shows RUNNING forever)."""
        if self._client is None or self.run_id is None or has_failed(self.tracking_uri):
            return
        self._failed = False
        self._call("ending the run", self._client.set_terminated, self.run_id, status)


def open_run(uri: str, experiment: str | None, run_name: str, tags: Mapping[str, str]) -> RunLogger:
    """Create a run in ``experiment`` of store ``uri``, or return a no-op logger after a warning."""
    try:
        client = connect(uri)
        exp_id = experiment_id(client, uri, experiment or DEFAULT_EXPERIMENT)
        run = client.create_run(exp_id, run_name=run_name, tags=dict(tags))
    except Exception as error:  # tracking must never fail the caller
        warn_unavailable(uri, "starting a run", error)
        return RunLogger(uri=uri)
    logger = RunLogger(client, run.info.run_id, uri)
    logger.experiment_id = run.info.experiment_id
    return logger
