"""TrackML files and per-event tensor files: the project's one reader and writer.

TrackML events are ``event#########-{hits,cells,particles,truth}.csv[.gz]`` with the column
dtypes of the TrackML challenge release. Every reader validates what it reads and raises
:class:`~trackgnn.errors.InputError` naming the file and the problem; every writer writes a
temporary file and renames it, so a killed job never leaves a file that looks complete.
"""

from __future__ import annotations

import gzip
import re
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trackgnn.atomic import atomic_path, atomic_paths
from trackgnn.errors import ConfigError, InputError

HITS_DTYPES: dict[str, str] = {
    "hit_id": "int32",
    "x": "float32",
    "y": "float32",
    "z": "float32",
    "volume_id": "int32",
    "layer_id": "int32",
    "module_id": "int32",
}
CELLS_DTYPES: dict[str, str] = {
    "hit_id": "int32",
    "ch0": "int32",
    "ch1": "int32",
    "value": "float32",
}
PARTICLES_DTYPES: dict[str, str] = {
    "particle_id": "int64",
    "particle_type": "int32",
    "vx": "float32",
    "vy": "float32",
    "vz": "float32",
    "px": "float32",
    "py": "float32",
    "pz": "float32",
    "q": "int32",
    "nhits": "int32",
}
TRUTH_DTYPES: dict[str, str] = {
    "hit_id": "int32",
    "particle_id": "int64",
    "tx": "float32",
    "ty": "float32",
    "tz": "float32",
    "tpx": "float32",
    "tpy": "float32",
    "tpz": "float32",
    "weight": "float32",
}
DETECTORS_DTYPES: dict[str, str] = {
    "volume_id": "int32",
    "layer_id": "int32",
    "module_id": "int32",
    **{
        c: "float64"
        for c in (
            "cx cy cz rot_xu rot_xv rot_xw rot_yu rot_yv rot_yw rot_zu rot_zv rot_zw "
            "module_t module_minhu module_maxhu module_hv pitch_u pitch_v"
        ).split()
    },
}
FILE_DTYPES: dict[str, dict[str, str]] = {
    "hits": HITS_DTYPES,
    "cells": CELLS_DTYPES,
    "particles": PARTICLES_DTYPES,
    "truth": TRUTH_DTYPES,
}
_EVENT_RE = re.compile(r"^event(\d{9})$")


@dataclass
class Event:
    """One TrackML event. ``cells``, ``particles`` and ``truth`` are None when absent."""

    event_id: int
    hits: pd.DataFrame
    cells: pd.DataFrame | None = None
    particles: pd.DataFrame | None = None
    truth: pd.DataFrame | None = None


def event_prefix(directory: str | Path, event_id: int) -> Path:
    """Return ``directory/event#########`` for ``event_id``."""
    return Path(directory) / f"event{event_id:09d}"


def event_id_from_prefix(prefix: str | Path) -> int:
    """Parse the event id out of a prefix like ``DIR/event000001000``."""
    match = _EVENT_RE.match(Path(prefix).name)
    if match is None:
        raise InputError(prefix, "not an event prefix of the form DIR/event#########")
    return int(match.group(1))


def find_event_file(prefix: str | Path, kind: str) -> Path | None:
    """Return the existing ``prefix-kind.csv`` or ``.csv.gz`` file, or None."""
    for suffix in (".csv", ".csv.gz"):
        path = Path(f"{prefix}-{kind}{suffix}")
        if path.exists():
            return path
    return None


_ID_RANGE = re.compile(r"^(\d+)-(\d+)$")


def parse_event_ids(items: Sequence[str | int]) -> list[tuple[int, int]]:
    """Inclusive id ranges from ``1000`` (just that id) and ``1000-1009`` items.

    Raises ConfigError on anything else.
    """
    ranges: list[tuple[int, int]] = []
    for item in items:
        text = str(item).strip()
        match = _ID_RANGE.match(text)
        if match:
            first, last = int(match.group(1)), int(match.group(2))
            if last < first:
                raise ConfigError(f"event range '{text}': the last id is before the first")
            ranges.append((first, last))
        elif text.isdigit():
            ranges.append((int(text), int(text)))
        else:
            raise ConfigError(f"event id '{text}' is neither an id nor a range FIRST-LAST")
    return ranges


def select_event_ids(
    items: Sequence[str | int], available: Sequence[int] | None, directory: str | Path | None
) -> list[int]:
    """Event ids selected by id and range items, in the items' order, without repeats.

    With ``available`` (the events of ``directory``): an id must be among them and a range takes
    those within it (at least one), else InputError naming the directory. Without (events yet to
    be simulated): every id of each range.
    """
    chosen: list[int] = []
    for first, last in parse_event_ids(items):
        if available is None:
            chosen.extend(range(first, last + 1))
            continue
        inside = [i for i in available if first <= i <= last]
        if not inside:
            what = f"event {first:09d}" if first == last else f"event in {first}-{last}"
            ids = f"ids {available[0]}..{available[-1]}" if available else "none"
            raise InputError(
                directory or "events", f"no {what} here ({len(available)} events, {ids})"
            )
        chosen.extend(inside)
    return list(dict.fromkeys(chosen))


def list_event_ids(directory: str | Path) -> list[int]:
    """Event ids of all ``event#########-hits.csv[.gz]`` files in ``directory``, sorted."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(directory, "event directory does not exist")
    ids = set()
    for path in directory.iterdir():
        match = re.match(r"^event(\d{9})-hits\.csv(\.gz)?$", path.name)
        if match:
            ids.add(int(match.group(1)))
    return sorted(ids)


def _read_csv(path: Path, dtypes: dict[str, str], drop_index: bool = False) -> pd.DataFrame:
    """Read a CSV (plain or gzip) and coerce it to ``dtypes``, raising InputError on any problem."""
    if path.is_dir():
        raise InputError(path, "is a directory, not a CSV file")
    try:
        frame = pd.read_csv(path, compression="infer", low_memory=False)
    except FileNotFoundError:
        raise InputError(path, "file does not exist") from None
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as err:
        raise InputError(
            path, f"cannot be decompressed (truncated or corrupt gzip: {err})"
        ) from None
    except pd.errors.EmptyDataError:
        raise InputError(path, "file is empty (no header)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise InputError(path, f"malformed CSV: {str(err).splitlines()[0]}") from None
    if drop_index and len(frame.columns) and str(frame.columns[0]).startswith("Unnamed"):
        frame = frame.drop(columns=frame.columns[0])
    missing = [c for c in dtypes if c not in frame.columns]
    if missing:
        raise InputError(path, f"missing column(s) {', '.join(missing)}")
    frame = frame[list(dtypes)]
    if len(frame) == 0:  # header only: nothing to check, callers decide if empty is an error
        return frame.astype(dtypes)
    for column, dtype in dtypes.items():
        series = frame[column]
        want_int = dtype.startswith("int")
        if want_int:
            if not pd.api.types.is_integer_dtype(series.dtype):
                bad = _first_bad_row(series, integer=True)
                raise InputError(
                    path,
                    f"column {column} must be integer ({dtype}); line {_line(bad)} has "
                    f"{_cell(series.iloc[bad])}",
                )
        elif not pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(
            series.dtype
        ):
            bad = _first_bad_row(series, integer=False)
            raise InputError(
                path,
                f"column {column} must be numeric ({dtype}); line {_line(bad)} has "
                f"{_cell(series.iloc[bad])}",
            )
        info = np.iinfo(dtype) if want_int else None
        if (
            info is not None
            and len(series)
            and (series.min() < info.min or series.max() > info.max)
        ):
            raise InputError(path, f"column {column} has values outside the {dtype} range")
        if not want_int:
            _check_finite(path, frame, (column,))
            too_large = np.abs(series.to_numpy(np.float64)) > np.finfo(dtype).max
            if too_large.any():
                row = int(np.flatnonzero(too_large)[0])
                raise InputError(
                    path,
                    f"column {column} line {_line(row)} has {_cell(series.iloc[row])}, "
                    f"outside the {dtype} range",
                )
        frame[column] = series.astype(dtype)
    return frame


def _cell(value: Any) -> str:
    """A CSV value as the user wrote it: text quoted, numbers plain (no numpy type names)."""
    return repr(value) if isinstance(value, str) else str(value)


def _line(row: int) -> int:
    """The 1-based line of a CSV file that holds 0-based data row ``row`` (the header is line 1),
    as editors and ``head -n`` count."""
    return row + 2


def _first_bad_row(series: pd.Series, integer: bool) -> int:
    """Index (0-based data row) of the first value that is not a number (or not an integer)."""
    numeric = pd.to_numeric(series, errors="coerce")
    bad = numeric.isna() & series.notna() | series.isna()
    if integer:
        bad |= numeric.notna() & (numeric != np.floor(numeric.fillna(0)))
    positions = np.flatnonzero(bad.to_numpy())
    return int(positions[0]) if len(positions) else 0


def _check_finite(path: Path, frame: pd.DataFrame, columns: tuple[str, ...]) -> None:
    for column in columns:
        values = frame[column].to_numpy()
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(
                path, f"column {column} line {_line(row)} has {values[row]} (not finite)"
            )


def read_event(prefix: str | Path, require_truth: bool = False) -> Event:
    """Read and validate a TrackML event.

    Args:
        prefix: path prefix such as ``DIR/event000001000``.
        require_truth: raise if the truth or particles file is absent (training, evaluation).

    Returns:
        An :class:`Event`; ``cells``, ``particles`` and ``truth`` are None where the file is absent.
    """
    prefix = Path(prefix)
    event_id = event_id_from_prefix(prefix)
    frames: dict[str, pd.DataFrame | None] = {}
    for kind, dtypes in FILE_DTYPES.items():
        path = find_event_file(prefix, kind)
        if path is None:
            if kind == "hits" or (require_truth and kind in ("truth", "particles")):
                raise InputError(f"{prefix}-{kind}.csv", "file does not exist (nor .csv.gz)")
            frames[kind] = None
            continue
        frames[kind] = _read_csv(path, dtypes)

    hits = frames["hits"]
    assert hits is not None
    hits_path = find_event_file(prefix, "hits")
    if len(hits) == 0:
        raise InputError(hits_path, "event has no hits")
    duplicated = hits["hit_id"].duplicated().to_numpy()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated)[0])
        raise InputError(
            hits_path, f"line {_line(row)}: duplicate hit_id {hits['hit_id'].iloc[row]}"
        )
    known = hits["hit_id"].to_numpy()
    for kind in ("truth", "cells"):
        frame = frames[kind]
        if frame is None:
            continue
        unknown = ~np.isin(frame["hit_id"].to_numpy(), known)
        if unknown.any():
            row = int(np.flatnonzero(unknown)[0])
            raise InputError(
                find_event_file(prefix, kind),
                f"line {_line(row)}: hit_id {frame['hit_id'].iloc[row]} is not in the hits file",
            )
    truth = frames["truth"]
    if truth is not None:
        dup = truth["hit_id"].duplicated().to_numpy()
        if dup.any():
            row = int(np.flatnonzero(dup)[0])
            raise InputError(
                find_event_file(prefix, "truth"),
                f"line {_line(row)}: hit_id {truth['hit_id'].iloc[row]} appears twice",
            )
    particles = frames["particles"]
    if particles is not None and particles["particle_id"].duplicated().any():
        row = int(np.flatnonzero(particles["particle_id"].duplicated().to_numpy())[0])
        raise InputError(
            find_event_file(prefix, "particles"), f"line {_line(row)}: duplicate particle_id"
        )
    return Event(event_id, hits, frames["cells"], particles, truth)


def write_event(event: Event, prefix: str | Path, compress: bool = False) -> list[Path]:
    """Write the event's present tables as TrackML CSVs; return the paths.

    The files appear together or the event does not appear: every table is written under a
    temporary name first, then they are renamed with the hits file last. Readers find events by
    their hits file (:func:`list_event_ids`), so a writer killed at any point never leaves an
    event that looks whole.
    """
    suffix = ".csv.gz" if compress else ".csv"
    kinds = [kind for kind in FILE_DTYPES if getattr(event, kind) is not None]
    kinds = [kind for kind in kinds if kind != "hits"] + ["hits"]
    paths = [Path(f"{prefix}-{kind}{suffix}") for kind in kinds]
    with atomic_paths(paths) as temporaries:  # renamed in this order, hits last
        for kind, tmp in zip(kinds, temporaries, strict=True):
            # Fixed float format so the same event always gives the same bytes.
            frame = getattr(event, kind)
            frame[list(FILE_DTYPES[kind])].to_csv(tmp, index=False, float_format="%.7g")
    return paths


def default_detectors_path() -> Path:
    """The TrackML ``detectors.csv.gz`` shipped with the package."""
    return Path(str(resources.files("trackgnn") / "data" / "detectors.csv.gz"))


def read_detectors(path: str | Path | None = None) -> pd.DataFrame:
    """Read a TrackML ``detectors.csv[.gz]``, ignoring a leading unnamed index column."""
    path = default_detectors_path() if path is None else Path(path)
    frame = _read_csv(path, DETECTORS_DTYPES, drop_index=True)
    if len(frame) == 0:
        raise InputError(path, "no modules")
    if frame[["volume_id", "layer_id", "module_id"]].duplicated().any():
        raise InputError(path, "duplicate (volume_id, layer_id, module_id)")
    return frame


def save_tensors(tensors: dict[str, Any], path: str | Path) -> None:
    """Save a plain dict of tensors (and scalars/strings) atomically with ``torch.save``."""
    import torch  # imported here: reading CSVs (simulate, features) should not pay for torch

    with atomic_path(path) as tmp, tmp.open("wb") as stream:
        # Through a stream: given a path, torch names the zip archive's folder after the (random)
        # temporary file, and the same tensors would not give the same bytes.
        torch.save(tensors, stream)


def load_tensors(path: str | Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load a per-event tensor file written by :func:`save_tensors` (``weights_only=True``)."""
    import torch

    path = Path(path)
    if not path.exists():
        raise InputError(path, "file does not exist")
    if path.is_dir():
        raise InputError(path, "is a directory, not a tensor file")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles before refusing them
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated/corrupt files
        raise InputError(path, f"not a readable tensor file ({type(err).__name__})") from None
    if not isinstance(data, dict):
        raise InputError(path, "tensor file does not hold a dict")
    missing = [key for key in required if key not in data]
    if missing:
        raise InputError(path, f"missing key(s) {', '.join(missing)}")
    for key, value in data.items():
        if torch.is_tensor(value) and value.is_floating_point() and not value.isfinite().all():
            raise InputError(path, f"tensor {key!r} holds NaN or infinite values")
    return data
