"""`syncer sync`: scheduling, file events, signals, retries. Knows nothing about metric keys.

One apscheduler interval job runs the rounds (never two at once; missed runs coalesced). On a
local store a watchdog observer pulls the job's next run forward to "shortly" after a change
(debounced), so new points reach Aim in about a second instead of a whole interval.

Between rounds the round driver keeps the Aim writer of each RUNNING run open
(`sink_pool.KeepOpen`), so a round with a few new points only writes and flushes them. Those
writers are used by one round at a time (apscheduler's worker threads, never two rounds at once)
and closed by the pool when their run ends, or by `shutdown()` on the main thread once the round
in flight has ended (it holds the round lock meanwhile, so no round starts): each run's lock is
released and its index entry brought up to date.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TypeVar

from apscheduler.events import EVENT_JOB_MAX_INSTANCES
from apscheduler.schedulers.background import BackgroundScheduler
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from .config import Config
from .errors import Fatal, RepoFull, RetryLater, Stopped, StoreError, StoreUnavailable, one_line
from .retry import backoff_delay
from .rounds import RoundDriver
from .runner import heal, open_driver
from .service_health import RoundObserver
from .sources import StoreLocation

log = logging.getLogger("syncer.daemon")
T = TypeVar("T")

DEBOUNCE_S = 0.2  # wait this long after a file event: MLflow writes a batch as several files
# ... but a round starts at most this long after the first change, however many events follow (a
# job logging every 0.1 s would otherwise push it back forever)
MAX_EVENT_DELAY_S = 0.5
JOB_ID = "round"
# SIGTERM to exit within 10 s (deploy/README.md): the round in flight gets this long to reach a
# safe point (a request to MLflow is not waited for: `sources.http_calls`); one that has not by
# then (a write that hangs) is left behind, like a SIGKILL: nothing committed is lost, and what
# it had not committed is read again at the next start
STOP_GRACE_S = 7.0
# only what a writer does: with reads included (open / close-without-write), a round's own
# directory listings flood inotify's queue, and watchdog re-walks the whole store on every
# overflow, which lists every directory again (a 1,000-run store kept a core busy)
WRITER_EVENTS = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileClosedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    DirCreatedEvent,
    DirMovedEvent,
    DirDeletedEvent,
]

# a store that appears while the daemon waits for it is being made: MLflow creates a database's
# tables, then migrates them revision by revision; what it looks like meanwhile (no tables yet, an
# older schema) is not final for this long after it first answered so
APPEARING_GRACE_S = 120.0

# without inotify, how long until watching the store is tried again (an instance freed, a limit
# raised); meanwhile the rounds every --interval find the changes
WATCH_RETRY_S = 300.0
INOTIFY_LIMITS = {
    errno.EMFILE: ("instance", "max_user_instances", 1024),
    errno.ENOSPC: ("watch", "max_user_watches", 524288),
}


def watch_unavailable(path: Path, e: OSError, interval: float) -> str:
    """The one warning when a store cannot be watched: file events are off, why, and the fix."""
    found = INOTIFY_LIMITS.get(e.errno or 0)
    head = f"file events are off: cannot watch {path} for changes"
    tail = f"new data now arrives with the rounds (every {interval:g} s), not as soon as files change"
    if found is None:
        return f"{head} ({e.strerror or e}); {tail}"
    what, knob, suggested = found
    try:
        now = Path(f"/proc/sys/fs/inotify/{knob}").read_text().strip()
    except OSError:
        now = "?"
    return (
        f"{head}: this user's inotify {what} limit is reached (fs.inotify.{knob} = {now}, "
        f"shared by every process of the user); {tail}. To get them back, raise the limit "
        f"(`sysctl fs.inotify.{knob}={suggested}`, kept across reboots in /etc/sysctl.d/) "
        f"or stop processes holding inotify {what}s; the syncer tries again every "
        f"{WATCH_RETRY_S / 60:g} minutes"
    )


def _stop_race(record: logging.LogRecord) -> bool:
    """Drops watchdog's "InotifyEmitter.queue_events() called when the thread is inactive", an
    ERROR its emitter thread logs when it reads once more after the observer's stop (a race of
    watchdog's own: it then returns as if no event came; gorakhargosh/watchdog#963): a normal
    stop is not an error."""
    return "called when the thread is inactive" not in record.getMessage()


class _Kick(FileSystemEventHandler):
    def __init__(self, daemon: Daemon, only: Path | None):
        self.daemon = daemon
        self.only = only  # for sqlite: the database file (and its -wal/-journal)

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        if self.only is not None and not str(event.src_path).startswith(str(self.only)):
            return
        paths = [str(event.src_path)]
        if getattr(event, "dest_path", None):
            paths.append(str(event.dest_path))
        self.daemon.kick(paths)


class Daemon:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.location = StoreLocation.parse(cfg.tracking_uri)
        self.stopping = threading.Event()
        self.fatal: str | None = None
        # why the last round failed (the store unreachable, the Aim repo's filesystem full, a bug),
        # None once a round went well: the health file is touched only while this is None (the
        # metrics endpoint hears the same through `observe.round_failed`)
        self._failing: str | None = None
        self._ever_opened = False  # the store was opened once (before: waiting for it to appear)
        self._was_missing = False  # the store was not there when first looked for
        self._appeared_at: float | None = None  # when a store that was missing first answered
        self.driver: RoundDriver | None = None
        self._failures = 0
        self._dirty = threading.Event()
        self._running = threading.Lock()
        self._kick_lock = threading.Lock()
        self._paths: set[str] = set()  # named by file events since the last round started
        self._first_kick: float | None = None
        self.scheduler = BackgroundScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
        )
        self.observer: BaseObserver | None = None
        self._watch_failed = False  # warned that file events are off
        self._watch_retry_at = 0.0  # monotonic time before which no new watch is tried
        self._catching_up: float | None = None  # when the rounds catching up with the store began
        self.observe = self._observer()  # the metrics endpoint, or no one

    def _observer(self) -> RoundObserver:
        """Who hears how the rounds go: the metrics endpoint (--metrics-port), else no one."""
        if self.cfg.metrics_port is None:
            return RoundObserver()
        from .service_metrics import ServiceMetrics

        return ServiceMetrics(
            self.cfg.interval, self.cfg.metrics_host, self.cfg.metrics_port, loop_running=lambda: self.scheduler.running
        )

    # -- rounds ------------------------------------------------------------------------------
    def _open(self) -> RoundDriver:
        if self.driver is None:
            self.driver = open_driver(
                self.cfg,
                strict_experiments=False,
                must_exist=False,
                role="daemon",
                workers=self.cfg.workers,
                progress=self._beat,
            )
            self._ever_opened = True
            heal(self.driver)
            if self.stopping.is_set():
                self.driver.stop.set()
        return self.driver

    def _close(self) -> None:
        if self.driver is not None:
            self.driver.close()
        self.driver = None

    def round(self) -> None:
        if self.stopping.is_set():
            return
        with self._running:
            if self.stopping.is_set():  # checked again under the lock shutdown() takes
                return
            self._dirty.clear()
            with self._kick_lock:
                paths, self._paths, self._first_kick = self._paths, set(), None
            self.observe.round_started()
            try:
                stats = self._open().round(paths=paths)
            except Stopped:
                log.info("round cut short: stopping")
                self.observe.round_skipped(cut=True)
                return
            except RetryLater as e:  # unreachable, or a store that answered before refusing a read
                self.observe.round_failed(str(e), source=not isinstance(e, RepoFull))  # a full disk is not MLflow's
                if isinstance(e, RepoFull):  # not ready at once, saying why (MLflow answers)
                    self.observe.problem("full_disk", str(e))
                self._note_missing(e)
                self._retry_later(str(e))
                return
            except Fatal as e:  # an unusable Aim repo, changed library internals, bad input
                if self._still_appearing(e):
                    self.observe.round_failed(str(e), source=True)
                    self._retry_later(f"{e} (the store appeared a moment ago: looked at again)")
                    return
                self.observe.round_failed(str(e))
                self._die(str(e))
                return
            except Exception as e:  # a bug or an unexpected failure: log it, keep the daemon alive
                log.error(
                    "round failed: %s: %s", type(e).__name__, one_line(e), exc_info=log.isEnabledFor(logging.DEBUG)
                )
                self.observe.round_failed(f"{type(e).__name__}: {one_line(e)}")
                self._retry_later(None, f"round failed: {type(e).__name__}: {one_line(e)}")
                return
            self.observe.round_ended(stats)
            if self._failures:
                log.info("MLflow store %s is readable; catching up", self._describe())
            self._failures = 0
            self._failing = None
            self.observe.problem("full_disk", None)
            lvl = logging.INFO if (stats.runs_written or stats.errors) else logging.DEBUG
            log.log(lvl, "round: %s", stats.summary(), extra={"event": "round", "round": stats.as_dict()})
            self._caught_up(stats.backlog, stats.seconds)
            if not stats.errors:  # a run another writer holds is not the daemon's failure
                self._touch_health()
            self._ensure_watch()
        if self._dirty.is_set():  # changes arrived while we were busy
            self.kick()

    def _note_missing(self, e: RetryLater) -> None:
        if isinstance(e, StoreUnavailable) and not self._ever_opened:
            self._was_missing = True

    def _still_appearing(self, e: Fatal) -> bool:
        """A store that was missing and now says it is no store of ours may still be being made
        (a database MLflow is creating and migrating): looked at again for APPEARING_GRACE_S."""
        if not (isinstance(e, StoreError) and self._was_missing and not self._ever_opened):
            return False
        now = time.monotonic()
        if self._appeared_at is None:
            self._appeared_at = now
        return now - self._appeared_at < APPEARING_GRACE_S

    def _caught_up(self, backlog: int, seconds: float) -> None:
        """A store with runs never synced is caught up with in slices (`RoundDriver.slice_s`):
        the next one starts at once; the time it all took is said when done."""
        if backlog:
            if self._catching_up is None:
                self._catching_up = time.monotonic() - seconds
            self._dirty.set()  # the next round as soon as this one is over
        elif self._catching_up is not None:
            log.info("caught up with the store in %.1f s", time.monotonic() - self._catching_up)
            self._catching_up = None

    def _beat(self, runs: Iterable[T]) -> Iterator[T]:
        """Runs of a round, touching the health file after each: a first round that backfills a
        large server takes long, and is healthy while it makes progress."""
        for run in runs:
            yield run
            self._touch_health()
            self.observe.beat()

    def _touch_health(self) -> None:
        """Touched while healthy only: after a failed round, not again until a round goes well
        (a round failing at the same place each time may still write other runs first)."""
        if self.cfg.health_file and self._failing is None:
            self.cfg.health_file.parent.mkdir(parents=True, exist_ok=True)
            self.cfg.health_file.touch()

    def _retry_later(self, message: str | None, why: str | None = None) -> None:
        self._failures += 1
        self._failing = message or why or "the last round failed"
        delay = backoff_delay(self._failures, self.cfg.interval)
        if not self._ever_opened:  # a store not there yet: looked for every interval, not less often
            delay = min(delay, self.cfg.interval)
        if message:
            log.warning("%s; retrying in %.0f s", message, delay)
        if self.driver is not None and self._failures > 1:
            self._close()  # reconnect from scratch next time
        self._reschedule(delay)

    def _die(self, message: str) -> None:
        self.fatal = self._failing = message
        log.error(message)
        self.observe.stopping(message)
        self.stopping.set()

    def _reschedule(self, delay: float) -> None:
        if self.stopping.is_set():
            return  # shutting down: nothing more to schedule
        try:
            self.scheduler.modify_job(JOB_ID, next_run_time=datetime.now() + timedelta(seconds=delay))
        except Exception:  # the scheduler is shutting down
            pass

    def kick(self, paths: list[str] | None = None) -> None:
        """Something changed on disk (these paths): run a round shortly, coalesced with other
        changes, and at most MAX_EVENT_DELAY_S after the first of them."""
        with self._kick_lock:
            self._paths.update(paths or ())
            now = time.monotonic()
            if self._first_kick is None:
                self._first_kick = now
            delay = max(0.0, min(DEBOUNCE_S, self._first_kick + MAX_EVENT_DELAY_S - now))
        self._dirty.set()
        if not self._running.locked():
            self._reschedule(delay)

    # -- file events -------------------------------------------------------------------------
    def _ensure_watch(self) -> None:
        """Watch a local store for changes; where inotify is out of instances or watches, go on
        without file events (one warning) and try again every WATCH_RETRY_S."""
        if not self.cfg.watch or self.observer is not None or time.monotonic() < self._watch_retry_at:
            return
        path = self.location.path
        if path is None or not path.exists():
            return
        path = path.resolve()
        watch_dir, only = (path, None) if path.is_dir() else (path.parent, path)
        observer: BaseObserver | None = None
        logging.getLogger("watchdog.observers.inotify").addFilter(_stop_race)
        try:
            observer = Observer()  # inotify_init: EMFILE when this user has no instance left
            observer.schedule(_Kick(self, only), str(watch_dir), recursive=path.is_dir(), event_filter=WRITER_EVENTS)
            observer.daemon = True
            observer.start()  # inotify_add_watch per folder: ENOSPC when out of watches
        except OSError as e:
            if observer is not None:
                observer.stop()  # closes its inotify instance and the watches it got
            self._watch_retry_at = time.monotonic() + WATCH_RETRY_S
            if self._watch_failed:
                log.debug("still no file events for %s: %s", path, e)
            else:
                self._watch_failed = True
                log.warning("%s", watch_unavailable(path, e, self.cfg.interval))
            return
        self.observer = observer
        if self._watch_failed:
            log.info("file events are on again: watching %s for changes", path)
        else:
            log.info("watching %s for changes", path)

    # -- life cycle --------------------------------------------------------------------------
    def run(self) -> int:
        # bad input fails now, with a one-line error; a store or server that is not there
        # *yet* (a sidecar starting first) is waited for
        from .aim import open_repo

        self.observe.start()  # the metrics port first: probes answer while the rest starts
        try:
            try:
                self._open()  # a bad URI, a repo inside the store: one line, exit 2, nothing created
            except RetryLater as e:  # a server is first asked by the first round; a store may come later
                log.warning("%s", e)
                self.observe.source_failed(str(e))
                self._note_missing(e)
                self._failing = str(e)
                try:
                    open_repo(self.cfg.aim_repo)  # an unusable Aim repo is fatal at once; made for the store to come
                except RetryLater as full:  # no room for it: waited for, like the store
                    log.warning("%s", full)
        except BaseException:
            self.observe.close()
            raise
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        log.info("syncing %s -> %s every %.3g s", self._describe(), self.cfg.aim_repo, self.cfg.interval)
        if self.cfg.metrics_port is not None:
            log.info(
                "metrics on http://%s:%d/metrics (probes: /healthz, /readyz)",
                self.cfg.metrics_host,
                self.cfg.metrics_port,
            )
        self.scheduler.add_job(
            self.round, "interval", seconds=self.cfg.interval, id=JOB_ID, next_run_time=datetime.now()
        )
        self.scheduler.add_listener(lambda _event: self.observe.round_skipped(), EVENT_JOB_MAX_INSTANCES)
        self.scheduler.start()
        while not self.stopping.wait(0.5):
            pass
        return self.shutdown()

    def _describe(self) -> str:
        return self.location.display

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: finishing the current round and stopping", signal.Signals(signum).name)
        self.observe.stopping(f"received {signal.Signals(signum).name}")
        self.stopping.set()
        if self.driver is not None:
            self.driver.stop.set()

    def shutdown(self) -> int:
        t0 = time.monotonic()
        if self.driver is not None:
            self.driver.stop.set()
        if self.observer is not None:
            self.observer.stop()
        # no new rounds. Not wait=True: apscheduler would wait for the round in flight while
        # holding its job-store lock, which that round needs to reschedule itself (a deadlock)
        self.scheduler.shutdown(wait=False)
        # the round in flight stops at its next safe point; none starts after
        if not self._running.acquire(timeout=STOP_GRACE_S):
            log.warning(
                "the round in flight did not stop within %.0f s: exiting without it (what it had "
                "not committed is read again at the next start)",
                STOP_GRACE_S,
            )
            logging.shutdown()
            os._exit(2 if self.fatal else 0)  # its thread would be waited for at exit
        try:
            if self.observer is not None:
                self.observer.join(timeout=2)
            # no round uses them now: close the Aim runs kept open (lock freed, index up to
            # date); state is committed per chunk
            self._close()
        finally:
            self._running.release()
        self.observe.close()
        log.info("stopped in %.1f s", time.monotonic() - t0)
        return 2 if self.fatal else 0


def run_daemon(cfg: Config) -> int:
    return Daemon(cfg).run()
