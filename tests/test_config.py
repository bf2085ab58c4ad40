"""Config validation at the edge: defaults from the schema, errors that name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trackgnn.config import config_from_dict, load_config
from trackgnn.errors import ConfigError, TrackGNNError
from trackgnn.workflow import WorkflowContext

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


def _trackml_dir(directory: Path, ids: list[int]) -> Path:
    directory.mkdir()
    for event_id in ids:  # gzipped, as the TrackML release ships them (only names are listed)
        (directory / f"event{event_id:09d}-hits.csv.gz").write_bytes(b"")
    return directory


def test_explicit_events_select_ids_and_ranges_of_the_directory(tmp_path: Path) -> None:
    trackml = _trackml_dir(tmp_path / "trackml", [1000, 1001, 1005, 1007, 2000, 2003])
    events = {"train": ["1000-1006"], "val": [1007], "test": ["1990-2010"]}
    cfg = config_from_dict(
        {"data": {"source": "trackml", "trackml_dir": str(trackml), "events": events}}
    )
    context = WorkflowContext(cfg)
    assert context.split_ids == {
        "train": [1000, 1001, 1005],
        "val": [1007],
        "test": [2000, 2003],
    }
    assert context.event_ids("all")[-1] == "000002003"
    # Events still to be simulated: every id of a range.
    simulated = WorkflowContext(config_from_dict({"data": {"events": events}}))
    assert simulated.split_ids["train"] == list(range(1000, 1007))


def test_events_are_chunked_by_id_block_so_a_new_event_changes_one_chunk() -> None:
    def chunks(events: dict, per_job: int, split: str = "all") -> list[list[int]]:
        cfg = config_from_dict(
            {"data": {"events": events}, "workflow": {"events_per_job": per_job}}
        )
        return [[int(e) for e in chunk] for chunk in WorkflowContext(cfg).chunks(split)]

    events = {"train": ["1000-1004"], "val": [1005], "test": [1010, 1012]}
    assert chunks(events, 1) == [[i] for i in (1000, 1001, 1002, 1003, 1004, 1005, 1010, 1012)]
    # Blocks of ids (id // 4) across the splits; a gap leaves a block short.
    before = chunks(events, 4)
    assert before == [[1000, 1001, 1002, 1003], [1004, 1005], [1010], [1012]]
    assert chunks(events, 4, "test") == [[1010], [1012]]
    # A new event joins its own block; every other chunk stays as it was.
    after = chunks({**events, "test": [1010, 1011, 1012]}, 4)
    assert after == [[1000, 1001, 1002, 1003], [1004, 1005], [1010, 1011], [1012]]


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ({"train": ["1000-1001"], "val": [1001], "test": [2000]}, "event 000001001 is in both"),
        ({"train": [1000], "val": [1002], "test": [2000]}, "no event 000001002 here"),
        ({"train": [1000], "val": ["1002-1004"], "test": [2000]}, "no event in 1002-1004 here"),
    ],
    ids=["overlap", "missing-id", "empty-range"],
)
def test_bad_event_selection_names_the_problem(tmp_path: Path, events: dict, message: str) -> None:
    trackml = _trackml_dir(tmp_path / "trackml", [1000, 1001, 2000])
    cfg = config_from_dict(
        {"data": {"source": "trackml", "trackml_dir": str(trackml), "events": events}}
    )
    with pytest.raises(TrackGNNError, match=message):
        _ = WorkflowContext(cfg).split_ids


def test_counted_events_missing_from_the_directory_are_named(tmp_path: Path) -> None:
    trackml = _trackml_dir(tmp_path / "trackml", [1000, 1001])
    cfg = config_from_dict({"data": {"source": "trackml", "trackml_dir": str(trackml)}})
    with pytest.raises(ConfigError, match=r"no TrackML event 000001002 \(10 of the 12"):
        _ = WorkflowContext(cfg).split_ids


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"gnn": {"hiden": 3}}, "unknown key 'gnn.hiden'"),
        ({"gnn": {"shadow": {"fanout": 0}}}, "key 'gnn.shadow.fanout'"),
        ({"filter": {"cut": 1.5}}, "key 'filter.cut'"),
        ({"device": "tpu"}, "key 'device'"),
        ({"data": {"source": "trackml"}}, "data.trackml_dir"),
        ({"gnn": {"val_every": 0}}, "key 'gnn.val_every'"),
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
