"""Wiring: a Config becomes a Syncer with its source, Aim repo and state opened."""

from __future__ import annotations

import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable, Iterable

from .config import Config, configure_logging
from .pipeline import RoundStats, Syncer, select_experiments
from .sink import heal_index, index_runs, open_repo
from .source import local_path, open_source, redact
from .state import State

log = logging.getLogger("syncer")


def source_identity(uri: str) -> str:
    """The key cursors are stored under: stable across spellings of the same local store."""
    path = local_path(uri)
    if path is not None:
        scheme = "sqlite" if uri.startswith("sqlite:") else "file"
        return f"{scheme}://{path.expanduser().resolve()}"
    return redact(uri).rstrip("/")


def heal(syncer: Syncer) -> None:
    """Once per process that writes (the backfill's parent, the daemon; not the workers): make
    visible the runs an interrupted sync left out of Aim's run index."""
    healed = heal_index(syncer.repo)
    if healed:
        log.info("made %d Aim run(s) visible that an interrupted sync had left unindexed", len(healed))


def open_syncer(cfg: Config, *, strict_experiments: bool, must_exist: bool,
                progress: Callable[[Iterable], Iterable] | None = None) -> Syncer:
    """A Syncer with its source, Aim repo and state open; `Syncer.close()` closes them."""
    options = cfg.options(strict_experiments=strict_experiments)
    source = open_source(cfg.tracking_uri, must_exist=must_exist)
    if must_exist:  # bad input fails here, before an Aim repo is created for it
        select_experiments(source.experiments(), options)
    repo, created = open_repo(cfg.aim_repo)
    if created:
        log.info("created a new Aim repo at %s", cfg.aim_repo)
    state = State(cfg.state_path, source_identity(cfg.tracking_uri), cfg.experiments)
    return Syncer(source, repo, state, options, progress=progress)


# ---------------------------------------------------------------------------------------------
# backfill with worker processes: Aim allows one writer per run, so runs are spread over
# processes; each commits its own cursors (sqlite WAL); the parent indexes every run once.

PARALLEL_MIN_RUNS = 8  # below this, starting worker processes costs more than it saves

_worker: Syncer | None = None


def _worker_init(cfg: Config) -> None:
    global _worker
    _die_with_parent()
    configure_logging(cfg.log_level, cfg.log_format)
    _worker = open_syncer(cfg, strict_experiments=False, must_exist=True)
    _worker.index_on_close = False


def _worker_sync(exp, run, names) -> tuple[RoundStats, list[str]]:
    assert _worker is not None
    stats = RoundStats()
    _worker.unindexed.clear()
    _worker.sync_one(exp, run, names, stats)
    return stats, list(_worker.unindexed)


def _die_with_parent() -> None:
    """A SIGKILLed backfill must not leave workers behind holding Aim run locks: exit as soon
    as the parent is gone (its cursors are committed per run, so nothing is lost)."""
    import os
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def backfill_round(cfg: Config, syncer: Syncer, workers: int) -> RoundStats:
    """One round over the whole store, spread over `workers` processes when it is worth it."""
    t0 = time.monotonic()
    heal(syncer)
    plan = syncer.plan()
    if workers <= 1 or len(plan.todo) < PARALLEL_MIN_RUNS:
        stats = RoundStats(experiments=len(plan.experiments), runs=plan.runs)
        items = syncer.progress(plan.todo) if (syncer.progress and plan.todo) else plan.todo
        for exp, run in items:
            syncer.sync_one(exp, run, plan.names, stats)
        return syncer.finish(stats, t0)

    stats = RoundStats(experiments=len(plan.experiments), runs=plan.runs)
    unindexed: list[str] = []
    # big runs first, so no worker is left with one long run at the end
    todo = sorted(plan.todo, key=lambda er: -sum(v for v in getattr(er[1], "metric_marks", {}).values()
                                                   if isinstance(v, int)))
    ctx = multiprocessing.get_context("spawn")  # no fork of open RocksDB/sqlite handles
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init, initargs=(cfg,)) as pool:
        futures = [pool.submit(_worker_sync, exp, run, plan.names) for exp, run in todo]
        done = as_completed(futures)
        for fut in (syncer.progress(done) if syncer.progress else done):
            part, hashes = fut.result()
            stats.runs_written += part.runs_written
            stats.points += part.points
            stats.artifacts += part.artifacts
            stats.errors.extend(part.errors)
            unindexed.extend(hashes)
    missed = index_runs(syncer.repo, unindexed)
    if missed:
        stats.errors.append(f"{len(missed)} Aim run(s) could not be indexed now; `aim up` indexes them itself")
    return syncer.finish(stats, t0)
