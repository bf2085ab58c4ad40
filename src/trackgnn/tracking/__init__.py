"""Experiment tracking: the only package of trackgnn that talks to MLflow.

Every pipeline execution and every stage execution is one MLflow run (:mod:`.runs`); MLflow is a
*view* of results that callers have already written to files, so nothing here raises into the
caller or waits long when the store fails (:mod:`.store`, :mod:`.logger`). :mod:`.names` makes
configs and summaries into params and metrics, :mod:`.ui` serves the MLflow UI. Callers build a
:class:`Target` with ``Target.from_config(cfg)`` and pass it to the run functions.
"""

from __future__ import annotations

from trackgnn.tracking.logger import RunLogger
from trackgnn.tracking.names import KIND_TAG, PARENT_RUN_TAG
from trackgnn.tracking.runs import (
    RUN_STATUSES,
    Target,
    execution_report,
    finish_pipeline_run,
    read_marker,
    stage_run,
    start_pipeline_run,
)
from trackgnn.tracking.store import init_store, mlflow_env, process_rank, resolve_tracking_uri
from trackgnn.tracking.ui import ui, ui_command

__all__ = [
    "KIND_TAG",
    "PARENT_RUN_TAG",
    "RUN_STATUSES",
    "RunLogger",
    "Target",
    "execution_report",
    "finish_pipeline_run",
    "init_store",
    "mlflow_env",
    "process_rank",
    "read_marker",
    "resolve_tracking_uri",
    "stage_run",
    "start_pipeline_run",
    "ui",
    "ui_command",
]
