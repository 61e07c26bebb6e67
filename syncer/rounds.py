"""The one round driver, for the daemon, backfill and tests: plan, then sync every run with
something new (one at a time in this process, or spread over worker processes), stopping at a
safe point when asked; then settle the Aim runs kept open and record the round.

A round = list what changed (`plan.Planner`) -> each run through the pipeline
(`pipeline.RunPipeline`: read the delta, map, write, commit cursors) -> finish (`RoundStats`
stored, kept runs settled). Everything it works with comes in through its constructor
(`runner.open_driver` wires them)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

from .errors import RepoFull, Stopped, one_line
from .listing import ListingPolicy
from .logs import OnceLog
from .pipeline import RunPipeline
from .plan import Plan, Planner, RunWork
from .round_stats import RoundStats
from .sink import aim_run_hash, set_experiment_meta
from .sink_pool import SinkPool
from .sources import RunRecord, Source
from .state import State

log = logging.getLogger("syncer")

OPEN_AHEAD = 16  # runs whose Aim runs are opened ahead (side by side) while the one before is written

T = TypeVar("T")
Progress = Callable[[Iterable[Any]], Iterable[Any]]


class Spread(Protocol):
    """Syncs a large round's runs over processes (`workers.WorkerPool`), adding to its stats."""

    def __call__(
        self, works: list[RunWork], plan: Plan, stats: RoundStats, driver: RoundDriver, urgent: int, until: float | None
    ) -> list[RunWork] | None:
        """The works left for a later slice; None: this round is better synced by the driver alone."""

    def close(self) -> None:
        """No more rounds: the helper processes kept between slices exit."""


class RoundDriver:
    def __init__(
        self,
        *,
        source: Source,
        state: State,
        repo: Any,
        planner: Planner,
        pipeline: RunPipeline,
        pool: SinkPool,
        stop: threading.Event,
        once: OnceLog,
        spread: Spread | None = None,
        progress: Progress | None = None,
        slice_s: float | None = None,
    ):
        """`slice_s` (the daemon): a round writes what cannot wait (RUNNING runs, runs synced
        before) and then catches up on runs never synced for at most this long; the rest waits
        in `backlog` for the next rounds (`RoundStats.backlog`: the daemon starts the next one at
        once). None (a backfill): a round writes everything."""
        self.source = source
        self.state = state
        self.repo = repo
        self.planner = planner
        self.pipeline = pipeline
        self.pool = pool
        self.stop = stop
        self.once = once
        self.spread = spread
        self.progress = progress
        self.slice_s = slice_s
        self.backlog: list[RunWork] = []  # runs never synced, for the next slices

    @property
    def listing(self) -> ListingPolicy:
        return self.planner.listing

    @property
    def location(self) -> Any:
        return self.source.location

    def round(self, *, full: bool = False, paths: Iterable[str] = (), room_wait: float | None = None) -> RoundStats:
        """One round over the store (`full`: every run looked at, as backfill does; `paths`:
        what file events named since the last round). A round that fails is recorded as such,
        and the next one lists the whole store (`ListingPolicy.failed`); on a full Aim repo
        filesystem it raises `RepoFull`, saying how much it wrote, or (`room_wait`, a backfill)
        waits that long for space and goes on (`wait_for_space`)."""
        while room_wait is not None:
            try:
                return self._round(full, paths)
            except RepoFull as e:
                self.wait_for_space(e, room_wait)
        return self._round(full, paths)

    def _round(self, full: bool, paths: Iterable[str]) -> RoundStats:
        t0, listed_at = time.monotonic(), time.time()
        stats = RoundStats()
        try:
            plan = self.planner.plan(full=full, paths=paths)
            stats.experiments, stats.runs, stats.still_failing = len(plan.experiments), plan.runs, plan.still_failing
            for msg in plan.still_failing:  # runs that still fail as they did: said once per process
                self.once.warning(f"{msg} (unchanged since)")
            self._describe(plan.todo)
            works, urgent = self._with_backlog(plan.todo)
            until = t0 + self.slice_s if self.slice_s is not None else None
            left = None if self.spread is None else self.spread(works, plan, stats, self, urgent, until)
            if left is None:
                left = self.sync_works(works, plan.names, stats, progress=True, urgent=urgent, until=until)
            self.backlog = left
            stats.backlog = len(left)
            self.pool.settle(plan.active)
        except Stopped:
            self.listing.failed()
            self.backlog = []  # the next listing is a full one: it finds what is left
            raise
        except Exception as e:
            self.listing.failed()
            self.backlog = []
            full_disk = self._full_disk(e, stats)
            self._record_failure(stats, t0, full_disk or e)
            if full_disk is not None:
                raise full_disk from None
            raise
        stats.listed_at, stats.running, stats.behind = listed_at, plan.active, self._behind(plan.todo)
        return self._finish(stats, t0)

    def _full_disk(self, e: Exception, stats: RoundStats) -> RepoFull | None:
        """The round's failure as a full disk, saying how much the round wrote, when it is one
        (raised by the writer's check, or any failure while the repo's filesystem is short of
        space: a SQLite commit, a RocksDB write); None otherwise."""
        from .aim import space

        if not isinstance(e, RepoFull):
            path = getattr(self.repo, "path", None)
            if path is None or not space.short(path):
                return None
            e = RepoFull(space.describe(path))
        return RepoFull(
            f"{one_line(e, limit=1000)}; this round wrote {stats.runs_written} run(s), {stats.points:,} point(s) "
            "before it stopped, nothing is lost: the rest is sent once there is space"
        )

    def wait_for_space(self, full: RepoFull, seconds: float) -> None:
        """A backfill's bounded wait on a full disk: return as soon as the Aim repo's filesystem
        has room again (the next round goes on where this one stopped), else raise `full` again
        after `seconds`; Stopped when asked to stop meanwhile."""
        from .aim import space

        if seconds > 0:
            log.warning("%s; waiting up to %g s for space", full, seconds)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.stop.wait(min(1.0, max(0.0, deadline - time.monotonic()))):
                raise Stopped()
            if not space.short(self.repo.path):
                log.info("the Aim repo's filesystem has room again: going on")
                return
        raise full

    def _record_failure(self, stats: RoundStats, t0: float, e: BaseException) -> None:
        """A failed round in the state (`syncer status` says it failed, and why)."""
        stats.seconds = time.monotonic() - t0
        try:
            self.state.save_round(False, {**stats.as_dict(), "failed": f"{type(e).__name__}: {one_line(e, 1000)}"})
        except Exception as err:  # the state itself may be what failed (a full disk)
            log.debug("could not record the failed round: %s", err)

    def _with_backlog(self, todo: list[RunWork]) -> tuple[list[RunWork], int]:
        """This round's works, and how many of them come first and cannot wait (written by the
        round's own process, before anything else): none without slices; else what is not a run
        never synced (RUNNING runs, runs synced before), then the runs never synced, then the
        backlog (less the runs listed again now)."""
        if self.slice_s is None:
            return todo, 0
        fresh = {w.run.run_id for w in todo}
        first = [w for w in todo if not _may_wait(w)]
        return first + [w for w in todo if _may_wait(w)] + [w for w in self.backlog if w.run.run_id not in fresh], len(
            first
        )

    def sync_works(
        self,
        works: list[RunWork],
        names: dict[str, str],
        stats: RoundStats,
        *,
        progress: bool,
        urgent: int | None = None,
        until: float | None = None,
    ) -> list[RunWork]:
        """Sync these runs here, in order, in batches (the pool's): the runs coming next opened
        ahead, a batch committed when due and at the end, also when stopped or failing (what was
        written is made durable and its cursors committed). Past `until` (monotonic), once the
        first `urgent` runs and one more are done, the rest is left at the next batch's end:
        returned."""
        window = self.source.prefetch_runs
        urgent = len(works) if urgent is None else urgent
        self.pool.expect(writes(works))
        try:
            for i, work in enumerate(self.each(works) if progress else works):
                if self.stop.is_set():
                    raise Stopped()
                # past the slice (and some of the backlog written: every slice gets on with it)
                if until is not None and i > urgent and not self.pool.pending() and time.monotonic() >= until:
                    return works[i:]
                if i % window == 0:
                    self.prefetch(works[i : i + window])
                self.pool.upcoming(writes(works[i : i + OPEN_AHEAD]))
                self.pipeline.sync(work, names, stats)
                if self.pool.due() or (until is not None and i >= urgent and time.monotonic() >= until):
                    self.pool.commit()
        except BaseException:
            try:
                self.pool.commit()
            except Exception as e:  # the first failure is the one reported; this batch is sent again
                log.warning("could not commit the runs written so far: %s", e)
            raise
        self.pool.commit()
        return []

    def each(self, items: Iterable[T]) -> Iterator[T]:
        """The items, through the progress reporter when there is one (a bar, a health beat)."""
        yield from (self.progress(items) if (self.progress and items) else items)

    def prefetch(self, works: list[RunWork]) -> None:
        """The runs synced next, in this order: the source may read their histories together."""
        prefetch_runs(self.source, works)

    def _describe(self, todo: list[RunWork]) -> None:
        """The descriptions of the experiments with runs to write, once a round (they may change
        between rounds)."""
        for exp in {w.exp.id: w.exp for w in todo}.values():
            set_experiment_meta(self.repo, exp.aim_name, exp.description)

    def _behind(self, todo: list[RunWork]) -> dict[str, bool]:
        """Per run of the round (Aim hash): RUNNING with points the listing saw that are still
        not in Aim, as the listing's marks compare with the cursors now committed."""
        behind = {}
        for w in todo:
            late = False
            if isinstance(w.run, RunRecord) and w.run.running and not w.run.deleted and w.changed_keys:
                done = self.state.cursors(w.run.run_id)
                late = any(self.source.metric_changed(w.run, k, done.get(k)) for k in w.changed_keys)
            behind[aim_run_hash(w.run.run_id)] = late
        return behind

    def _finish(self, stats: RoundStats, t0: float) -> RoundStats:
        stats.seconds = time.monotonic() - t0
        read = self.planner.reads.snapshot()
        read.add(stats.read)  # what worker processes read
        stats.read = read
        self.state.save_round(not (stats.errors or stats.locked), stats.as_dict())
        return stats

    def close(self) -> None:
        try:
            if self.spread is not None:
                self.spread.close()
            self.pool.close_all()
        finally:
            self.state.close()
            self.source.close()
            try:
                self.repo.close()
            except Exception as e:  # closing is best effort; the data is already durable
                log.debug("closing the Aim repo: %s", e)


def _may_wait(work: RunWork) -> bool:
    """A run never synced that is not RUNNING: a daemon catching up may write it a slice later."""
    run = work.run
    return work.prev is None and not (isinstance(run, RunRecord) and run.running)


def writes(works: list[RunWork]) -> list[tuple[str, bool]]:
    """(Aim hash, whether it writes points) of the runs among these whose Aim run will be written
    (metadata or points): what a pool may open ahead."""
    return [
        (aim_run_hash(w.run.run_id), bool(w.changed_keys))
        for w in works
        if isinstance(w.run, RunRecord) and (w.meta_changed or w.changed_keys)
    ]


def prefetch_runs(source: Source, works: list[RunWork]) -> None:
    items = [(w.run, w.changed_keys, w.cursors) for w in works if isinstance(w.run, RunRecord) and w.changed_keys]
    if len(items) > 1:
        source.prefetch(items)
