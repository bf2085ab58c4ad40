"""What trackgnn calls things in MLflow: tag names, and params and metrics flattened to valid keys.

Pure functions, no MLflow import: nested configs become ``a.b.c`` params, nested summaries
``a/b/c`` metrics, and any key is made one MLflow accepts.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

__all__ = [
    "CODE_VERSION_TAG",
    "CONFIG_HASH_TAG",
    "KIND_TAG",
    "PARENT_RUN_TAG",
    "PIPELINE_RUN_TAG",
    "STAGE_TAG",
    "as_float",
    "code_version",
    "flatten_metrics",
    "flatten_params",
    "sanitize_key",
]

KIND_TAG = "trackgnn.kind"
STAGE_TAG = "trackgnn.stage"
PIPELINE_RUN_TAG = "trackgnn.pipeline_run_id"
CONFIG_HASH_TAG = "trackgnn.config_hash"
CODE_VERSION_TAG = "trackgnn.code_version"
# MLflow's own tag: the UI nests a run under its parent in the runs table.
PARENT_RUN_TAG = "mlflow.parentRunId"

# MLflow limits (mlflow.utils.validation): keys 250 characters, param values 6000.
_MAX_KEY_LEN = 250
_MAX_PARAM_LEN = 6000
_TRUNCATED = "...[truncated]"

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


def as_float(value: Any) -> float | None:
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
                if "value" in value and as_float(value["value"]) is not None:
                    metrics[sanitize_key(name)] = as_float(value["value"])  # type: ignore[assignment]
                    error = as_float(value.get("error"))
                    if error is not None:
                        metrics[sanitize_key(f"{name}_error")] = error
                    rest = {k: v for k, v in value.items() if k not in ("value", "error")}
                    visit(rest, name)
                else:
                    visit(value, name)
            else:
                number = as_float(value)
                if number is not None:
                    metrics[sanitize_key(name)] = number

    visit(summary, "")
    return metrics


@cache
def code_version() -> str:
    """Package version plus ``git describe`` of the source tree when it is a git checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg_version = version("trackgnn")
    except PackageNotFoundError:
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
