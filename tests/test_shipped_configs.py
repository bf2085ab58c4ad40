"""Every configuration shipped in ``config/`` trains: one short training of each stage from it.

As gnn_tracking's tests do for its configs: a config whose keys, sizes or modes no longer fit the
code fails here, not in the first hours of a user's run. The events are small synthetic ones and
every stage trains one epoch (the GNN one step); the device is the CPU, the GNN one rank, eager and
in fp32, since CUDA, the data-parallel ranks, autocast and ``torch.compile`` (GPU speed flags, tens
of seconds of compiling) have their own tests and benchmarks; ShaDow minibatches hold at most 64
roots (a GPU config's 1024 subgraphs of these dense toy events take 10 GB on a CPU). Everything
else is the file's own.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from trackgnn.config import config_from_dict
from trackgnn.models.checkpoint import read_checkpoint
from trackgnn.training.embedding import train_embedding
from trackgnn.training.filter import train_filter
from trackgnn.training.gnn import train_gnn

from .test_embedding import write_synthetic_events
from .test_filter import write_graphs

CONFIGS = sorted((Path(__file__).parents[1] / "config").glob("*.yaml"))


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    directory = tmp_path_factory.mktemp("events")
    features = write_synthetic_events(directory / "features", [1, 2, 3])
    graphs = write_graphs(directory / "graphs", [1, 2, 3])
    return {"features": list(map(str, features)), "graphs": list(map(str, graphs))}


def _finite_weights(path: Path, kind: str) -> bool:
    state = read_checkpoint(path, kind)["state_dict"]
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_config_trains_every_stage(path: Path, events, tmp_path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    raw.update(results_dir=str(tmp_path / "results"), device="cpu")
    for stage in ("embedding", "filter", "gnn"):
        raw.setdefault(stage, {})["epochs"] = 1
    gnn = raw["gnn"]
    gnn.update(world_size=1, amp=False, compile=False)
    shadow = gnn.setdefault("shadow", {})
    shadow["batch_size"] = min(shadow.get("batch_size", 64), 64)
    cfg = config_from_dict(raw, str(path))
    models = tmp_path / "models"
    features, graphs = events["features"], events["graphs"]

    train_embedding(cfg, features[:2], features[2:], models / "embedding.ckpt")
    train_filter(cfg, graphs[:2], graphs[2:], models / "filter.ckpt")
    train_gnn(cfg, graphs[:2], graphs[2:], models / "gnn.ckpt", max_steps=1)
    for kind in ("embedding", "filter", "gnn"):
        assert _finite_weights(models / f"{kind}.ckpt", kind), kind
