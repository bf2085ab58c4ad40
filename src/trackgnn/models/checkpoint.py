"""Loading trained models for inference: validated checkpoints, device choice.

Kept free of Lightning so per-event inference jobs (graph building, filtering, edge scoring,
track building) start fast; training code imports these from here too.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trackgnn.errors import CheckpointError, ConfigError


def resolve_device(device: str) -> str:
    """``cpu``/``cuda``/``auto`` from the config to a concrete ``cpu`` or ``cuda``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' requested but torch sees no CUDA device")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"device: must be cpu, cuda or auto, not '{device}'")
    return device


def read_checkpoint(path: str | os.PathLike[str], kind: str) -> dict[str, Any]:
    """Load a checkpoint's dict (``weights_only``) and check it is a ``kind`` checkpoint."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint does not exist")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles before refusing them
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated or corrupt archives
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or corrupt: {type(err).__name__})"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("state_dict"), Mapping):
        raise CheckpointError(f"{path}: not a model checkpoint (no state_dict)")
    hparams = data.get("hyper_parameters")
    if not isinstance(hparams, Mapping) or "model_kind" not in hparams:
        raise CheckpointError(f"{path}: not a trackgnn checkpoint (no model_kind hyperparameter)")
    if hparams["model_kind"] != kind:
        raise CheckpointError(f"{path}: is a {hparams['model_kind']!s} checkpoint, expected {kind}")
    if not isinstance(hparams.get("model"), Mapping):
        raise CheckpointError(f"{path}: {kind} checkpoint has no model hyperparameters")
    return data


def load_model(
    path: str | os.PathLike[str], kind: str, build: Callable[..., nn.Module]
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a network with ``build(**hparams['model'])`` and load its weights.

    Returns the network in eval mode and the checkpoint's hyperparameters.
    """
    data = read_checkpoint(path, kind)
    hparams = dict(data["hyper_parameters"])
    try:
        model = build(**hparams["model"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: incompatible {kind} hyperparameters ({err})") from None
    prefix = "model."
    state = {k[len(prefix) :]: v for k, v in data["state_dict"].items() if k.startswith(prefix)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise CheckpointError(f"{path}: weights do not match the {kind} model ({detail})") from None
    model.eval()
    return model, hparams
