"""One run at a time, as planned (plan.py): read only the delta -> map -> write -> commit
cursors. Knows nothing about how MLflow is read or Aim is written; `rounds.py` drives it over a
whole store."""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from .artifacts import Artifacts
from .config import DEFAULT_MAX_ARTIFACT_BYTES
from .errors import RunLocked, RunUnreadable, Stopped, one_line
from .kept_runs import KeptRuns
from .mapping import PARENT_TAG, ContextMapper, MappedMetric, run_meta
from .plan import Plan, Planner, RunWork
from .sink import RunSink, aim_run_hash, set_experiment_meta
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
    # backfill: an --experiment that matches nothing is an error; sync: it may appear later
    strict_experiments: bool = True


@dataclass
class RoundStats:
    experiments: int = 0
    runs: int = 0  # runs the source listed
    runs_written: int = 0
    points: int = 0  # points written to Aim
    artifacts: int = 0
    errors: list[str] = field(default_factory=list)  # new this round
    still_failing: list[str] = field(default_factory=list)  # runs unchanged since they failed
    # runs another writer holds (an Aim SDK session, a second syncer): skipped, tried next round;
    # not errors of the syncer's (a daemon stays healthy), but a backfill did not finish them
    locked: list[str] = field(default_factory=list)
    read: dict[str, Any] = field(default_factory=dict)  # what the source read (sources.listing.ReadStats)
    seconds: float = 0.0

    def summary(self) -> str:
        line = (
            f"{self.experiments} experiments, {self.runs} runs ({self.runs_written} updated), "
            f"{self.points} points, {self.artifacts} artifacts in {self.seconds:.1f} s"
        )
        if self.errors:
            line += f"; {len(self.errors)} run(s) with errors"
        if self.still_failing:
            line += f"; {len(self.still_failing)} run(s) still failing"
        if self.locked:
            line += f"; {len(self.locked)} run(s) held by another writer"
        return line

    def add(self, other: RoundStats) -> None:
        """Fold in what a worker process did for some runs of this round."""
        self.runs_written += other.runs_written
        self.points += other.points
        self.artifacts += other.artifacts
        self.errors.extend(other.errors)
        self.locked.extend(other.locked)
        for k, v in other.read.items():
            if k != "full":
                self.read[k] = self.read.get(k, 0) + v

    def as_dict(self) -> dict[str, Any]:
        keys = (
            "experiments",
            "runs",
            "runs_written",
            "points",
            "artifacts",
            "errors",
            "still_failing",
            "locked",
            "read",
            "seconds",
        )
        return {k: getattr(self, k) for k in keys}


class Syncer:
    """The source, the Aim repo and the state of one sync, and how one run is synced."""

    def __init__(
        self,
        source: Source,
        repo: Any,
        state: State,
        options: Options,
        progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
    ):
        self.source = source
        self.repo = repo
        self.state = state
        self.options = options
        self.progress = progress
        self.stop = threading.Event()
        source.stop = self.stop
        # worker processes leave indexing to their parent, which indexes all runs at once
        self.index_on_close = True
        self.unindexed: list[str] = []
        # the sync daemon keeps RUNNING runs' Aim writers open between rounds; backfill does not
        self.kept: KeptRuns | None = None
        self.planner = Planner(
            source,
            state,
            experiments=options.experiments,
            strict=options.strict_experiments,
            artifacts=options.artifacts,
        )
        self.artifacts = Artifacts(
            source, state, exclude=options.exclude_artifacts, max_bytes=options.max_artifact_bytes
        )
        self._described: set[str] = set()
        self._warned: set[str] = set()  # still-failing runs warned about by this process

    def close(self) -> None:
        try:
            if self.kept is not None:
                self.kept.close_all()
        except Exception as e:  # their points and cursors are durable; the next start indexes
            log.warning("closing the Aim runs kept open: %s", one_line(e))
        finally:
            self.state.close()
            self.source.close()
            try:
                self.repo.close()
            except Exception as e:  # closing is best effort; the data is already durable
                log.debug("closing the Aim repo: %s", e)

    def round(self, *, full: bool = False) -> RoundStats:
        """One round over the store, in this process (the daemon's, and tests')."""
        from .rounds import run_round

        return run_round(self, full=full)

    def plan(self, *, full: bool = False) -> Plan:
        """What the source says may have changed, decided against the state (plan.py)."""
        from .aim import run_hashes

        return self.planner.plan(full=full, stop=self.stop, aim_runs=lambda: run_hashes(self.repo))

    def warn_still_failing(self, messages: list[str]) -> None:
        """Runs that still fail as they did: said once per process (a backfill says it each time)."""
        for msg in messages:
            if msg not in self._warned:
                self._warned.add(msg)
                log.warning("%s (unchanged since)", msg)

    def prefetch(self, works: list[RunWork]) -> None:
        """The runs synced next, in this order: the source may read their histories together."""
        items = [(w.run, w.changed_keys, w.cursors) for w in works if isinstance(w.run, RunRecord) and w.changed_keys]
        if len(items) > 1:
            self.source.prefetch(items)

    # -- one run -----------------------------------------------------------------------------
    def sync_one(self, work: RunWork, names: dict[str, str], stats: RoundStats) -> None:
        """Sync one run as planned. A run another writer holds is skipped this round."""
        exp, run = work.exp, work.run
        if exp.id not in self._described:
            set_experiment_meta(self.repo, exp.name, exp.description)
            self._described.add(exp.id)
        if isinstance(run, BrokenRun):
            msg = f"run {run.run_id} (experiment {exp.name!r}) cannot be read: {run.error}"
            log.warning(msg)
            stats.errors.append(msg)
            self.state.save_error(run.run_id, aim_run_hash(run.run_id), exp.name, run.error)
            if self.kept is not None:
                self.kept.close([aim_run_hash(run.run_id)])
            return
        try:
            self._sync_run(work, run, names, stats)
        except RunLocked as e:  # nothing committed for it: tried again next round, said once
            msg = f"run {run.run_id} ({run.name!r}) skipped this round: {one_line(e)}"
            log.log(logging.DEBUG if msg in self._warned else logging.WARNING, msg)
            self._warned.add(msg)
            stats.locked.append(msg)

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
            logged_models=found.models_param,
        )
        kept = self.kept
        sink = (kept.take(aim_hash) if kept is not None else None) or RunSink(self.repo, aim_hash, exp.name)
        keep = False
        try:
            if work.meta_changed or found.changed:
                sink.set_info(meta)
            cursors = self._sync_metrics(run, work, sink, errors, stats)
            stats.artifacts += self.artifacts.write(run, sink, found, errors, self.options.mapper)
            if found.revised:  # a file that could not be converted: the `artifacts` param says so
                sink.set_info(meta)
            # times and the active flag last: a run shows as finished only once it has its data
            sink.set_times(meta)
            if kept is not None and meta.active and not errors:
                # stays open for the next round: durable now (points readable by other processes
                # at once); the run index is refreshed when due, after the round
                sink.flush()
                keep = True
        finally:
            if keep and kept is not None:
                kept.put(sink)
            else:
                sink.close(index=self.index_on_close)
                if not self.index_on_close:
                    self.unindexed.append(aim_hash)
        # malformed lines skipped in an earlier round stay this run's error while they are there
        earlier = [
            f"metric {k!r}: {c.error}" for k, c in sorted(cursors.items()) if c.error and k not in work.changed_keys
        ]
        error = "; ".join(errors + earlier) or None
        # the fingerprint is committed last: a crash before this re-sends the run's metadata
        self._remember(work, run, aim_hash, error, found.models_digest)
        stats.runs_written += 1
        for e in errors:
            msg = f"run {run.run_id} ({run.name!r}, experiment {exp.name!r}): {e}"
            log.warning(msg)
            stats.errors.append(msg)

    def _remember(
        self, work: RunWork, run: RunRecord, aim_hash: str, error: str | None, models_digest: str | None
    ) -> None:
        """Commit what the run's metadata, artifacts and logged models looked like when synced."""
        self.state.save_run(
            run.run_id,
            aim_hash,
            work.exp.name,
            run.fingerprint,
            run.status,
            error,
            name=run.name,
            artifacts_mark=run.artifacts_mark,
            artifacts_checked=work.list_artifacts,
            models_digest=models_digest,
        )

    def _sync_metrics(
        self, run: RunRecord, work: RunWork, sink: RunSink, errors: list[str], stats: RoundStats
    ) -> dict[str, Cursor]:
        """Write the new points of the changed keys; returns every cursor of the run after."""
        names = self.options.mapper.for_run(run.metric_marks).map_keys(run.metric_marks, known=set(work.cursors))
        for note in names.collisions:
            msg = f"run {run.run_id} ({run.name!r}): {note}"
            if msg not in self._warned:
                self._warned.add(msg)
                log.warning(msg)
        cursors = dict(work.cursors)
        pending: list[tuple[str, Cursor]] = []  # cursors waiting for Aim to make their points durable
        pending_points = 0

        def commit() -> None:
            nonlocal pending, pending_points
            if pending:
                sink.flush()  # durable in Aim first, then the cursors: a crash re-sends, never skips
                self.state.save_cursors(run.run_id, pending)
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
                    cur = cursors.get(key)
                    if cur is not None and cur.error and cur.error != getattr(work.cursors.get(key), "error", None):
                        errors.append(f"metric {key!r}: {cur.error}")
        finally:
            commit()
        return cursors

    def finish(self, stats: RoundStats, t0: float) -> RoundStats:
        stats.seconds = time.monotonic() - t0
        read = self.source.listing.stats.as_dict()
        for k, v in stats.read.items():  # what worker processes read
            if k != "full":
                read[k] = read.get(k, 0) + v
        stats.read = read
        self.state.save_round(not (stats.errors or stats.locked), stats.as_dict())
        self._described.clear()  # experiment descriptions may change between rounds
        return stats


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
