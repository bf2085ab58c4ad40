"""Helpers the Snakefile uses to plan the workflow: event lists and file names per stage.

Kept in the package (not inline in the Snakefile) so the plan is unit-testable and the rules
stay thin.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from trackgnn.atomic import write_text_atomic
from trackgnn.config import Config, section_hash
from trackgnn.io import event_prefix, find_event_file, list_event_ids


class WorkflowContext:
    """Event ids, split and file paths of one configured run."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.run_dir = cfg.run_dir

    def resolved_config_path(self) -> Path:
        """Write (once) and return the resolved config, named by its content hash."""
        resolved = self.cfg.to_dict()
        path = self.run_dir / "configs" / f"config-{section_hash(resolved)}.yaml"
        if not path.exists():
            write_text_atomic(path, yaml.safe_dump(resolved, sort_keys=False))
        return path

    def event_ids(self, split: str) -> list[str]:
        """Nine-digit event ids of a split (``train``, ``val``, ``test``, ``all``)."""
        return [f"{i:09d}" for i in self.cfg.event_ids(split)]  # type: ignore[arg-type]

    def check_trackml_events(self) -> None:
        """For ``data.source: trackml``: every configured event must exist in the directory."""
        from trackgnn.errors import ConfigError

        directory = self.cfg.data.trackml_dir
        available = set(list_event_ids(directory)) if directory else set()
        missing = [i for i in self.cfg.event_ids("all") if i not in available]
        if missing:
            raise ConfigError(
                f"{directory}: no TrackML event {missing[0]:09d} (configured ids "
                f"{self.cfg.event_ids('all')[0]}..{self.cfg.event_ids('all')[-1]}, "
                f"{len(available)} events found)"
            )

    def event_prefix(self, event: str) -> Path:
        """The TrackML file prefix of an event (simulated or the user's TrackML directory)."""
        if self.cfg.data.source == "simulate":
            return event_prefix(self.run_dir / "events", int(event))
        return event_prefix(self.cfg.data.trackml_dir, int(event))

    def event_files(self, event: str) -> list[str]:
        """The event's existing TrackML files (for rule inputs)."""
        prefix = self.event_prefix(event)
        if self.cfg.data.source == "simulate":
            return [f"{prefix}-{kind}.csv" for kind in ("hits", "cells", "particles", "truth")]
        files = [find_event_file(prefix, kind) for kind in ("hits", "cells", "particles", "truth")]
        return [str(f) for f in files if f is not None]

    def stage_files(self, stage: str, split: str, ext: str = "pt") -> list[str]:
        return [f"{self.run_dir}/{stage}/event{e}.{ext}" for e in self.event_ids(split)]
