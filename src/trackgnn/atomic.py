"""Atomic file output: write to a temporary name in the same directory, then rename.

A job killed mid-write leaves at most a ``.tmp-*`` file, never a half file under the final name.
An output that cannot be created (its parent is a file, a read-only directory) is an
:class:`~trackgnn.errors.OutputError` naming the path, raised before anything is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from trackgnn.errors import OutputError


def ensure_directory(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) if needed, or raise OutputError naming it."""
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(directory, "cannot be created: it or a parent path is a file") from None
    except PermissionError:
        raise OutputError(directory, "cannot be created: permission denied") from None
    except OSError as err:
        raise OutputError(directory, f"cannot be created ({err.strerror or err})") from None
    return directory


def _temporary_beside(final: Path) -> Path:
    """Create an empty temporary file beside ``final`` (same directory, same suffixes)."""
    ensure_directory(final.parent)
    try:
        suffix = "".join(final.suffixes)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".tmp-{final.name}-", suffix=suffix, dir=final.parent
        )
    except PermissionError:
        raise OutputError(final, "cannot be written: permission denied") from None
    except OSError as err:
        raise OutputError(final, f"cannot be written ({err.strerror or err})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600; give the final file the usual permissions under the user's umask.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return tmp


@contextlib.contextmanager
def atomic_paths(paths: Sequence[str | os.PathLike[str]]) -> Iterator[list[Path]]:
    """Yield temporary paths beside ``paths``; on success rename them, in the given order.

    On an exception every temporary file is removed and no final path is touched. Every
    temporary is created before the caller writes anything, so an output that cannot be
    created fails before any work is done.
    """
    finals = [Path(p) for p in paths]
    temporaries: list[Path] = []
    try:
        for final in finals:
            temporaries.append(_temporary_beside(final))
        yield temporaries
        for tmp, final in zip(temporaries, finals, strict=True):
            os.replace(tmp, final)
    except BaseException:
        for tmp in temporaries:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left untouched.
    The temporary name keeps the final suffix(es) so writers that infer the format
    from the extension (pandas ``.csv.gz``) still work.
    """
    with atomic_paths([path]) as (tmp,):
        yield tmp


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
