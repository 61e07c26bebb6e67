"""The plan of a round: ask the source what may have changed (as the listing policy says), compare
with the state, and decide once, per run, what to do (metadata? which keys? artifacts?). The
decisions travel in the plan to the pipeline (and to worker processes), so nothing is decided
twice. The planner owns the listing policy (`listing.ListingPolicy`) and the read counters."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from .errors import BadInput, Stopped
from .listing import ListingPolicy
from .sink import aim_run_hash
from .sources import AnyRun, BrokenRun, Experiment, ReadStats, RunRecord, Source
from .sources.cursors import Cursor
from .state import RunState, State

log = logging.getLogger(__name__)

# a remote artifact store cannot be compared by stat: on each full listing the finished runs
# whose listing is oldest are listed again, this many at most
RELIST_REMOTE_PER_FULL = 20


@dataclass
class RunWork:
    """One run with something to do, and what."""

    exp: Experiment
    run: AnyRun
    prev: RunState | None = None
    cursors: dict[str, Cursor] = field(default_factory=dict)
    meta_changed: bool = False
    changed_keys: list[str] = field(default_factory=list)
    list_artifacts: bool = False

    @property
    def size(self) -> int:
        """Roughly how much there is to read, in bytes of metric files (big runs go first to the
        worker processes); 0 where the store says no size."""
        if not isinstance(self.run, RunRecord):
            return 0
        marks = self.run.metric_marks
        return sum(marks[k].size or 0 for k in self.changed_keys if k in marks)


@dataclass
class Plan:
    experiments: list[Experiment]
    runs: int  # runs the source listed (all of them on a full listing)
    names: dict[str, str]  # run id -> run name of every run listed so far (parents of nested runs)
    todo: list[RunWork]
    active: set[str] = field(default_factory=set)  # Aim hashes of the runs listed RUNNING (not deleted)
    full: bool = False
    still_failing: list[str] = field(default_factory=list)  # errors of runs unchanged since they failed


def select_experiments(exps: list[Experiment], wanted: tuple[str, ...], *, strict: bool) -> list[Experiment]:
    """The experiments named (names, `workspace/name`s or ids), or all of them. `strict`: one
    that matches nothing is an error (backfill); else it may appear later (sync)."""
    if not wanted:
        return exps
    picked: list[Experiment] = []
    missing = []
    for w in wanted:
        hits = [e for e in exps if w in (e.id, e.name, e.aim_name)]
        if not hits:
            missing.append(w)
        picked.extend(h for h in hits if h not in picked)
    if missing:
        msg = "unknown MLflow experiment(s): " + ", ".join(repr(m) for m in missing)
        if strict:
            raise BadInput(msg + f" (known: {', '.join(repr(e.aim_name) for e in exps[:10])})")
        log.debug(msg)
    return picked


class Planner:
    """`aim_runs`: the hashes of the runs the Aim repo holds, asked for on full listings, to send
    again the runs removed from it (None: never asked, as in a dry run)."""

    def __init__(
        self,
        source: Source,
        state: State,
        *,
        listing: ListingPolicy,
        reads: ReadStats,
        experiments: tuple[str, ...],
        strict: bool,
        artifacts: bool,
        aim_runs: Callable[[], set[str]] | None = None,
        stop: threading.Event | None = None,
    ):
        self.source = source
        self.state = state
        self.listing = listing
        self.reads = reads
        self.experiments = experiments
        self.strict = strict
        self.artifacts = artifacts
        self.aim_runs = aim_runs
        self.stop = stop

    def plan(self, *, full: bool = False, paths: Iterable[str] = ()) -> Plan:
        """`full`: list every run (backfill); `paths`: what file events named since the last round."""
        ask = self.listing.ask(full, paths)
        self.reads.reset(full=ask.full)  # the round's reads count from here, experiments too
        self.source.start_listing(ask)
        exps = select_experiments(self.source.experiments(), self.experiments, strict=self.strict)
        ask = replace(ask, moved=self.listing.moved_experiments(exps))
        changes = self.source.changes(exps, ask)
        self.listing.note(changes)
        if ask.full and self.aim_runs is not None:
            self._forget_removed(self.aim_runs())
        by_id = {e.id: e for e in exps}
        plan = Plan(exps, len(changes.records), self.listing.names, [], full=ask.full)
        relist = self._remote_relist_turn(changes.records) if ask.full and self.artifacts else set()
        for run in changes.records:
            if self.stop is not None and self.stop.is_set():
                raise Stopped()
            exp = by_id.get(run.experiment_id)
            if exp is None:
                continue
            if isinstance(run, RunRecord) and run.running and not run.deleted:
                plan.active.add(aim_run_hash(run.run_id))
            work = self._decide(exp, run, full=ask.full, relist=run.run_id in relist)
            if work is not None:
                plan.todo.append(work)
            else:
                prev = self.state.run(run.run_id)
                if prev is not None and prev.error:
                    plan.still_failing.append(f"run {run.run_id} (experiment {exp.aim_name!r}): {prev.error}")
        self.listing.end()
        return plan

    def _decide(self, exp: Experiment, run: AnyRun, *, full: bool, relist: bool) -> RunWork | None:
        prev = self.state.run(run.run_id)
        if isinstance(run, BrokenRun):
            return RunWork(exp, run, prev) if (prev is None or prev.error != run.error) else None
        meta_changed = prev is None or prev.fingerprint != run.fingerprint
        cursors = self.state.cursors(run.run_id)
        # a run resumed, or ending after a resume, on a store that counts no points: keys read
        # again although their marks did not move (steps logged again below the last one read)
        prev_status = prev.status if prev is not None else None
        recheck = {k for k, c in cursors.items() if self.source.recheck(run, prev_status, c)}
        run.recheck = bool(recheck)
        changed = [
            k for k in sorted(run.metric_marks) if k in recheck or self.source.metric_changed(run, k, cursors.get(k))
        ]
        list_artifacts = self.artifacts and (meta_changed or self._artifacts_moved(run, prev, full=full, relist=relist))
        if not (meta_changed or changed or list_artifacts):
            return None
        return RunWork(exp, run, prev, cursors, meta_changed, changed, list_artifacts)

    @staticmethod
    def _artifacts_moved(run: RunRecord, prev: RunState | None, *, full: bool, relist: bool) -> bool:
        """Local artifact folders are compared by their stat digest; a remote artifact store's
        listing is compared on full listings: RUNNING runs each time, finished runs in turns."""
        if prev is None:
            return True
        if run.artifacts_mark is not None:
            return run.artifacts_mark != prev.artifacts_mark
        return full and (run.running or relist)

    def _remote_relist_turn(self, records: list[AnyRun]) -> set[str]:
        remote = [r for r in records if isinstance(r, RunRecord) and r.artifacts_mark is None and not r.running]
        if not remote:
            return set()
        last = {
            r.run_id: (self.state.run(r.run_id) or RunState("", None, None, None)).artifacts_checked_at or 0.0
            for r in remote
        }
        return set(sorted(last, key=lambda r: last[r])[:RELIST_REMOTE_PER_FULL])

    def _forget_removed(self, aim_runs: set[str]) -> None:
        gone = [run_id for h, run_id in self.state.synced_runs().items() if h not in aim_runs]
        if gone:
            log.info("%d run(s) were removed from the Aim repo: sending them again", len(gone))
            self.state.forget(gone)
