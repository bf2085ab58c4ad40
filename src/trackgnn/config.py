"""Configuration: validated once at the edge against the JSON schema, then typed.

The schema (``schemas/config.schema.yaml``, also at ``workflow/schemas/``) holds every
default; this module fills them in, validates, and builds frozen dataclasses. Stage code
receives a dataclass, never a raw dict.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import jsonschema
import yaml

from trackgnn.errors import ConfigError

#: The trainings of the pipeline; each is also the name of its own config section.
TRAININGS = ("embedding", "filter", "gnn")
#: Field metadata key: the trainings whose trained weights a setting shapes. Unmarked, a field of
#: a training's own section shapes that training and nothing else's; other fields shape none.
TRAINS = "trains"


def _trains(*trainings: str) -> Any:
    """A config field whose value shapes the weights of ``trainings`` (none: of no training).

    Read by :func:`training_settings`, which the training rules' params and the checkpoints'
    resume keys both use: a setting that shapes a training reruns it when changed, and a killed
    training resumes only under the settings it was started with.
    """
    return dataclasses.field(metadata={TRAINS: trainings})


@dataclass(frozen=True)
class DataConfig:
    source: Literal["simulate", "trackml"]
    trackml_dir: str | None
    first_event_id: int
    train_events: int
    val_events: int
    test_events: int
    events: dict[str, list[int | str]] | None


@dataclass(frozen=True)
class SimulateConfig:
    mu: float
    generator: Literal["parametric", "pythia8"]
    field: Literal["solenoid", "uniform"]
    noise_fraction: float


@dataclass(frozen=True)
class EmbeddingConfig:
    emb_dim: int
    hidden: int
    n_layers: int
    activation: str
    layer_norm: bool
    margin: float
    lr: float
    epochs: int
    random_pairs: float
    knn_k: int
    signal_pt: float
    signal_weight: float
    steps_per_event: int
    val_every: int = _trains()


@dataclass(frozen=True)
class GraphConfig:
    radius: float
    k_max: int
    chunk_size: int
    backend: Literal["auto", "kdtree", "faiss", "torch"]


@dataclass(frozen=True)
class FilterConfig:
    hidden: int
    n_layers: int
    activation: str
    layer_norm: bool
    lr: float
    epochs: int
    # inference: the score cut and how many edges are scored at once (memory only)
    cut: float = _trains()
    chunk_edges: int = _trains()
    negative_ratio: float
    batch_edges: int
    cluster_direction: bool
    same_particle_negatives: bool
    val_every: int = _trains()


@dataclass(frozen=True)
class ShadowConfig:
    depth: int
    fanout: int
    batch_size: int
    sampler: Literal["bulk", "reference", "pyg"]
    k: int
    root_weight: float
    roots_per_epoch: int | None


@dataclass(frozen=True)
class GNNConfig:
    hidden: int
    n_iterations: int
    mlp_layers: int
    layer_norm: bool
    skip: Literal["concat", "residual"]
    aggregation: Literal["sum", "sum_max"]
    checkpointing: bool
    amp: bool
    compile: bool
    mode: Literal["full", "shadow"]
    phi_sectors: int
    lr: float
    epochs: int
    world_size: int
    pos_weight: float
    true_edge_weights: Literal["uniform", "trackml_pt", "trackml_pt_boost", "signal"]
    # how long ranks wait for each other: when a failure is reported, not what is learnt
    dist_timeout_s: float = _trains()
    # validation only reports: the weights do not depend on how often it runs
    val_every: int = _trains()
    shadow: ShadowConfig


@dataclass(frozen=True)
class TracksConfig:
    score_cut: float
    min_length: int
    method: Literal["components", "walkthrough"]


@dataclass(frozen=True)
class EvaluationConfig:
    min_pt: float
    max_eta: float
    # the embedding's training weights signal hits of particles with this many hits
    min_hits: int = _trains("embedding")
    # the GNN's loss leaves out true edges below it under gnn.true_edge_weights: signal
    signal_pt: float = _trains("gnn")


@dataclass(frozen=True)
class StudiesConfig:
    pileup_mu: list[float]
    noise_fractions: list[float]
    events: int | None


@dataclass(frozen=True)
class ReconstructConfig:
    models: str | None
    events: str | None
    ids: list[int | str] | None


@dataclass(frozen=True)
class WorkflowConfig:
    events_per_job: int


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str | None
    experiment: str


@dataclass(frozen=True)
class Config:
    run: str
    results_dir: str
    seed: int = _trains(*TRAININGS)
    device: Literal["cpu", "cuda", "auto"]
    threads: int
    data: DataConfig
    simulate: SimulateConfig
    embedding: EmbeddingConfig
    graph: GraphConfig
    filter: FilterConfig
    gnn: GNNConfig
    tracks: TracksConfig
    evaluation: EvaluationConfig
    studies: StudiesConfig
    reconstruct: ReconstructConfig
    workflow: WorkflowConfig
    mlflow: MlflowConfig

    @property
    def run_dir(self) -> Path:
        """``<results_dir>/<run>``: where every output of this run goes."""
        return Path(self.results_dir) / self.run

    def event_ids(self, split: Literal["train", "val", "test", "all"]) -> list[int]:
        """Event ids of a split: consecutive id ranges in the order train, val, test."""
        d = self.data
        first = d.first_event_id
        ranges = {
            "train": range(first, first + d.train_events),
            "val": range(first + d.train_events, first + d.train_events + d.val_events),
            "test": range(
                first + d.train_events + d.val_events,
                first + d.train_events + d.val_events + d.test_events,
            ),
        }
        if split == "all":
            return [i for r in ranges.values() for i in r]
        return list(ranges[split])

    def section(self, name: str) -> dict[str, Any]:
        """A config section as a plain dict (for Snakemake params and MLflow params)."""
        return dataclasses.asdict(getattr(self, name))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@cache
def schema() -> dict[str, Any]:
    """The config JSON schema (with defaults)."""
    text = (resources.files("trackgnn") / "schemas" / "config.schema.yaml").read_text()
    return yaml.safe_load(text)


def _fill_defaults(instance: Any, node: dict[str, Any]) -> Any:
    """Recursively insert schema defaults for absent object properties."""
    if not isinstance(instance, dict) or node.get("type") != "object":
        return instance
    for key, sub in node.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            instance[key] = _fill_defaults(instance[key], sub)
    return instance


def _error_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def _first_non_finite(node: Any, path: str = "") -> tuple[str, float] | None:
    """The key path and value of the first NaN or infinite number in a config tree, if any.

    JSON Schema's ``minimum``/``maximum`` compare false against NaN, so the schema alone lets
    ``.nan`` through (and ``.inf`` wherever there is no maximum).
    """
    if isinstance(node, float) and not math.isfinite(node):
        return path, node
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return None
    for key, value in items:
        found = _first_non_finite(value, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


def validate_config(raw: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Fill defaults and validate; return the resolved dict or raise ConfigError naming the key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the config must be a mapping of keys to values")
    resolved = _fill_defaults(copy.deepcopy(raw), schema())
    non_finite = _first_non_finite(resolved)
    if non_finite is not None:
        key, value = non_finite
        raise ConfigError(f"{source}: key '{key}': {value} is not a finite number")
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(resolved), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        if err.validator == "additionalProperties":
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            where = _error_path(err)
            key = ".".join([*([] if where == "<top level>" else [where]), extra[0]])
            raise ConfigError(f"{source}: unknown key '{key}'")
        if err.validator == "pattern" and "description" in err.schema:
            raise ConfigError(
                f"{source}: key '{_error_path(err)}': {err.instance!r} is not allowed "
                f"({err.schema['description']})"
            )
        raise ConfigError(f"{source}: key '{_error_path(err)}': {err.message}")
    if resolved["data"]["source"] == "trackml" and not resolved["data"]["trackml_dir"]:
        raise ConfigError(
            f"{source}: key 'data.trackml_dir' is required when data.source is trackml"
        )
    return resolved


_SECTION_TYPES: dict[str, type] = {
    "data": DataConfig,
    "simulate": SimulateConfig,
    "embedding": EmbeddingConfig,
    "graph": GraphConfig,
    "filter": FilterConfig,
    "tracks": TracksConfig,
    "evaluation": EvaluationConfig,
    "studies": StudiesConfig,
    "reconstruct": ReconstructConfig,
    "workflow": WorkflowConfig,
    "mlflow": MlflowConfig,
}


def config_from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate a raw config mapping and return the typed :class:`Config`."""
    resolved = validate_config(raw, source)
    sections = {name: cls(**resolved[name]) for name, cls in _SECTION_TYPES.items()}
    gnn = dict(resolved["gnn"])
    gnn["shadow"] = ShadowConfig(**gnn["shadow"])
    top = {k: resolved[k] for k in ("run", "results_dir", "seed", "device", "threads")}
    return Config(**top, **sections, gnn=GNNConfig(**gnn))


def load_config(path: str | Path) -> Config:
    """Read a YAML config file, validate it and return the typed :class:`Config`."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    return config_from_dict(raw, str(path))


def _shaping_leaves(node: Any, path: str, own: str | None, training: str) -> Iterator[str]:
    """Dotted paths of the leaf fields below ``node`` (a config dataclass) that shape ``training``;
    ``own`` is the training whose section ``node`` lies in, if any."""
    for field in dataclasses.fields(node):
        name = f"{path}.{field.name}" if path else field.name
        value = getattr(node, field.name)
        if dataclasses.is_dataclass(value):
            yield from _shaping_leaves(value, name, own or _own_training(name), training)
        elif training in field.metadata.get(TRAINS, (own,) if own else ()):
            yield name


def _own_training(section: str) -> str | None:
    return section if section in TRAININGS else None


def training_settings(cfg: Config, training: str) -> dict[str, Any]:
    """Every setting that shapes the weights ``training`` learns: ``{"embedding.lr": ...}``.

    The one declaration of what a training depends on in the config (see ``_trains``): the
    training rule's params (a change reruns it) and the resume key of its checkpoints (a killed
    training continues only under the same settings) are both made from it. Ordered by key.
    """
    if training not in TRAININGS:
        raise ValueError(f"no training {training!r}; one of {', '.join(TRAININGS)}")
    paths = sorted(_shaping_leaves(cfg, "", None, training))
    return {path: _lookup(cfg, path) for path in paths}


def _lookup(cfg: Config, path: str) -> Any:
    value: Any = cfg
    for part in path.split("."):
        value = getattr(value, part)
    return value


def section_hash(section: dict[str, Any]) -> str:
    """Short stable hash of a config (section) for tags and cache keys."""
    canonical = json.dumps(section, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]
