"""A round's runs spread over worker processes (a backfill of many runs).

Aim allows one writer per run, so runs are spread over processes; each worker opens the same
store, repo and state with the function it is given (`runner.open_driver` with
`role="worker"`: an `OpenAndClose(index=False)` pool), commits its own cursors (sqlite WAL) and
hands back what it wrote; the parent indexes every run once at the end. A stop in the parent
(SIGINT, SIGTERM) reaches every worker, which stops at its next safe point."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import Stopped
from .plan import Plan, RunWork
from .round_stats import RoundStats

if TYPE_CHECKING:
    from .config import Config
    from .rounds import RoundDriver

_Result = tuple[RoundStats, list[str]]  # what a worker did, and the runs it left unindexed


@dataclass(frozen=True)
class WorkerPool:
    """`count` processes, each opening its own round driver with `open_worker(cfg)` (a module
    function: it travels to the spawned process by name)."""

    count: int
    cfg: Config
    open_worker: Callable[[Config], RoundDriver]

    def __call__(self, plan: Plan, stats: RoundStats, driver: RoundDriver) -> None:
        sync_in_workers(plan, stats, driver, self)


def sync_in_workers(plan: Plan, stats: RoundStats, driver: RoundDriver, spec: WorkerPool) -> None:
    from .aim import index_runs

    workers, cfg = spec.count, spec.cfg

    unindexed: list[str] = []
    todo = sorted(plan.todo, key=lambda w: -w.size)  # big runs first: no worker left with one long run at the end
    ctx = multiprocessing.get_context("spawn")  # no fork of open RocksDB/sqlite handles
    stop = ctx.Event()  # set: every worker stops at its next chunk (cursors are committed per chunk)
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_worker_init, initargs=(cfg, stop, spec.open_worker)
    )

    def completed(pending: set[Future[_Result]]) -> Iterator[Future[_Result]]:
        while pending:
            if driver.stop.is_set():
                stop.set()
                raise Stopped()
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            yield from done

    # runs a worker takes at once (their histories fetched together), every worker given some
    window = max(1, min(driver.source.prefetch_runs, -(-len(todo) // workers)))
    try:
        futures = completed(
            {pool.submit(_worker_sync, todo[i : i + window], plan.names) for i in range(0, len(todo), window)}
        )
        for fut in driver.progress(futures) if driver.progress else futures:
            try:
                part, hashes = fut.result()
            except Stopped:
                continue
            stats.add(part)
            unindexed.extend(hashes)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # runs not started are dropped
        missed = index_runs(driver.repo, unindexed)
        if missed:
            stats.errors.append(f"{len(missed)} Aim run(s) could not be indexed now; `aim up` indexes them itself")


_worker: RoundDriver | None = None


def _worker_init(cfg: Config, stop: Any, open_worker: Callable[[Config], RoundDriver]) -> None:
    global _worker
    from .logs import configure_logging

    _die_with_parent()
    configure_logging(cfg.log_level, cfg.log_format)
    _worker = worker = open_worker(cfg)

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
    try:
        _worker.sync_works(works, names, stats, progress=False)
    except Stopped:  # at a safe point: what was written is handed back, for the parent to index
        pass
    stats.read = _worker.planner.reads.snapshot()
    return stats, _worker.pool.take_unindexed()


def _die_with_parent() -> None:
    """A SIGKILLed backfill must not leave workers behind holding Aim run locks: exit as soon
    as the parent is gone (its cursors are committed per run, so nothing is lost)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
