"""The one round driver, for the daemon and for backfill: plan, then sync every run with
something new, in this process or spread over worker processes, stopping at a safe point when
asked; then settle the Aim runs kept open and record the round.

Worker processes: Aim allows one writer per run, so runs are spread over processes; each
commits its own cursors (sqlite WAL); the parent indexes every run once at the end."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from .config import Config
from .errors import Stopped
from .pipeline import RoundStats, Syncer
from .plan import Plan, RunWork
from .sources.listing import ReadStats

log = logging.getLogger("syncer")

PARALLEL_MIN_RUNS = 8  # below this, starting worker processes costs more than it saves


def run_round(syncer: Syncer, *, full: bool = False, workers: int = 1, cfg: Config | None = None) -> RoundStats:
    """One round over the store (`full`: every run looked at, as backfill does). `workers` > 1
    (and a `cfg` for the workers to open the same store, repo and state with) spreads the runs
    over processes when there are enough."""
    t0 = time.monotonic()
    plan = syncer.plan(full=full)
    stats = RoundStats(experiments=len(plan.experiments), runs=plan.runs, still_failing=plan.still_failing)
    syncer.warn_still_failing(plan.still_failing)
    if workers > 1 and cfg is not None and len(plan.todo) >= PARALLEL_MIN_RUNS and syncer.kept is None:
        _in_workers(syncer, plan, stats, workers, cfg)
    else:
        window = syncer.source.prefetch_runs
        items = syncer.progress(plan.todo) if (syncer.progress and plan.todo) else plan.todo
        for i, work in enumerate(items):
            if syncer.stop.is_set():
                raise Stopped()
            if i % window == 0:
                syncer.prefetch(plan.todo[i : i + window])
            syncer.sync_one(work, plan.names, stats)
    if syncer.kept is not None:
        syncer.kept.settle(plan.active)
    return syncer.finish(stats, t0)


def _in_workers(syncer: Syncer, plan: Plan, stats: RoundStats, workers: int, cfg: Config) -> None:
    from .aim import index_runs

    unindexed: list[str] = []
    todo = sorted(plan.todo, key=lambda w: -w.size)  # big runs first: no worker left with one long run at the end
    ctx = multiprocessing.get_context("spawn")  # no fork of open RocksDB/sqlite handles
    stop = ctx.Event()  # set: every worker stops at its next chunk (cursors are committed per chunk)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init, initargs=(cfg, stop))

    def completed(pending: set[Future[tuple[RoundStats, list[str]]]]) -> Iterator[Future[tuple[RoundStats, list[str]]]]:
        while pending:
            if syncer.stop.is_set():
                stop.set()
                raise Stopped()
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            yield from done

    # runs a worker takes at once (their histories fetched together), every worker given some
    window = max(1, min(syncer.source.prefetch_runs, -(-len(todo) // workers)))
    try:
        futures = completed(
            {pool.submit(_worker_sync, todo[i : i + window], plan.names) for i in range(0, len(todo), window)}
        )
        for fut in syncer.progress(futures) if syncer.progress else futures:
            try:
                part, hashes = fut.result()
            except Stopped:
                continue
            stats.add(part)
            unindexed.extend(hashes)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # runs not started are dropped
        missed = index_runs(syncer.repo, unindexed)
        if missed:
            stats.errors.append(f"{len(missed)} Aim run(s) could not be indexed now; `aim up` indexes them itself")


_worker: Syncer | None = None


def _worker_init(cfg: Config, stop: Any) -> None:
    global _worker
    from .logs import configure_logging
    from .runner import open_syncer

    _die_with_parent()
    configure_logging(cfg.log_level, cfg.log_format)
    _worker = open_syncer(cfg, strict_experiments=False, must_exist=True)
    _worker.index_on_close = False
    worker = _worker

    def relay() -> None:  # the parent's stop, as this worker's own
        stop.wait()
        worker.stop.set()

    threading.Thread(target=relay, name="stop-relay", daemon=True).start()
    # Ctrl-C reaches the whole process group, a service manager's SIGTERM often too: a worker
    # stops at its next safe point like its parent, never in the middle of a chunk
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _signum, _frame: worker.stop.set())


def _worker_sync(works: list[RunWork], names: dict[str, str]) -> tuple[RoundStats, list[str]]:
    assert _worker is not None
    stats = RoundStats()
    _worker.unindexed.clear()
    _worker.source.listing.stats = ReadStats()
    try:
        _worker.prefetch(works)
        for work in works:
            if _worker.stop.is_set():
                raise Stopped()
            _worker.sync_one(work, names, stats)
    except Stopped:  # at a safe point: what was written is handed back, for the parent to index
        pass
    stats.read = _worker.source.listing.stats.as_dict()
    return stats, list(_worker.unindexed)


def _die_with_parent() -> None:
    """A SIGKILLed backfill must not leave workers behind holding Aim run locks: exit as soon
    as the parent is gone (its cursors are committed per run, so nothing is lost)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
