"""Helpers the Snakefile uses to plan the workflow: event lists and file names per stage.

Kept in the package (not inline in the Snakefile) so the plan is unit-testable and the rules
stay thin.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import yaml

from trackgnn.atomic import write_text_atomic
from trackgnn.config import Config, section_hash
from trackgnn.errors import ConfigError
from trackgnn.io import event_prefix, find_event_file, list_event_ids, select_event_ids

SPLITS = ("train", "val", "test")


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
        if split == "all":
            return [e for name in SPLITS for e in self.event_ids(name)]
        return [f"{i:09d}" for i in self.split_ids[split]]

    @cached_property
    def split_ids(self) -> dict[str, list[int]]:
        """The events of each split: ``data.events`` when given, else consecutive counted ids.

        With ``data.source: trackml`` every event must be in the directory. Raises ConfigError
        (an event in two splits, a missing event) or InputError (no such directory).
        """
        d = self.cfg.data
        available = list_event_ids(d.trackml_dir) if d.source == "trackml" else None
        if d.events is not None:
            splits = {
                name: select_event_ids(d.events[name], available, d.trackml_dir) for name in SPLITS
            }
        else:
            splits = {name: self.cfg.event_ids(name) for name in SPLITS}  # type: ignore[arg-type]
        seen: dict[int, str] = {}
        for name in SPLITS:
            for event_id in splits[name]:
                if event_id in seen:
                    raise ConfigError(
                        f"data: event {event_id:09d} is in both the {seen[event_id]} and the "
                        f"{name} split"
                    )
                seen[event_id] = name
        if available is not None:
            known = set(available)
            missing = [i for i in seen if i not in known]
            if missing:
                raise ConfigError(
                    f"{d.trackml_dir}: no TrackML event {missing[0]:09d} "
                    f"({len(missing)} of the {len(seen)} configured events missing, "
                    f"{len(available)} events found)"
                )
        return splits

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

    def chunks(self, split: str) -> list[list[str]]:
        """The events of a split in jobs of at most ``workflow.events_per_job`` events.

        Chunks are blocks of ids (``event_id // events_per_job``), not positions in the list:
        adding or removing an event changes only its own block's job, so the other chunks'
        outputs stay up to date. Ids in a block keep the split's order.
        """
        size = self.cfg.workflow.events_per_job
        blocks: dict[int, list[str]] = {}
        for event in self.event_ids(split):
            blocks.setdefault(int(event) // size, []).append(event)
        return list(blocks.values())
