"""A round's runs spread over processes (a backfill of many runs, a daemon's first round).

Aim allows one writer per run, so runs are spread over processes: the round's own process and
helper processes. Each helper opens the same store, repo and state with the function it is given
(`runner.open_driver` with `role="worker"`), writes its runs in batches like the parent (indexed
by the helper that wrote them) and commits its own cursors (sqlite WAL). The runs go out in
windows: the largest first to the helpers, the smallest from the end of the list to the round's
own process, which also takes back a window no helper has started yet. A helper costs a Python
start-up with MLflow and Aim imported (about 2 CPU seconds): `default_workers` says when helpers
pay for that. A stop in the parent (SIGINT, SIGTERM) reaches every helper, which stops at its
next safe point."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

from .errors import Stopped
from .plan import Plan, RunWork
from .round_stats import RoundStats
from .sources import RunRecord

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .config import Config
    from .rounds import RoundDriver

_Result = tuple[RoundStats, list[str]]  # what a helper did, and the runs it left unindexed

# The default number of processes: one, plus a helper for every HELPER_WORK_S CPU seconds the
# round is estimated to take (a run: RUN_COST_S; a point: POINT_COST_S; a file store's point is
# about POINT_BYTES bytes of its metric file), at most MAX_WORKERS and the CPUs.
RUN_COST_S = 0.03
POINT_COST_S = 2e-6
POINT_BYTES = 25
HELPER_WORK_S = 8.0
MAX_WORKERS = 4  # (the rule, in words: `syncer backfill --help`, cli.WORKERS_HELP)


def estimated_work_s(todo: list[RunWork]) -> float:
    """CPU seconds a round is estimated to take to write these runs."""
    runs = sum(1 for w in todo if isinstance(w.run, RunRecord) and (w.meta_changed or w.changed_keys))
    points = 0
    for w in todo:
        if not isinstance(w.run, RunRecord):
            continue
        marks = w.run.metric_marks
        for k in w.changed_keys:
            mark = marks.get(k)
            if mark is None:
                continue
            if mark.size is not None:  # a file store: bytes not read yet
                cur = w.cursors.get(k)
                done = getattr(cur, "offset", 0) if cur is not None else 0
                points += max(0, mark.size - done) // POINT_BYTES
            elif mark.last_step is not None and mark.last_step >= 0:
                cur = w.cursors.get(k)
                points += max(0, mark.last_step + 1 - (cur.points if cur is not None else 0))
    return runs * RUN_COST_S + points * POINT_COST_S


def default_workers(todo: list[RunWork], cpus: int | None = None) -> int:
    """How many processes write a round by default (see WORKERS_RULE)."""
    cpus = cpus if cpus is not None else (os.cpu_count() or 1)
    helpers = int(estimated_work_s(todo) // HELPER_WORK_S)
    return max(1, min(1 + helpers, MAX_WORKERS, cpus))


class WorkerPool:
    """Up to `count` processes for a large round (None: `default_workers` decides per round):
    the round's own and helpers, each helper opening its own round driver with
    `open_worker(cfg)` (a module function: it travels to the spawned process by name). Helpers
    stay between the slices of a daemon's catching up, and exit when it is done (or `close`)."""

    def __init__(
        self, count: int | None, cfg: Config, open_worker: Callable[[Config], RoundDriver], *, min_runs: int = 8
    ):
        self.count = count
        self.cfg = cfg
        self.open_worker = open_worker
        self.min_runs = min_runs  # fewer runs than this never start a helper
        self._pool: ProcessPoolExecutor | None = None
        self._stop: Any = None  # the helpers' stop event
        self._helpers = 0

    def workers_for(self, works: list[RunWork]) -> int:
        if len(works) < self.min_runs:
            return 1
        return self.count if self.count is not None else default_workers(works)

    def __call__(
        self, works: list[RunWork], plan: Plan, stats: RoundStats, driver: RoundDriver, urgent: int, until: float | None
    ) -> list[RunWork] | None:
        """Sync these works over the processes this round gets, the first `urgent` ones here and
        first; None when it gets one (the caller syncs them itself). Returns the works left for
        a later slice (past `until`)."""
        workers = self.workers_for(works)
        if workers < 2:
            self.close()
            return None
        if self._pool is None:
            log.info("%d run(s) to write: %d processes side by side", len(works), workers)
        driver.sync_works(works[:urgent], plan.names, stats, progress=False)
        left = self._sync(works[urgent:], plan, stats, driver, workers - 1, until)
        if not left:
            self.close()
        return left

    def _executor(self, helpers: int) -> tuple[ProcessPoolExecutor, Any]:
        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")  # no fork of open RocksDB/sqlite handles
            self._stop = ctx.Event()  # set: every helper stops at its next safe point
            self._pool = ProcessPoolExecutor(
                max_workers=helpers,
                mp_context=ctx,
                initializer=_worker_init,
                initargs=(self.cfg, self._stop, self.open_worker),
            )
            self._helpers = helpers
        return self._pool, self._stop

    def _sync(
        self,
        works: list[RunWork],
        plan: Plan,
        stats: RoundStats,
        driver: RoundDriver,
        helpers: int,
        until: float | None,
    ) -> list[RunWork]:
        from .aim import index_runs

        pool, stop = self._executor(helpers)
        spread = _Spread(pool, stop, self._helpers, plan, stats, driver, until)
        spread.windows.extend(_windows(works, self._helpers + 1, driver.source.prefetch_runs))
        try:
            for _ in driver.each(spread.done_windows()) if driver.progress else spread.done_windows():
                pass
        except BaseException:
            self.close()  # a stop or a failure: the helpers stop at their next safe point
            raise
        finally:
            missed = index_runs(driver.repo, spread.unindexed)
            if missed:
                stats.errors.append(f"{len(missed)} Aim run(s) could not be indexed now; `aim up` indexes them itself")
        return [w for chunk in spread.windows for w in chunk]

    def close(self) -> None:
        """The helpers stop at their next safe point and exit; windows not started are dropped."""
        pool, self._pool = self._pool, None
        if pool is not None:
            if self._stop is not None:
                self._stop.set()
            pool.shutdown(wait=True, cancel_futures=True)


class _Spread:
    """One round's windows of runs between this process and the helpers: the largest to the
    helpers, the smallest here meanwhile; past `until`, what no helper started waits."""

    def __init__(
        self,
        pool: ProcessPoolExecutor,
        stop: Any,
        helpers: int,
        plan: Plan,
        stats: RoundStats,
        driver: RoundDriver,
        until: float | None,
    ) -> None:
        self.pool, self.stop, self.helpers = pool, stop, helpers
        self.plan, self.stats, self.driver, self.until = plan, stats, driver, until
        self.windows: deque[list[RunWork]] = deque()
        self.in_flight: dict[Future[_Result], list[RunWork]] = {}
        self.unindexed: list[str] = []

    def take_back(self) -> list[list[RunWork]]:
        """The windows no helper has started yet."""
        return [self.in_flight.pop(f) for f in [f for f in self.in_flight if f.cancel()]]

    def done_windows(self) -> Iterator[int]:
        """Runs each window done had, as windows get done (here or by a helper)."""
        try:
            yield from self._done_windows()
        except BrokenProcessPool:
            # a helper ended by the signal that stops us too (Ctrl-C reaches the whole group; our
            # own handler may run a moment after the helper died): a stop, not a failure
            if self.driver.stop.wait(2.0):
                self.stop.set()
                raise Stopped() from None
            raise

    def _done_windows(self) -> Iterator[int]:
        begun = False  # every slice gets on with it: its first windows go out whatever the time
        while self.windows or self.in_flight:
            if self.driver.stop.is_set():
                self.stop.set()
                raise Stopped()
            late = begun and self.until is not None and time.monotonic() >= self.until
            begun = True
            if late:  # the slice is over: what no helper started waits for the next one
                self.windows.extendleft(self.take_back())
                if not self.in_flight:
                    return
            else:
                self._hand_out()
            if self.windows and not late:  # the smallest here, meanwhile
                yield self._write_here()
            else:
                wait(set(self.in_flight), timeout=0.5, return_when=FIRST_COMPLETED)
            yield from self._collect()
        if self.driver.stop.is_set():  # the helpers stopped (a signal to the group) and said nothing else
            raise Stopped()

    def _hand_out(self) -> None:
        while self.windows and len(self.in_flight) < 2 * self.helpers:  # the largest to the helpers
            chunk = self.windows.popleft()
            self.in_flight[self.pool.submit(_worker_sync, chunk, self.plan.names)] = chunk
        if not self.windows:  # nothing to take here: take back what no helper started
            self.windows.extend(self.take_back())

    def _write_here(self) -> int:
        mine = self.windows.pop()
        t0 = time.monotonic()
        rest = self.driver.sync_works(mine, self.plan.names, self.stats, progress=False, until=self.until)
        log.debug("wrote %d run(s) here in %.2f s", len(mine) - len(rest), time.monotonic() - t0)
        if rest:
            self.windows.append(rest)
        return len(mine) - len(rest)

    def _collect(self) -> Iterator[int]:
        for fut in [f for f in self.in_flight if f.done()]:
            chunk = self.in_flight.pop(fut)
            part, hashes = fut.result()
            log.debug("a helper wrote %d run(s) in %.2f s", len(chunk), part.seconds)
            self.stats.add(part)
            self.unindexed.extend(hashes)
            yield len(chunk)


def _windows(todo: list[RunWork], processes: int, prefetch: int) -> list[list[RunWork]]:
    """The runs in windows, largest runs first: each a batch's worth (at most 64 runs), several
    per process, so that the processes finish together."""
    size = max(prefetch, min(64, -(-len(todo) // (processes * 4))))
    todo = sorted(todo, key=lambda w: -w.size)
    return [todo[i : i + size] for i in range(0, len(todo), size)]


_worker: RoundDriver | None = None


def _worker_init(cfg: Config, stop: Any, open_worker: Callable[[Config], RoundDriver]) -> None:
    global _worker
    import gc

    from .logs import configure_logging

    # a stop while starting (Ctrl-C at once) is kept for the worker: Python's default would end
    # the initializer with KeyboardInterrupt, which breaks the whole pool
    early = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _signum, _frame: early.set())
    _die_with_parent()
    configure_logging(cfg.log_level, cfg.log_format)
    _worker = worker = open_worker(cfg)
    gc.freeze()  # what start-up made lives until the end: no collection looks at it again
    if early.is_set():
        worker.stop.set()

    def relay() -> None:  # the parent's stop, as this worker's own
        stop.wait()
        worker.stop.set()

    threading.Thread(target=relay, name="stop-relay", daemon=True).start()
    # Ctrl-C reaches the whole process group, a service manager's SIGTERM often too: a worker
    # stops at its next safe point like its parent, never in the middle of a chunk
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _signum, _frame: worker.stop.set())


def _worker_sync(works: list[RunWork], names: dict[str, str]) -> _Result:
    assert _worker is not None
    stats = RoundStats()
    _worker.planner.reads.reset(full=False)
    t0 = time.monotonic()
    try:
        _worker.sync_works(works, names, stats, progress=False)
    except Stopped:  # at a safe point: what was written is committed; handed back, for the parent to index
        pass
    stats.seconds = time.monotonic() - t0
    stats.read = _worker.planner.reads.snapshot()
    return stats, _worker.pool.take_unindexed()


def _die_with_parent() -> None:
    """A SIGKILLed backfill must not leave workers behind holding Aim run locks: exit as soon
    as the parent is gone (its cursors are committed per batch, so nothing is lost)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
