"""One sync round: list what changed -> read only the delta -> map -> write -> commit cursors.

Used by `syncer backfill` (one round) and the `syncer sync` daemon (a round every N seconds
and on file events). Knows nothing about how MLflow is read or Aim is written.
"""

from __future__ import annotations

import fnmatch
import logging
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from . import mapping
from .mapping import ContextMapper
from .sink import RunMeta, RunSink, aim_run_hash, artifact_kind, close_sinks, refresh_index, set_experiment_meta
from .source import BrokenRun, Experiment, RunReadError, RunRecord, Source, SourceError
from .state import State

log = logging.getLogger(__name__)

DEFAULT_MAX_ARTIFACT_BYTES = 10 * 1024 * 1024
# a huge run commits its cursors every this many points, so a crash re-sends at most this much
COMMIT_EVERY_POINTS = 200_000
# a RUNNING run's Aim writer kept open between rounds refreshes its run-index entry at most this
# often when only points were added (its last value / step in Aim's tables lag this much; the
# points themselves are readable after each round's flush); a new run, changed metadata or a new
# metric is indexed in the round that wrote it
INDEX_MAX_AGE_S = 5.0
# ... and is closed after this long without new data (MLflow keeps crashed runs RUNNING for good:
# their writers must not stay open, holding locks, file handles and memory), and beyond this
# many open writers the least recently written are closed
KEEP_OPEN_IDLE_S = 60.0
KEEP_OPEN_MAX = 32


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

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("experiments", "runs", "runs_written", "points", "artifacts", "errors", "seconds")}


def select_experiments(exps: list[Experiment], options: Options) -> list[Experiment]:
    """The experiments named by --experiment (names or ids), or all of them."""
    wanted = options.experiments
    if not wanted:
        return exps
    picked, missing = [], []
    for w in wanted:
        hits = [e for e in exps if w in (e.id, e.name)]
        if not hits:
            missing.append(w)
        picked.extend(h for h in hits if h not in picked)
    if missing:
        msg = "unknown MLflow experiment(s): " + ", ".join(repr(m) for m in missing)
        if options.strict_experiments:
            raise SourceError(msg + f" (known: {', '.join(repr(e.name) for e in exps[:10])})")
        log.debug(msg)
    return picked


@dataclass
class Plan:
    experiments: list[Experiment]
    runs: int
    names: dict[str, str]  # run id -> run name (parents of nested runs)
    todo: list[tuple[Experiment, RunRecord | BrokenRun]]
    active: set[str] = field(default_factory=set)  # Aim hashes of the runs listed RUNNING (not deleted)


class Stopped(Exception):
    """The round was cut at a safe point because a stop was requested."""


class Syncer:
    def __init__(self, source: Source, repo, state: State, options: Options,
                 progress: Callable[[Iterable], Iterable] | None = None):
        self.source = source
        self.repo = repo
        self.state = state
        self.options = options
        self.progress = progress
        self.stop = threading.Event()
        # worker processes leave indexing to their parent, which indexes all runs at once
        self.index_on_close = True
        self.unindexed: list[str] = []
        self._described: set[str] = set()
        # round() (the sync daemon, round after round) keeps the Aim writer of a RUNNING run open
        # until the run ends, is deleted, fails, is no longer listed, or close(); sync_one() alone
        # (backfill) opens and closes. Not thread-safe: rounds and close() one at a time.
        self.keep_running_open = True
        self.index_max_age = INDEX_MAX_AGE_S
        self.keep_open_idle = KEEP_OPEN_IDLE_S
        self.keep_open_max = KEEP_OPEN_MAX
        self._kept: dict[str, RunSink] = {}  # Aim hash -> sink kept open between rounds
        self._last_write: dict[str, float] = {}  # Aim hash -> when its kept sink last wrote (monotonic)

    def close(self) -> None:
        try:
            self.close_open_runs()
        except Exception as e:  # their points and cursors are durable; heal_index at start indexes
            log.warning("closing the Aim runs kept open: %s", e)
        finally:
            self.state.close()
            self.source.close()
            try:
                self.repo.close()
            except Exception as e:  # closing is best effort; the data is already durable
                log.debug("closing the Aim repo: %s", e)

    def close_open_runs(self) -> int:
        """Close (and index) every Aim run kept open between rounds; returns how many."""
        n = len(self._kept)
        self._close_kept(list(self._kept))
        if n:
            log.info("closed %d Aim run(s) kept open between rounds", n)
        return n

    # -- the round ---------------------------------------------------------------------------
    def round(self) -> RoundStats:
        t0 = time.monotonic()
        plan = self.plan()
        stats = RoundStats(experiments=len(plan.experiments), runs=plan.runs)
        iterable = self.progress(plan.todo) if (self.progress and plan.todo) else plan.todo
        for exp, run in iterable:
            if self.stop.is_set():
                raise Stopped()
            self.sync_one(exp, run, plan.names, stats, keep_open=self.keep_running_open)
        self._settle_open_runs(plan.active)
        return self.finish(stats, t0)

    def _settle_open_runs(self, active: set[str]) -> None:
        """After a round: close the kept writers of runs no longer listed as running (deleted
        for good, moved out of the chosen experiments), idle for a while, or beyond the most
        kept open; refresh the index entries that are due."""
        now = time.monotonic()
        self._close_kept([h for h in self._kept
                               if h not in active or now - self._last_write.get(h, now) > self.keep_open_idle])
        self._close_kept(self._over_cap())
        if self._kept:
            busy = refresh_index(list(self._kept.values()), self.index_max_age)
            if busy:
                log.debug("Aim's run index is busy; %d open run(s) indexed next round", len(busy))

    def plan(self) -> "Plan":
        """List every run of the chosen experiments and pick those with something new."""
        exps = self._experiments()
        work: list[tuple[Experiment, RunRecord | BrokenRun]] = []
        names: dict[str, str] = {}
        active: set[str] = set()
        for exp in exps:
            for run in self.source.runs(exp):
                work.append((exp, run))
                if isinstance(run, RunRecord):
                    names[run.run_id] = run.name
                    if run.running and not run.deleted:
                        active.add(aim_run_hash(run.run_id))
        todo = [(e, r) for e, r in work if self._needs_work(r)]
        return Plan(exps, len(work), names, todo, active)

    def sync_one(self, exp: Experiment, run: RunRecord | BrokenRun, names: dict[str, str], stats: RoundStats,
                 keep_open: bool = False) -> None:
        """Sync one run. `keep_open`: a RUNNING run's Aim writer stays open for the next round
        (Syncer.round() only: it closes what it keeps)."""
        if exp.id not in self._described:
            set_experiment_meta(self.repo, exp.name, exp.description)
            self._described.add(exp.id)
        if isinstance(run, BrokenRun):
            msg = f"run {run.run_id} (experiment {exp.name!r}) cannot be read: {run.error}"
            log.warning(msg)
            stats.errors.append(msg)
            self.state.save_error(run.run_id, aim_run_hash(run.run_id), exp.name, run.error)
            self._close_kept([aim_run_hash(run.run_id)])
            return
        self._sync_run(exp, run, names, stats, keep_open)

    def _over_cap(self) -> list[str]:
        """The least recently written kept sinks beyond `keep_open_max`."""
        by_age = sorted(self._kept, key=lambda h: self._last_write.get(h, 0.0))
        return by_age[:max(0, len(by_age) - self.keep_open_max)]

    def _close_kept(self, hashes: list[str]) -> None:
        """Close (indexing in one pass) the kept sinks of these runs; others are ignored."""
        sinks = [self._kept.pop(h) for h in hashes if h in self._kept]
        for h in hashes:
            self._last_write.pop(h, None)
        if not sinks:
            return
        missed = close_sinks(sinks)
        if missed:
            log.warning("%d Aim run(s) could not be indexed now; `aim up` or the next start does", len(missed))

    def finish(self, stats: RoundStats, t0: float) -> RoundStats:
        stats.seconds = time.monotonic() - t0
        self.state.save_round(not stats.errors, stats.as_dict())
        self._described.clear()  # experiment descriptions may change between rounds
        return stats

    def _experiments(self) -> list[Experiment]:
        return select_experiments(self.source.experiments(), self.options)

    def _needs_work(self, run: RunRecord | BrokenRun) -> bool:
        if isinstance(run, BrokenRun):
            prev = self.state.run(run.run_id)
            return prev is None or prev.error != run.error
        prev = self.state.run(run.run_id)
        if prev is None or prev.fingerprint != run.fingerprint or run.running:
            return True
        cursors = self.state.cursors(run.run_id)
        return any(self.source.metric_changed(run, k, cursors.get(k)) for k in run.metric_marks)

    # -- one run -----------------------------------------------------------------------------
    def _sync_run(self, exp: Experiment, run: RunRecord, names: dict[str, str], stats: RoundStats,
                  keep_open: bool = False) -> None:
        aim_hash = aim_run_hash(run.run_id)
        prev = self.state.run(run.run_id)
        cursors = self.state.cursors(run.run_id)
        errors: list[str] = []
        meta_changed = prev is None or prev.fingerprint != run.fingerprint
        metrics_changed = any(self.source.metric_changed(run, k, cursors.get(k)) for k in run.metric_marks)
        # artifacts are listed when a run is new or changed, and each round while it runs
        artifacts = self._list_artifacts(run, errors) if (
            self.options.artifacts and (meta_changed or run.running)) else None
        done = self.state.artifacts(run.run_id) if artifacts else {}
        new_artifacts = [a for a in artifacts or [] if a["path"] not in done or done[a["path"]] != a["size"]]
        if not (meta_changed or metrics_changed or new_artifacts or errors):
            return  # a running run with nothing new: Aim is not touched
        meta = self._run_meta(exp, run, names, artifacts or [])
        sink = self._kept.pop(aim_hash, None) or RunSink(self.repo, aim_hash, exp.name)
        keep = False
        try:
            if meta_changed or new_artifacts:
                sink.set_info(meta)
            stats.points += self._sync_metrics(run, sink, cursors, errors)
            stats.artifacts += self._sync_artifacts(run, sink, new_artifacts, errors)
            # times and the active flag last: a run shows as finished only once it has its data
            sink.set_times(meta)
            if keep_open and meta.active and not errors:
                # stays open for the next round: durable now (points readable by other processes
                # at once); the run index is refreshed when due, after the round
                sink.flush()
                keep = True
        finally:
            if keep:
                self._kept[aim_hash] = sink
                self._last_write[aim_hash] = time.monotonic()
            else:
                self._last_write.pop(aim_hash, None)
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
        if keep:
            self._close_kept(self._over_cap())  # e.g. a first round over many RUNNING runs

    def _sync_metrics(self, run: RunRecord, sink: RunSink, cursors: dict[str, dict], errors: list[str]) -> int:
        mapper = self.options.mapper.for_run(run.metric_marks)
        written = 0
        pending: list[tuple[str, dict, int]] = []  # cursors waiting for Aim to make their points durable
        pending_points = 0

        def commit() -> None:
            nonlocal pending, pending_points
            if pending:
                sink.flush()  # durable in Aim first, then the cursors: a crash re-sends, never skips
                self.state.save_cursors(run.run_id, pending)
            pending, pending_points = [], 0

        try:
            for key in sorted(run.metric_marks):
                cursor = cursors.get(key)
                if not self.source.metric_changed(run, key, cursor):
                    continue
                try:
                    for chunk, new_cursor in self.source.read_metric(run, key, cursor):
                        n, skipped = self._write_chunk(sink, mapper, chunk) if len(chunk) else (0, 0)
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
                except RunReadError as e:
                    errors.append(str(e))
        finally:
            commit()
        return written

    @staticmethod
    def _write_chunk(sink: RunSink, mapper, chunk) -> tuple[int, int]:
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

    # -- artifacts ---------------------------------------------------------------------------
    def _list_artifacts(self, run: RunRecord, errors: list[str]) -> list[dict[str, Any]] | None:
        try:
            files = self.source.list_artifacts(run)
        except Exception as e:  # an unreachable artifact store must not stop the metrics
            errors.append(f"cannot list artifacts: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
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

    def _sync_artifacts(self, run: RunRecord, sink: RunSink, artifacts: list[dict], errors: list[str]) -> int:
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
                    except Exception as e:
                        errors.append(f"artifact {a['path']!r} cannot be converted: "
                                      f"{str(e).splitlines()[0] if str(e) else type(e).__name__}")
                        continue
                    n += 1
                self.state.save_artifact(run.run_id, a["path"], a["size"], kind)
        return n

    # -- metadata ----------------------------------------------------------------------------
    def _run_meta(self, exp: Experiment, run: RunRecord, names: dict[str, str],
                  artifacts: list[dict]) -> RunMeta:
        tags = mapping.split_tags(run.tags)
        parent = run.tags.get(mapping.PARENT_TAG)
        info = {
            "run_id": run.run_id,
            "experiment_id": run.experiment_id,
            "experiment_name": exp.name,
            # Aim experiments have a description but no tags: MLflow's experiment tags live here
            "experiment_tags": {k: v for k, v in exp.tags.items() if not k.startswith("mlflow.")},
            "run_name": run.name,
            "status": run.status,
            "lifecycle_stage": run.lifecycle_stage,
            "start_time": run.start_time,
            "end_time": run.end_time,
            "user": run.user,
            "source": run.tags.get(mapping.SOURCE_TAG),
            "git_commit": run.tags.get(mapping.GIT_COMMIT_TAG),
            "parent_run_id": parent,
            "parent_run_name": names.get(parent) if parent else None,
            "artifact_uri": run.artifact_uri,
            "tracking_uri": self.source.describe(),
            "tags": tags.system_tags,
        }
        params: dict[str, Any] = {
            "hparams": mapping.parse_params(run.params),
            "mlflow": info,
            "tags": tags.user_tags,
        }
        if run.datasets:
            params["datasets"] = run.datasets
        if artifacts:
            params["artifacts"] = artifacts
        description = tags.description
        if parent and names.get(parent):
            note = f"child of {names[parent]!r}"
            description = f"{description}\n\n({note})" if description else f"({note})"
        active = run.running and not run.deleted
        return RunMeta(
            experiment=exp.name,
            name=run.name,
            description=description,
            params=params,
            labels=mapping.tag_labels(tags.user_tags) if self.options.tag_labels else [],
            archived=run.deleted or exp.lifecycle_stage == "deleted",
            created_at=(run.start_time or 0) / 1000.0,
            ended_at=None if (active or run.end_time is None) else run.end_time / 1000.0,
            active=active,
        )
