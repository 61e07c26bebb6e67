"""One run, as planned (plan.py): read only the delta -> map -> write -> commit cursors. Knows
nothing about how MLflow is read or Aim is written, nor who runs it (its Aim writers come from
the pool it is given); `rounds.py` drives it over a whole store."""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, cast

from .artifacts import Artifacts
from .config import DEFAULT_MAX_ARTIFACT_BYTES
from .errors import RunLocked, RunUnreadable, Stopped, one_line
from .logs import OnceLog
from .mapping import PARENT_TAG, ContextMapper, LabelPolicy, MappedMetric, run_meta
from .mapping.collisions import resolve
from .mapping.pinned import Pinned, pin
from .plan import RunWork
from .round_stats import RoundStats
from .sink import RunSink, aim_run_hash
from .sink_pool import SinkPool
from .sources import BrokenRun, MetricChunk, RunRecord, Source
from .sources.cursors import Cursor
from .state import State

log = logging.getLogger(__name__)

# a huge run commits its cursors every this many points, so a crash re-sends at most this much
COMMIT_EVERY_POINTS = 200_000


@dataclass
class Options:
    experiments: tuple[str, ...] = ()  # names or ids; empty = all
    artifacts: bool = True
    exclude_artifacts: tuple[str, ...] = ()
    max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES
    mapper: ContextMapper = field(default_factory=ContextMapper)
    tag_labels: bool = True
    labels: LabelPolicy = field(default_factory=LabelPolicy)  # which tags become labels
    # backfill: an --experiment that matches nothing is an error; sync: it may appear later
    strict_experiments: bool = True


class RunPipeline:
    """How one run is synced: the source it is read from, the pool its Aim writer comes from,
    the state its cursors go to."""

    def __init__(
        self,
        source: Source,
        state: State,
        pool: SinkPool,
        options: Options,
        *,
        stop: threading.Event,
        once: OnceLog,
    ):
        self.source = source
        self.state = state
        self.pool = pool
        self.options = options
        self.stop = stop
        self.once = once
        self.state_writes = DeferredWrites(state)
        self.artifacts = Artifacts(
            source,
            cast(State, self.state_writes),
            exclude=options.exclude_artifacts,
            max_bytes=options.max_artifact_bytes,
        )

    def sync(self, work: RunWork, names: dict[str, str], stats: RoundStats) -> None:
        """Sync one run as planned. A run another writer holds is skipped this round."""
        run = work.run
        if isinstance(run, BrokenRun):
            self._broken(work, run.run_id, run.error, stats)
            return
        try:
            self._sync_run(work, run, names, stats)
        except RunLocked as e:  # nothing committed for it: tried again next round, said once
            msg = f"run {run.run_id} ({run.name!r}) skipped this round: {one_line(e)}"
            self.once.warning(msg)
            stats.locked.append(msg)
        except RunUnreadable as e:  # found while reading it (a tag file MLflow cannot read): this run only
            self._broken(work, run.run_id, f"{type(e).__name__}: {one_line(e)}", stats)

    def _broken(self, work: RunWork, run_id: str, error: str, stats: RoundStats) -> None:
        """A run that cannot be read: named in a warning, its error kept (the next backfill says
        it again while it is there), its metadata sent again once it reads (`State.save_error`)."""
        msg = f"run {run_id} (experiment {work.exp.aim_name!r}) cannot be read: {error}"
        self.once.warning(msg)
        stats.errors.append(msg)
        self.state.save_error(run_id, aim_run_hash(run_id), work.exp.aim_name, error)
        self.pool.drop(aim_run_hash(run_id))

    def _parent_name(self, run: RunRecord, names: dict[str, str]) -> dict[str, str]:
        """{parent id: its name} of a nested run: listed with it, else as it was last synced."""
        parent = run.tags.get(PARENT_TAG)
        name = (names.get(parent) or self.state.name(parent)) if parent else None
        return {parent: name} if parent and name else {}

    def _sync_run(self, work: RunWork, run: RunRecord, names: dict[str, str], stats: RoundStats) -> None:
        exp = work.exp
        aim_hash = aim_run_hash(run.run_id)
        errors: list[str] = []
        found = self.artifacts.find(run, work, errors, self.options.mapper)  # artifacts, logged models
        if not (work.meta_changed or work.changed_keys or found.changed or errors):
            # an artifact listing that found nothing new: remembered, Aim not touched
            self._remember(work, run, aim_hash, work.prev.error if work.prev else None, found.models_digest)
            return
        if work.meta_changed or found.changed:
            self.source.load_details(run)
        meta = run_meta(
            exp,
            run,
            self._parent_name(run, names),
            found.listed or [],
            tracking_uri=self.source.describe(),
            with_labels=self.options.tag_labels,
            labels=self.options.labels,
            logged_models=found.models_param,
            packages=found.packages,
            packages_from=found.packages_from,
        )
        sink = self.pool.open(aim_hash, exp.aim_name)
        # the state writes for what goes to Aim now, made once it is durable there (`release`)
        later: list[Callable[[], None]] = []
        self.state_writes.defer_to(later)
        done = False
        try:
            if work.meta_changed or found.changed:
                sink.set_info(meta)
            cursors = self._sync_metrics(run, work, sink, errors, stats, later)
            stats.artifacts += self.artifacts.write(run, sink, found, errors, self.options.mapper)
            if found.revised:  # a file that could not be converted: the `mlflow.artifacts` param says so
                sink.set_info(meta)
            # times and the active flag last: a run shows as finished only once it has its data
            sink.set_times(meta)
            # malformed lines skipped in an earlier round stay this run's error while they are there
            earlier = [
                f"metric {k!r}: {c.error}" for k, c in sorted(cursors.items()) if c.error and k not in work.changed_keys
            ]
            error = "; ".join(errors + earlier) or None
            # the fingerprint is committed last: a crash before this re-sends the run's metadata
            later.append(partial(self._remember, work, run, aim_hash, error, found.models_digest))
            done = True
        finally:
            self.state_writes.defer_to(None)
            # a RUNNING run written without errors may stay open for the next round (the pool
            # says); else it is closed, now or with its batch, and the state written after
            self.pool.release(sink, keep=done and meta.active and not errors, then=partial(_call_all, later))
        stats.runs_written += 1
        for e in errors:
            msg = f"run {run.run_id} ({run.name!r}, experiment {exp.aim_name!r}): {e}"
            log.warning(msg)
            stats.errors.append(msg)

    def _remember(
        self, work: RunWork, run: RunRecord, aim_hash: str, error: str | None, models_digest: str | None
    ) -> None:
        """Commit what the run's metadata, artifacts and logged models looked like when synced."""
        self.state.save_run(
            run.run_id,
            aim_hash,
            work.exp.aim_name,
            run.fingerprint,
            run.status,
            error,
            name=run.name,
            artifacts_mark=run.artifacts_mark,
            artifacts_checked=work.list_artifacts,
            models_digest=models_digest,
        )

    def _sync_metrics(
        self,
        run: RunRecord,
        work: RunWork,
        sink: RunSink,
        errors: list[str],
        stats: RoundStats,
        later: list[Callable[[], None]],
    ) -> dict[str, Cursor]:
        """Write the new points of the changed keys; returns every cursor of the run after. A key
        synced before keeps the Aim name and context its points went to (`mapping.pinned`). The
        last cursors are committed by `later` (once the pool made the points durable); a huge
        run's cursors every COMMIT_EVERY_POINTS on the way (flushed first)."""
        pins = self.state.key_names(run.run_id)
        run_mapper = Pinned(self.options.mapper.for_run(run.metric_marks), pins)
        names = resolve(run_mapper, run.metric_marks, known=set(work.cursors) | set(pins))
        for note in names.collisions:
            self.once.warning(f"run {run.run_id} ({run.name!r}): {note}")
        cursors = dict(work.cursors)
        pending: list[tuple[str, Cursor]] = []  # cursors waiting for Aim to make their points durable
        pending_points = 0

        def commit() -> None:
            nonlocal pending, pending_points
            if pending:
                sink.flush()  # durable in Aim first, then the cursors: a crash re-sends, never skips
                where = {k: pin(names.of(k)) for k, _ in pending if k not in pins}
                self.state.save_cursors(run.run_id, pending, where)
            pending, pending_points = [], 0

        try:
            self.source.prepare(run, work.changed_keys, work.cursors)
            for key in work.changed_keys:
                last: Cursor | None = None
                try:
                    for chunk, last in self.source.read_metric(run, key, work.cursors.get(key)):
                        n, skipped = _write_chunk(sink, names.of, chunk) if len(chunk) else (0, 0)
                        if skipped:
                            errors.append(
                                f"metric {key!r}: skipped {skipped} point(s) with a step beyond "
                                f"+-2**53, which Aim cannot store exactly"
                            )
                        # committed before the key is read to its end (a stop, a huge key), a
                        # cursor must not carry the listing's mark: that would say "all read"
                        pending.append((key, replace(last, mark=None)))
                        cursors[key] = last
                        pending_points += len(chunk)
                        stats.points += n
                        if pending_points >= COMMIT_EVERY_POINTS:
                            commit()
                        if self.stop.is_set():
                            raise Stopped()
                except RunUnreadable as e:
                    errors.append(str(e))
                else:
                    if last is not None:  # read to its end: the cursor with its mark (the last saved wins)
                        pending.append((key, last))
                    cur, before = cursors.get(key), work.cursors.get(key)
                    if cur is not None and cur.error and cur.error != (before.error if before is not None else None):
                        errors.append(f"metric {key!r}: {cur.error}")
        finally:
            if pending:  # a key's last cursor says all (its earlier ones were for a commit midway)
                last_cursors = list(dict(pending).items())
                where = {k: pin(names.of(k)) for k, _ in last_cursors if k not in pins}
                later.append(partial(self.state.save_cursors, run.run_id, last_cursors, where))
        return cursors


def _call_all(calls: list[Callable[[], None]]) -> None:
    for call in calls:
        call()


class DeferredWrites:
    """The state as the artifacts code sees it: reads pass through; while a run is written, its
    `save_artifact`s wait in the run's list of state writes made once Aim has the data."""

    def __init__(self, state: State):
        self._state = state
        self._later: list[Callable[[], None]] | None = None

    def defer_to(self, later: list[Callable[[], None]] | None) -> None:
        self._later = later

    def save_artifact(self, run_id: str, path: str, size: int | None, kind: str | None) -> None:
        if self._later is None:
            self._state.save_artifact(run_id, path, size, kind)
        else:
            self._later.append(partial(self._state.save_artifact, run_id, path, size, kind))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._state, name)


def _write_chunk(
    sink: RunSink, name_of: Callable[[str, str | None], MappedMetric], chunk: MetricChunk
) -> tuple[int, int]:
    """(points written, points skipped) for one chunk of one MLflow key."""
    if chunk.dataset_names is None:
        return sink.write_points(name_of(chunk.key, None), chunk.steps, chunk.values, chunk.timestamps)
    groups: dict[str | None, list[int]] = defaultdict(list)  # MLflow 3: points may name a dataset
    for i, ds in enumerate(chunk.dataset_names):
        groups[ds].append(i)
    written = skipped = 0
    for ds, idx in groups.items():
        w, s = sink.write_points(
            name_of(chunk.key, ds),
            [chunk.steps[i] for i in idx],
            [chunk.values[i] for i in idx],
            [chunk.timestamps[i] for i in idx],
        )
        written, skipped = written + w, skipped + s
    return written, skipped
