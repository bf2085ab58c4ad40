"""Atomic file output: write to a temporary name in the same directory, then rename.

A job killed mid-write leaves at most a ``.tmp-*`` file, never a half file under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left untouched.
    The temporary name keeps the final suffix(es) so writers that infer the format
    from the extension (pandas ``.csv.gz``) still work.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(final.suffixes)
    fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-{final.name}-", suffix=suffix, dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600; give the final file the usual permissions under the user's umask.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
