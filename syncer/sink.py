"""One Aim run for one MLflow run: open it under a deterministic hash, write points with
MLflow's timestamps, convert artifacts, set metadata and times, close. Aim's internals are
touched only through `syncer.aim`."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from typing import Any, cast

from .mapping import MappedMetric, RunMeta
from .sources.records import Floats, Ints

log = logging.getLogger(__name__)

SMALL_CHUNK = 64  # a chunk of at most this many points in lists is checked without numpy


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


def winner_index(steps: Any, timestamps: Any) -> Any:
    """`winners` for numpy arrays: the indexes of the points kept, in log order; None when every
    step is distinct (all are kept)."""
    import numpy as np

    n = len(steps)
    if n < 2 or bool(np.all(steps[1:] > steps[:-1])):
        return None
    order = np.lexsort((np.arange(n), timestamps, steps))  # by step, then time, then log order
    s = steps[order]
    last = np.ones(n, dtype=bool)
    last[:-1] = s[1:] != s[:-1]  # the last of each step: the latest, and of those the last logged
    keep = order[last]
    if len(keep) == n:
        return None
    keep.sort()
    return keep


class RunSink:
    """One Aim run, open for writing. Raises syncer.errors.RunLocked when another writer holds it."""

    def __init__(self, repo: Any, aim_hash: str, experiment: str, *, writer: Any = None):
        """`writer`: the run's `AimRunWriter`, opened by the caller (a batch opens them ahead)."""
        if writer is None:
            from .aim import AimRunWriter  # imported late: `syncer --help` should not load Aim

            writer = AimRunWriter.open(repo, aim_hash, experiment=experiment)
        self.hash = aim_hash
        self.writer = writer
        self.points = 0  # points written through it

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

    def write_points(self, mapped: MappedMetric, steps: Ints, values: Floats, timestamps_ms: Ints) -> tuple[int, int]:
        """Write points (MLflow timestamps in ms; lists or numpy arrays). Returns (distinct steps
        written, points skipped because Aim cannot key their step: beyond +-2**53)."""
        from .aim import MAX_ABS_STEP

        n = len(steps)
        if isinstance(steps, list) and n <= SMALL_CHUNK:  # a few points: numpy's fixed costs outweigh them
            return self._write_few(mapped, steps, cast(list[float], values), cast(list[int], timestamps_ms))
        import numpy as np

        try:
            st = np.asarray(steps, dtype=np.int64)
        except OverflowError:  # a step beyond int64 (a file store's line): Python ints, kept apart
            keep = [i for i, s in enumerate(steps) if -MAX_ABS_STEP <= s <= MAX_ABS_STEP]
            st = np.asarray([steps[i] for i in keep], dtype=np.int64)
            values = [float(values[i]) for i in keep]
            timestamps_ms = [int(timestamps_ms[i]) for i in keep]
        vals = np.asarray(values, dtype=np.float64)
        ts = np.asarray(timestamps_ms, dtype=np.int64)
        ok = (st >= -MAX_ABS_STEP) & (st <= MAX_ABS_STEP)
        if not ok.all():
            st, vals, ts = st[ok], vals[ok], ts[ok]
        skipped = n - len(st)
        if not len(st):
            return 0, skipped
        idx = winner_index(st, ts)
        if idx is not None:
            st, vals, ts = st[idx], vals[idx], ts[idx]
        self.writer.write_points(mapped.aim_name, mapped.context, st, vals, ts / 1000.0)
        self.points += len(st)
        return len(st), skipped

    def _write_few(
        self, mapped: MappedMetric, steps: list[int], values: list[float], timestamps_ms: list[int]
    ) -> tuple[int, int]:
        """`write_points` for a short chunk in lists, without numpy: the same points written."""
        from .aim import MAX_ABS_STEP

        n = len(steps)
        if not n:
            return 0, 0
        if not (min(steps) >= -MAX_ABS_STEP and max(steps) <= MAX_ABS_STEP):
            keep = [i for i, s in enumerate(steps) if -MAX_ABS_STEP <= s <= MAX_ABS_STEP]
            steps = [steps[i] for i in keep]
            values = [values[i] for i in keep]
            timestamps_ms = [timestamps_ms[i] for i in keep]
        skipped = n - len(steps)
        if not steps:
            return 0, skipped
        if len(set(steps)) != len(steps):
            steps, values, timestamps_ms = winners(steps, values, timestamps_ms)
        self.writer.write_points(mapped.aim_name, mapped.context, steps, values, [t / 1000.0 for t in timestamps_ms])
        self.points += len(steps)
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
