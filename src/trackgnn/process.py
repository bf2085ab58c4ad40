"""What every stage reports about its own process: peak resident memory."""

from __future__ import annotations

import resource
import sys


def peak_rss_mb() -> float:
    """The process's peak resident memory so far (MiB); ``ru_maxrss`` is KiB on Linux, bytes on
    macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
