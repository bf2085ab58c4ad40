"""The one declaration of what shapes each training (trackgnn.config.training_settings).

Read by the training rules' params and by the checkpoints' resume keys; checked here against the
rules Snakemake actually loads, and against every config key the training code reads.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from trackgnn.config import TRAININGS, Config, config_from_dict, training_settings

from .conftest import REPO, SMOKE

SRC = REPO / "src" / "trackgnn"

#: Config keys a training reads that do not shape its weights, and why. A new read must be
#: declared in trackgnn.config (``_trains``) or listed here with its reason.
READ_BUT_NOT_SHAPING = {
    "embedding": {
        "device": "where it runs; a rule param of its own",
        "graph.radius": "validation graph only",
        "graph.k_max": "validation graph only",
        "graph.chunk_size": "queries per chunk: memory only",
        "graph.backend": "every backend is exact (graph/radius.py)",
        "evaluation.signal_pt": "validation efficiency only",
        "embedding.val_every": "how often validation runs: the same weights",
    },
    "filter": {
        "device": "where it runs; a rule param of its own",
        "filter.cut": "validation and inference only",
        "filter.chunk_edges": "edges scored at once: memory only",
        "evaluation.min_hits": "validation efficiency only",
        "evaluation.signal_pt": "validation efficiency only",
        "filter.val_every": "how often validation runs: the same weights",
    },
    "gnn": {
        "device": "where it runs; a rule param of its own",
        "threads": "CPU threads per rank",
        "gnn.dist_timeout_s": "how long ranks wait: when a failure is reported",
        "gnn.val_every": "how often validation runs: the same weights",
    },
}


def _leaves(node: Any, path: str = "") -> list[str]:
    """Dotted paths of every leaf field of a config dataclass."""
    paths = []
    for field in dataclasses.fields(node):
        name = f"{path}.{field.name}" if path else field.name
        value = getattr(node, field.name)
        paths += _leaves(value, name) if dataclasses.is_dataclass(value) else [name]
    return paths


def _chain(node: ast.AST) -> list[str] | None:
    """``a.b.c`` as ``["a", "b", "c"]``; None for anything but names and attributes."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return [node.id, *reversed(parts)] if isinstance(node, ast.Name) else None


def config_reads(path: Path, leaves: set[str]) -> set[str]:
    """The config keys a module reads from ``cfg``, directly or through an alias of a section
    (``emb = cfg.embedding``), or whole by ``cfg.section(name)``."""
    tree = ast.parse(path.read_text())
    aliases = {"cfg": ""}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            chain = _chain(node.value)
            if chain and chain[0] == "cfg" and len(chain) > 1:
                aliases[node.targets[0].id] = ".".join(chain[1:])
    reads = set()
    for node in ast.walk(tree):
        chain = _chain(node) if isinstance(node, ast.Attribute) else None
        if chain and chain[0] in aliases:
            key = ".".join(filter(None, [aliases[chain[0]], *chain[1:]]))
            reads |= {key} & leaves
        if isinstance(node, ast.Call) and _chain(node.func) == ["cfg", "section"]:
            section = node.args[0].value  # type: ignore[attr-defined]
            reads |= {leaf for leaf in leaves if leaf.startswith(f"{section}.")}
    return reads


@pytest.fixture(scope="module")
def smoke_config() -> Config:
    import yaml

    return config_from_dict(yaml.safe_load(SMOKE.read_text()), str(SMOKE))


@pytest.mark.parametrize("training", TRAININGS)
def test_every_config_key_a_training_reads_shapes_it_or_is_declared_not_to(smoke_config, training):
    leaves = set(_leaves(smoke_config))
    # the stage's module and its helpers beside it (gnn.py and gnn_streams.py)
    modules = sorted((SRC / "training").glob(f"{training}*.py"))
    reads = set().union(*(config_reads(path, leaves) for path in modules))
    assert reads, "the scan found no config reads: it no longer sees the training's code"
    declared = set(training_settings(smoke_config, training))
    undeclared = reads - declared - set(READ_BUT_NOT_SHAPING[training])
    assert not undeclared, (
        f"train_{training} reads {sorted(undeclared)}: mark the field with _trains(...) in "
        "trackgnn/config.py if it shapes the weights, else list it in READ_BUT_NOT_SHAPING"
    )
    # Nothing is both: a declared setting that is also excused would be a contradiction.
    assert not declared & set(READ_BUT_NOT_SHAPING[training])


def test_the_embedding_is_shaped_by_the_evaluation_min_hits_it_weights_signal_by(smoke_config):
    settings = training_settings(smoke_config, "embedding")
    assert settings["evaluation.min_hits"] == smoke_config.evaluation.min_hits
    assert settings["seed"] == smoke_config.seed
    assert "evaluation.min_hits" not in training_settings(smoke_config, "filter")
    assert "gnn.dist_timeout_s" not in training_settings(smoke_config, "gnn")
    assert "gnn.shadow.fanout" in training_settings(smoke_config, "gnn")
    with pytest.raises(ValueError, match="no training"):
        training_settings(smoke_config, "tracks")


def test_training_rules_params_hold_every_setting_that_shapes_their_training(
    smoke_config, tmp_path
):
    """Loads the Snakefile once (no DAG, no job) and reads each training rule's params."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (
        ConfigSettings,
        OutputSettings,
        ResourceSettings,
        StorageSettings,
    )

    with SnakemakeApi(OutputSettings()) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(cores=1),
            config_settings=ConfigSettings(
                configfiles=[SMOKE], config={"results_dir": str(tmp_path / "results")}
            ),
            storage_settings=StorageSettings(),
            snakefile=REPO / "Snakefile",
            workdir=tmp_path,
        )
        rules = {t: workflow._workflow.get_rule(f"train_{t}") for t in TRAININGS}
        params = {t: dict(rule.params.items()) for t, rule in rules.items()}
    for training in TRAININGS:
        ruled = {
            key: value
            for value_of_param in params[training].values()
            if isinstance(value_of_param, dict)
            for key, value in value_of_param.items()
        }
        for key, value in training_settings(smoke_config, training).items():
            assert key in ruled, (
                f"train_{training}'s params miss {key}: a change would not rerun it"
            )
            assert ruled[key] == value, key
