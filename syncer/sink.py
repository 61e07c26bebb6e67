"""One Aim run for one MLflow run: open it under a deterministic hash, write points with
MLflow's timestamps, convert artifacts, set metadata and times, close. Aim's internals are
touched only through `syncer.aim`."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from typing import Any

from .mapping import MappedMetric, RunMeta

log = logging.getLogger(__name__)


def aim_run_hash(run_id: str) -> str:
    """The Aim run hash of an MLflow run: the same on every sync, on every machine."""
    return hashlib.sha256(f"mlflow-run:{run_id}".encode()).hexdigest()[:24]


def winners(steps: list[int], values: list[float], timestamps: list[int]) -> tuple[list[int], list[float], list[int]]:
    """One point per step: the later by timestamp wins (on a tie, the later logged)."""
    best: dict[int, int] = {}
    for i, (s, t) in enumerate(zip(steps, timestamps)):
        j = best.get(s)
        if j is None or t >= timestamps[j]:
            best[s] = i
    if len(best) == len(steps):
        return steps, values, timestamps
    idx = sorted(best.values())
    return [steps[i] for i in idx], [values[i] for i in idx], [timestamps[i] for i in idx]


class RunSink:
    """One Aim run, open for writing. Raises syncer.errors.RunLocked when another writer holds it."""

    def __init__(self, repo: Any, aim_hash: str, experiment: str):
        from .aim import AimRunWriter  # imported late: `syncer --help` should not load Aim

        self.hash = aim_hash
        self.writer = AimRunWriter.open(repo, aim_hash, experiment=experiment)

    def set_info(self, meta: RunMeta) -> None:
        self.writer.set_info(
            name=meta.name,
            description=meta.description,
            params=meta.params,
            labels=meta.labels,
            archived=meta.archived,
            note=meta.note,
        )

    def set_times(self, meta: RunMeta) -> None:
        self.writer.set_times(created_at=meta.created_at, ended_at=meta.ended_at, active=meta.active)

    def flush(self) -> None:
        """Make what was written durable before the caller commits its cursors."""
        self.writer.flush()

    def write_points(
        self, mapped: MappedMetric, steps: list[int], values: list[float], timestamps_ms: list[int]
    ) -> tuple[int, int]:
        """Write points (MLflow timestamps in ms). Returns (distinct steps written, points
        skipped because Aim cannot key their step: beyond +-2**53)."""
        from .aim import MAX_ABS_STEP

        skipped = 0
        if any(not -MAX_ABS_STEP <= st <= MAX_ABS_STEP for st in steps):
            keep = [i for i, st in enumerate(steps) if -MAX_ABS_STEP <= st <= MAX_ABS_STEP]
            skipped = len(steps) - len(keep)
            steps = [steps[i] for i in keep]
            values = [values[i] for i in keep]
            timestamps_ms = [timestamps_ms[i] for i in keep]
            if not steps:
                return 0, skipped
        steps, values, timestamps_ms = winners(steps, values, timestamps_ms)
        self.writer.write_points(mapped.aim_name, mapped.context, steps, values, [t / 1000.0 for t in timestamps_ms])
        return len(steps), skipped

    def write_media(self, name: str, context: dict[str, Any], step: int, timestamp: float, obj: Any) -> None:
        """One step of a media sequence (an aim.Image / Text / Audio / Figure, or a list of one
        kind), at `timestamp` (seconds); writing the step again replaces it."""
        self.writer.write_objects(name, context, step, timestamp, obj)

    def close(self, index: bool = True) -> None:
        """Close the run; with index=False it stays invisible until `index_runs` is called."""
        self.writer.close(index=index)


def set_experiment_meta(repo: Any, name: str, description: str | None) -> None:
    if description:
        from .aim import set_experiment_description

        try:
            set_experiment_description(repo, name, description)
        except (sqlite3.Error, AttributeError) as e:  # not fatal: the runs carry the data
            log.warning("could not set the description of Aim experiment %r: %s", name, e)
