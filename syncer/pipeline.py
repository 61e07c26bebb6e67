"""One run at a time: plan (what changed, decided once) -> read only the delta -> map -> write
-> commit cursors. Knows nothing about how MLflow is read or Aim is written; `rounds.py`
drives it over a whole store."""

from __future__ import annotations

import fnmatch
import logging
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .config import DEFAULT_MAX_ARTIFACT_BYTES
from .errors import RunUnreadable, StoreError, one_line
from .kept_runs import KeptRuns
from .mapping import ContextMapper, RunContextMapper, artifact_kind, run_meta
from .sink import RunSink, aim_run_hash, set_experiment_meta
from .sources import BrokenRun, Experiment, MetricChunk, RunRecord, Source
from .state import RunState, State

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
    runs: int = 0  # runs seen
    runs_written: int = 0
    points: int = 0
    artifacts: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        line = (f"{self.experiments} experiments, {self.runs} runs ({self.runs_written} updated), "
                f"{self.points} points, {self.artifacts} artifacts in {self.seconds:.1f} s")
        if self.errors:
            line += f"; {len(self.errors)} run(s) with errors"
        return line

    def add(self, other: "RoundStats") -> None:
        """Fold in what a worker process did for some runs of this round."""
        self.runs_written += other.runs_written
        self.points += other.points
        self.artifacts += other.artifacts
        self.errors.extend(other.errors)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("experiments", "runs", "runs_written", "points", "artifacts", "errors", "seconds")}


def select_experiments(exps: list[Experiment], options: Options) -> list[Experiment]:
    """The experiments named by --experiment (names or ids), or all of them."""
    wanted = options.experiments
    if not wanted:
        return exps
    picked: list[Experiment] = []
    missing = []
    for w in wanted:
        hits = [e for e in exps if w in (e.id, e.name)]
        if not hits:
            missing.append(w)
        picked.extend(h for h in hits if h not in picked)
    if missing:
        msg = "unknown MLflow experiment(s): " + ", ".join(repr(m) for m in missing)
        if options.strict_experiments:
            raise StoreError(msg + f" (known: {', '.join(repr(e.name) for e in exps[:10])})")
        log.debug(msg)
    return picked


@dataclass
class RunWork:
    """One run with something to do, and what: decided once, by `Syncer.plan`."""

    exp: Experiment
    run: RunRecord | BrokenRun
    prev: RunState | None = None
    cursors: dict[str, dict[str, Any]] = field(default_factory=dict)
    meta_changed: bool = False
    changed_keys: list[str] = field(default_factory=list)
    list_artifacts: bool = False

    @property
    def size(self) -> int:
        """Roughly how much there is to read (big runs go first to the worker processes)."""
        marks = self.run.metric_marks if isinstance(self.run, RunRecord) else {}
        return sum(v for k, v in marks.items() if k in self.changed_keys and isinstance(v, int))


@dataclass
class Plan:
    experiments: list[Experiment]
    runs: int
    names: dict[str, str]  # run id -> run name (parents of nested runs)
    todo: list[RunWork]
    active: set[str] = field(default_factory=set)  # Aim hashes of the runs listed RUNNING (not deleted)


class Stopped(Exception):
    """The round was cut at a safe point because a stop was requested."""


class Syncer:
    """The source, the Aim repo and the state of one sync, and how one run is synced."""

    def __init__(self, source: Source, repo: Any, state: State, options: Options,
                 progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None):
        self.source = source
        self.repo = repo
        self.state = state
        self.options = options
        self.progress = progress
        self.stop = threading.Event()
        # worker processes leave indexing to their parent, which indexes all runs at once
        self.index_on_close = True
        self.unindexed: list[str] = []
        # the sync daemon keeps RUNNING runs' Aim writers open between rounds; backfill does not
        self.kept: KeptRuns | None = None
        self._described: set[str] = set()

    def close(self) -> None:
        try:
            if self.kept is not None:
                self.kept.close_all()
        except Exception as e:  # their points and cursors are durable; heal_index at start indexes
            log.warning("closing the Aim runs kept open: %s", one_line(e))
        finally:
            self.state.close()
            self.source.close()
            try:
                self.repo.close()
            except Exception as e:  # closing is best effort; the data is already durable
                log.debug("closing the Aim repo: %s", e)

    def round(self) -> RoundStats:
        """One round over the store, in this process (the daemon's, and tests')."""
        from .rounds import run_round

        return run_round(self)

    # -- planning ----------------------------------------------------------------------------
    def plan(self) -> Plan:
        """List every run of the chosen experiments and decide, once, what each needs."""
        exps = select_experiments(self.source.experiments(), self.options)
        todo: list[RunWork] = []
        names: dict[str, str] = {}
        active: set[str] = set()
        listed = 0
        for exp in exps:
            for run in self.source.runs(exp):
                listed += 1
                if isinstance(run, RunRecord):
                    names[run.run_id] = run.name
                    if run.running and not run.deleted:
                        active.add(aim_run_hash(run.run_id))
                work = self._decide(exp, run)
                if work is not None:
                    todo.append(work)
        return Plan(exps, listed, names, todo, active)

    def _decide(self, exp: Experiment, run: RunRecord | BrokenRun) -> RunWork | None:
        prev = self.state.run(run.run_id)
        if isinstance(run, BrokenRun):
            return RunWork(exp, run, prev) if (prev is None or prev.error != run.error) else None
        meta_changed = prev is None or prev.fingerprint != run.fingerprint
        cursors = self.state.cursors(run.run_id)
        changed = [k for k in sorted(run.metric_marks) if self.source.metric_changed(run, k, cursors.get(k))]
        # artifacts are listed when a run is new or changed, and each round while it runs
        list_artifacts = self.options.artifacts and (meta_changed or run.running)
        if not (meta_changed or changed or run.running):
            return None
        return RunWork(exp, run, prev, cursors, meta_changed, changed, list_artifacts)

    # -- one run -----------------------------------------------------------------------------
    def sync_one(self, work: RunWork, names: dict[str, str], stats: RoundStats) -> None:
        """Sync one run as planned."""
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
        self._sync_run(work, run, names, stats)

    def _sync_run(self, work: RunWork, run: RunRecord, names: dict[str, str], stats: RoundStats) -> None:
        exp = work.exp
        aim_hash = aim_run_hash(run.run_id)
        errors: list[str] = []
        artifacts = self._list_artifacts(run, errors) if work.list_artifacts else None
        done = self.state.artifacts(run.run_id) if artifacts else {}
        new_artifacts = [a for a in artifacts or [] if a["path"] not in done or done[a["path"]] != a["size"]]
        if not (work.meta_changed or work.changed_keys or new_artifacts or errors):
            return  # a running run with nothing new: Aim is not touched
        meta = run_meta(exp, run, names, artifacts or [], tracking_uri=self.source.describe(),
                        with_labels=self.options.tag_labels)
        kept = self.kept
        sink = (kept.take(aim_hash) if kept is not None else None) or RunSink(self.repo, aim_hash, exp.name)
        keep = False
        try:
            if work.meta_changed or new_artifacts:
                sink.set_info(meta)
            stats.points += self._sync_metrics(run, work, sink, errors)
            stats.artifacts += self._sync_artifacts(run, sink, new_artifacts, errors)
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
        error = "; ".join(errors) or None
        # the fingerprint is committed last: a crash before this re-sends the run's metadata
        self.state.save_run(run.run_id, aim_hash, exp.name, run.fingerprint, run.status, error)
        stats.runs_written += 1
        for e in errors:
            msg = f"run {run.run_id} ({run.name!r}, experiment {exp.name!r}): {e}"
            log.warning(msg)
            stats.errors.append(msg)

    def _sync_metrics(self, run: RunRecord, work: RunWork, sink: RunSink, errors: list[str]) -> int:
        mapper = self.options.mapper.for_run(run.metric_marks)
        written = 0
        pending: list[tuple[str, dict[str, Any], int]] = []  # cursors waiting for Aim to make their points durable
        pending_points = 0

        def commit() -> None:
            nonlocal pending, pending_points
            if pending:
                sink.flush()  # durable in Aim first, then the cursors: a crash re-sends, never skips
                self.state.save_cursors(run.run_id, pending)
            pending, pending_points = [], 0

        try:
            for key in work.changed_keys:
                try:
                    for chunk, new_cursor in self.source.read_metric(run, key, work.cursors.get(key)):
                        n, skipped = _write_chunk(sink, mapper, chunk) if len(chunk) else (0, 0)
                        if skipped:
                            errors.append(f"metric {key!r}: skipped {skipped} point(s) with a step beyond "
                                          f"+-2**53, which Aim cannot store exactly")
                        pending.append((key, new_cursor, n))
                        pending_points += len(chunk)
                        written += n
                        if pending_points >= COMMIT_EVERY_POINTS:
                            commit()
                        if self.stop.is_set():
                            raise Stopped()
                except RunUnreadable as e:
                    errors.append(str(e))
        finally:
            commit()
        return written

    # -- artifacts ---------------------------------------------------------------------------
    def _list_artifacts(self, run: RunRecord, errors: list[str]) -> list[dict[str, Any]] | None:
        try:
            files = self.source.list_artifacts(run)
        except Exception as e:  # an unreachable artifact store must not stop the metrics
            errors.append(f"cannot list artifacts: {one_line(e)}")
            return None
        out = []
        for f in files:
            if any(fnmatch.fnmatch(f.path, g) or fnmatch.fnmatch(f.path.rsplit("/", 1)[-1], g)
                   for g in self.options.exclude_artifacts):
                continue
            kind = artifact_kind(f.path)
            if kind and f.size is not None and f.size > self.options.max_artifact_bytes:
                kind = None
            uri = f"{run.artifact_uri.rstrip('/')}/{f.path}" if run.artifact_uri else f.path
            out.append({"path": f.path, "size": f.size, "uri": uri, "copied_as": kind})
        return out

    def _sync_artifacts(self, run: RunRecord, sink: RunSink, artifacts: list[dict[str, Any]], errors: list[str]) -> int:
        """Convert the new or changed artifacts that Aim can show; remember every one listed."""
        n = 0
        ts = (run.end_time or run.start_time or time.time() * 1000) / 1000.0
        with tempfile.TemporaryDirectory(prefix="syncer-artifacts-") as tmp:
            for a in artifacts:
                kind = a["copied_as"]
                if kind is not None:
                    try:
                        local = self.source.fetch_artifact(run, a["path"], tmp)
                        sink.write_artifact(kind, local, a["path"], ts)
                    except Exception as e:  # any decoder error of a user's file: that file is listed only
                        errors.append(f"artifact {a['path']!r} cannot be converted: {one_line(e)}")
                        continue
                    n += 1
                self.state.save_artifact(run.run_id, a["path"], a["size"], kind)
        return n

    def finish(self, stats: RoundStats, t0: float) -> RoundStats:
        stats.seconds = time.monotonic() - t0
        self.state.save_round(not stats.errors, stats.as_dict())
        self._described.clear()  # experiment descriptions may change between rounds
        return stats


def _write_chunk(sink: RunSink, mapper: RunContextMapper, chunk: MetricChunk) -> tuple[int, int]:
    """(points written, points skipped) for one chunk of one MLflow key."""
    if chunk.dataset_names is None:
        return sink.write_points(mapper.map(chunk.key), chunk.steps, chunk.values, chunk.timestamps)
    groups: dict[str | None, list[int]] = defaultdict(list)  # MLflow 3: points may name a dataset
    for i, ds in enumerate(chunk.dataset_names):
        groups[ds].append(i)
    written = skipped = 0
    for ds, idx in groups.items():
        w, s = sink.write_points(mapper.map(chunk.key, ds), [chunk.steps[i] for i in idx],
                                 [chunk.values[i] for i in idx], [chunk.timestamps[i] for i in idx])
        written, skipped = written + w, skipped + s
    return written, skipped
