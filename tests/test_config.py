"""Config validation at the edge: defaults from the schema, errors that name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trackgnn.config import config_from_dict, load_config
from trackgnn.errors import ConfigError

ROOT = Path(__file__).parents[1]


def test_shipped_configs_validate() -> None:
    for name in ("config.yaml", "smoke.yaml"):
        cfg = load_config(ROOT / "config" / name)
        assert cfg.gnn.shadow.depth >= 1


def test_defaults_come_from_schema() -> None:
    cfg = config_from_dict({})
    assert (cfg.gnn.shadow.depth, cfg.gnn.shadow.fanout, cfg.gnn.shadow.batch_size) == (3, 6, 256)
    assert cfg.gnn.n_iterations == 8 and cfg.filter.chunk_edges == 32768


def test_splits_are_disjoint_consecutive_ranges() -> None:
    cfg = config_from_dict(
        {"data": {"first_event_id": 10, "train_events": 3, "val_events": 2, "test_events": 1}}
    )
    assert cfg.event_ids("train") == [10, 11, 12]
    assert cfg.event_ids("val") == [13, 14] and cfg.event_ids("test") == [15]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"gnn": {"hiden": 3}}, "unknown key 'gnn.hiden'"),
        ({"gnn": {"shadow": {"fanout": 0}}}, "key 'gnn.shadow.fanout'"),
        ({"filter": {"cut": 1.5}}, "key 'filter.cut'"),
        ({"device": "tpu"}, "key 'device'"),
        ({"data": {"source": "trackml"}}, "data.trackml_dir"),
        ([1, 2], "must be a mapping"),
    ],
)
def test_bad_config_names_the_key(raw: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        config_from_dict(raw)


def test_cli_bad_config_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("graph:\n  radius: -1\n")
    result = subprocess.run(
        [sys.executable, "-m", "trackgnn.cli", "check-config", "--config", str(bad)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "bad.yaml: key 'graph.radius'" in result.stderr
