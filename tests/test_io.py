"""TrackML reader: every bad input gives one clear line naming the file and problem, and nothing
is written by the stage that reads it."""

from __future__ import annotations

import gzip
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trackgnn.errors import InputError
from trackgnn.io import Event, read_detectors, read_event, write_event


def small_event(event_id: int = 1000) -> Event:
    """A valid hand-made event: 6 hits, 2 particles plus one noise hit."""
    hits = pd.DataFrame(
        {
            "hit_id": np.arange(1, 7, dtype=np.int32),
            "x": np.array([30, 70, 115, 0, 0, 50], dtype=np.float32),
            "y": np.array([1, 2, 3, 32, 72, 50], dtype=np.float32),
            "z": np.array([5, 10, 15, -5, -10, 0], dtype=np.float32),
            "volume_id": np.full(6, 8, dtype=np.int32),
            "layer_id": np.array([2, 4, 6, 2, 4, 6], dtype=np.int32),
            "module_id": np.array([1, 1, 1, 2, 2, 3], dtype=np.int32),
        }
    )
    cells = pd.DataFrame(
        {
            "hit_id": np.array([1, 1, 2, 3, 4, 5, 6], dtype=np.int32),
            "ch0": np.array([10, 11, 5, 7, 1, 2, 3], dtype=np.int32),
            "ch1": np.array([3, 3, 4, 4, 9, 9, 9], dtype=np.int32),
            "value": np.array([0.1, 0.05, 0.2, 0.2, 0.15, 0.15, 0.15], dtype=np.float32),
        }
    )
    particles = pd.DataFrame(
        {
            "particle_id": np.array([4503599627370496, 4503668346847232], dtype=np.int64),
            "particle_type": np.array([211, -211], dtype=np.int32),
            "vx": np.zeros(2, np.float32),
            "vy": np.zeros(2, np.float32),
            "vz": np.zeros(2, np.float32),
            "px": np.array([1.0, 0.0], np.float32),
            "py": np.array([0.0, 0.6], np.float32),
            "pz": np.array([0.1, -0.1], np.float32),
            "q": np.array([1, -1], np.int32),
            "nhits": np.array([3, 2], np.int32),
        }
    )
    pid = np.array([4503599627370496] * 3 + [4503668346847232] * 2 + [0], dtype=np.int64)
    truth = pd.DataFrame(
        {
            "hit_id": hits["hit_id"],
            "particle_id": pid,
            "tx": hits["x"],
            "ty": hits["y"],
            "tz": hits["z"],
            "tpx": np.ones(6, np.float32),
            "tpy": np.zeros(6, np.float32),
            "tpz": np.zeros(6, np.float32),
            "weight": np.array([0.2, 0.2, 0.2, 0.2, 0.2, 0.0], np.float32),
        }
    )
    return Event(event_id, hits, cells, particles, truth)


@pytest.fixture
def event_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "events"
    write_event(small_event(), directory / "event000001000")
    return directory


def test_round_trip_keeps_values_and_dtypes(event_dir: Path) -> None:
    event = read_event(event_dir / "event000001000")
    original = small_event()
    for kind in ("hits", "cells", "particles", "truth"):
        got, want = getattr(event, kind), getattr(original, kind)
        assert list(got.dtypes.astype(str)) == list(want.dtypes.astype(str)), kind
        pd.testing.assert_frame_equal(got.reset_index(drop=True), want, check_exact=False)


def test_optional_files_absent_for_inference(event_dir: Path) -> None:
    for kind in ("cells", "particles", "truth"):
        (event_dir / f"event000001000-{kind}.csv").unlink()
    event = read_event(event_dir / "event000001000")
    assert event.cells is None and event.particles is None and event.truth is None
    with pytest.raises(InputError, match=r"-(particles|truth)\.csv: file does not exist"):
        read_event(event_dir / "event000001000", require_truth=True)


def test_gzip_event_is_read(tmp_path: Path) -> None:
    write_event(small_event(), tmp_path / "event000001000", compress=True)
    event = read_event(tmp_path / "event000001000")
    assert len(event.hits) == 6 and len(event.cells) == 7


def test_write_is_deterministic(tmp_path: Path) -> None:
    write_event(small_event(), tmp_path / "a" / "event000001000")
    write_event(small_event(), tmp_path / "b" / "event000001000")
    for kind in ("hits", "cells", "particles", "truth"):
        a = (tmp_path / "a" / f"event000001000-{kind}.csv").read_bytes()
        assert a == (tmp_path / "b" / f"event000001000-{kind}.csv").read_bytes()


def _edit_csv(path: Path, edit) -> None:
    frame = pd.read_csv(path)
    frame = edit(frame)
    frame.to_csv(path, index=False)


BAD_INPUTS = {
    "missing file": (
        lambda d: (d / "event000001000-hits.csv").unlink(),
        "hits.csv: file does not exist",
    ),
    "missing column": (
        lambda d: _edit_csv(d / "event000001000-hits.csv", lambda f: f.drop(columns=["z"])),
        "hits.csv: missing column(s) z",
    ),
    "wrong dtype": (
        lambda d: _edit_csv(
            d / "event000001000-hits.csv", lambda f: f.assign(layer_id=f.layer_id.astype(str) + "a")
        ),
        "hits.csv: column layer_id must be integer (int32); line 2 has '2a'",
    ),
    "nan coordinate": (
        lambda d: _edit_csv(
            d / "event000001000-hits.csv", lambda f: f.assign(x=f.x.where(f.hit_id != 3, np.nan))
        ),
        "hits.csv: column x line 4 has nan (not finite)",
    ),
    "infinite coordinate": (
        lambda d: _edit_csv(
            d / "event000001000-hits.csv", lambda f: f.assign(y=f.y.where(f.hit_id != 2, np.inf))
        ),
        "hits.csv: column y line 3 has inf (not finite)",
    ),
    "duplicate hit id": (
        lambda d: _edit_csv(
            d / "event000001000-hits.csv", lambda f: f.assign(hit_id=f.hit_id.replace(5, 4))
        ),
        "hits.csv: line 6: duplicate hit_id 4",
    ),
    "truth hit unknown": (
        lambda d: _edit_csv(
            d / "event000001000-truth.csv", lambda f: f.assign(hit_id=f.hit_id.replace(6, 99))
        ),
        "truth.csv: line 7: hit_id 99 is not in the hits file",
    ),
    "cells hit unknown": (
        lambda d: _edit_csv(
            d / "event000001000-cells.csv", lambda f: f.assign(hit_id=f.hit_id.replace(2, 77))
        ),
        "cells.csv: line 4: hit_id 77 is not in the hits file",
    ),
    "coordinate beyond float32": (
        lambda d: _edit_csv(
            d / "event000001000-hits.csv",
            lambda f: f.assign(
                x=[1e300 if h == 2 else x for h, x in zip(f.hit_id, f.x, strict=True)]
            ),
        ),
        "hits.csv: column x line 3 has 1e+300, outside the float32 range",
    ),
    "directory as hits file": (
        lambda d: _replace_by_directory(d / "event000001000-hits.csv"),
        "hits.csv: is a directory, not a CSV file",
    ),
    "empty event": (
        lambda d: _edit_csv(d / "event000001000-hits.csv", lambda f: f.iloc[:0]),
        "hits.csv: event has no hits",
    ),
    "truncated gzip": (
        lambda d: _truncate_gzip(d / "event000001000-hits.csv"),
        "hits.csv.gz: cannot be decompressed",
    ),
}


def _replace_by_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _truncate_gzip(path: Path) -> None:
    data = gzip.compress(path.read_bytes())
    path.unlink()
    path.with_suffix(".csv.gz").write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_reader_error(event_dir: Path, case: str) -> None:
    corrupt, message = BAD_INPUTS[case]
    corrupt(event_dir)
    with warnings.catch_warnings(), pytest.raises(InputError) as info:
        warnings.simplefilter("error")  # the one line is all the user sees: no warning first
        read_event(event_dir / "event000001000")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("case", ["truncated gzip", "nan coordinate", "truth hit unknown"])
def test_bad_input_cli_one_line_and_no_output(event_dir: Path, tmp_path: Path, case: str) -> None:
    corrupt, message = BAD_INPUTS[case]
    corrupt(event_dir)
    out_dir = tmp_path / "features"
    out_dir.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "trackgnn.cli",
            "features",
            "--event",
            str(event_dir / "event000001000"),
            "--output",
            str(out_dir / "event000001000.pt"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0] and "Traceback" not in result.stderr
    assert list(out_dir.iterdir()) == []


def test_detectors_ignores_leading_index_column(tmp_path: Path) -> None:
    detectors = read_detectors()
    assert len(detectors) == 18728
    assert detectors.columns[0] == "volume_id"
    plain = tmp_path / "detectors.csv"
    detectors.to_csv(plain, index=False)
    assert read_detectors(plain).equals(detectors)


def test_detectors_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "detectors.csv"
    read_detectors().drop(columns=["pitch_v"]).head(5).to_csv(path, index=False)
    with pytest.raises(InputError, match=r"detectors.csv: missing column\(s\) pitch_v"):
        read_detectors(path)


def test_copy_of_packaged_detectors_is_the_challenge_file() -> None:
    from trackgnn.io import default_detectors_path

    shared = Path(__file__).parents[2] / "shared" / "data" / "trackml" / "detectors.csv.gz"
    if not shared.exists():
        pytest.skip("shared TrackML detectors file not present on this machine")
    assert default_detectors_path().read_bytes() == shared.read_bytes()
