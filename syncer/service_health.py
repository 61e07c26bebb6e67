"""What the daemon's loop did lately, and what follows for its probes and its lag: fed by the
daemon (`RoundObserver`'s calls, from the round's thread and the main thread), read by the
metrics endpoint's threads (`syncer.service_metrics`). Standard library only: the daemon keeps
one without a metrics port too, for nothing (the base class does nothing).

Liveness (`/healthz`): the loop is alive: not stopping, its scheduler running, and a sign of life
(a round started, a run of a round done, a round ended) within `IDLE_S` between rounds or
`STALLED_S` in a round (a first round over a large server is long, but ends runs as it goes).

Readiness (`/readyz`): the MLflow store answered the last time it was asked, and a round ended
within a few intervals (`ready_within`), a round in flight counted from its start: a long full
listing does not make the syncer unready, its failure does.

Lag (`syncer_lag_seconds`): for each RUNNING run, the round that worked on it says whether points
its listing saw (the listing's key marks against the cursors committed after the round) are still
not in Aim; such a run is *behind since* the start of the first listing that found it so, until
a round has written them. The lag is the age of the oldest of those moments, at the time it is
asked (0 when no RUNNING run is behind): how long, at least, Aim has been missing points MLflow
had. It rises while nothing is written (a run another writer holds, rounds failing) and drops to
0 with the round that catches up. A run leaves it when a round finds it caught up, ended or
deleted, or a full listing no longer lists it RUNNING. Only what a listing saw counts: while no
round lists (the process stopped, MLflow down), it rises from what the last listing saw.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .round_stats import RoundStats

READY_INTERVALS = 3  # a round must have ended within this many intervals ...
READY_MIN_S = 30.0  # ... and never less than this
IDLE_S = 300.0  # between rounds: no round started for this long means the scheduler is stuck
STALLED_S = 1800.0  # in a round: no run done for this long (at least 10 intervals)
REASON_MAX = 300


class RoundObserver:
    """What the daemon tells whoever watches it; this base listens to nothing (no metrics port)."""

    def start(self) -> None:
        """Before the first round (the metrics endpoint starts serving)."""

    def close(self) -> None:
        """After the last round."""

    def round_started(self) -> None: ...
    def beat(self) -> None:
        """A run of the round in flight is done (MLflow answered its listing)."""

    def round_ended(self, stats: RoundStats) -> None: ...
    def round_failed(self, reason: str, *, source: bool = False) -> None:
        """The round failed as a whole (`source`: MLflow did not answer)."""

    def round_skipped(self, *, cut: bool = False) -> None:
        """A round was due while the previous one still ran, or (`cut`) was cut short by a stop."""

    def source_failed(self, reason: str) -> None: ...
    def stopping(self, reason: str) -> None: ...
    def problem(self, name: str, reason: str | None) -> None:
        """A condition outside the rounds (`name`) that makes the syncer not ready, with its
        reason; None: it is over."""


def reason_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= REASON_MAX else line[:REASON_MAX] + "…"


class LagTracker:
    """RUNNING runs with listed points not yet in Aim: Aim hash -> when the first listing that
    found them so began (wall clock). Updated by one round at a time (under the watch's lock)."""

    def __init__(self) -> None:
        self.since: dict[str, float] = {}

    def update(self, stats: RoundStats) -> None:
        for h, late in stats.behind.items():
            if late:
                self.since.setdefault(h, stats.listed_at)
            else:
                self.since.pop(h, None)
        for h in list(self.since):
            # listed RUNNING with nothing to do: caught up; not RUNNING in a full listing: ended, gone
            if h not in stats.behind and (h in stats.running or stats.read.full):
                del self.since[h]

    def lag(self, now: float) -> float:
        return max(0.0, now - min(self.since.values())) if self.since else 0.0


class RoundWatch(RoundObserver):
    """The facts, thread-safe, and the verdicts: `liveness()`, `readiness()` -> (ok, reason)."""

    def __init__(
        self,
        interval: float,
        *,
        loop_running: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ):
        self.interval = interval
        self.loop_running = loop_running  # the daemon's scheduler
        self.clock, self.wall = clock, wall
        self._lock = threading.Lock()
        self.alive_at = clock()  # the last sign of life of the loop
        self.in_flight: float | None = None  # when the round in flight started
        self.scheduling = False  # a round has started: the scheduler runs from now on
        self.last_good: float | None = None  # when the last round ended (monotonic, wall)
        self.last_good_wall = 0.0
        self.last_failure: str | None = None  # why the last round failed (None once one ends)
        self.source_down: str | None = None  # why MLflow did not answer the last ask
        self.source_known = False  # MLflow answered once
        self.stop_reason: str | None = None
        self.problems: dict[str, str] = {}  # name -> reason the syncer is not ready (`problem`)
        self.lags = LagTracker()

    # -- facts ---------------------------------------------------------------------------------
    def round_started(self) -> None:
        with self._lock:
            self.in_flight = self.alive_at = self.clock()
            self.scheduling = True

    def beat(self) -> None:
        with self._lock:  # a run done: MLflow answered this round's listing
            self.alive_at = self.clock()
            self.source_down, self.source_known = None, True

    def round_ended(self, stats: RoundStats) -> None:
        with self._lock:
            self.in_flight, self.alive_at = None, self.clock()
            self.last_good, self.last_good_wall = self.alive_at, self.wall()
            self.last_failure = self.source_down = None
            self.source_known = True
            self.lags.update(stats)

    def round_failed(self, reason: str, *, source: bool = False) -> None:
        with self._lock:
            self.in_flight, self.alive_at = None, self.clock()
            self.last_failure = reason_line(reason)
            if source:
                self.source_down = self.last_failure

    def round_skipped(self, *, cut: bool = False) -> None:
        if cut:
            with self._lock:
                self.in_flight, self.alive_at = None, self.clock()

    def source_failed(self, reason: str) -> None:
        with self._lock:
            self.source_down = reason_line(reason)

    def stopping(self, reason: str) -> None:
        # no lock: called from a signal handler, on the thread that may hold it
        self.stop_reason = self.stop_reason or reason_line(reason)

    def problem(self, name: str, reason: str | None) -> None:
        with self._lock:
            if reason is None:
                self.problems.pop(name, None)
            else:
                self.problems[name] = reason_line(reason)

    # -- what follows --------------------------------------------------------------------------
    def lag(self) -> float:
        with self._lock:
            return self.lags.lag(self.wall())

    def last_good_timestamp(self) -> float:
        with self._lock:
            return self.last_good_wall

    def source_up(self) -> bool:
        with self._lock:
            return self.source_known and self.source_down is None

    def ready_within(self) -> float:
        return max(READY_INTERVALS * self.interval, READY_MIN_S)

    def liveness(self) -> tuple[bool, str]:
        with self._lock:
            if self.stop_reason:
                return False, f"stopping: {self.stop_reason}"
            if self.scheduling and not self.loop_running():
                return False, "the round scheduler is not running"
            quiet = self.clock() - self.alive_at
            if self.in_flight is not None and quiet > max(STALLED_S, 10 * self.interval):
                return False, f"the round in flight has made no progress for {quiet:.0f} s"
            if self.in_flight is None and quiet > max(IDLE_S, 10 * self.interval):
                return False, f"no round has started for {quiet:.0f} s"
            return True, "ok"

    def readiness(self) -> tuple[bool, str]:
        with self._lock:
            now = self.clock()
            failed = f" (the last failed: {self.last_failure})" if self.last_failure else ""
            if self.stop_reason:
                return False, f"stopping: {self.stop_reason}"
            if self.problems:
                return False, "; ".join(self.problems.values())
            if self.source_down is not None:
                return False, f"the MLflow store does not answer: {self.source_down}"
            if self.last_good is None:
                running = "; the first round is running" if self.in_flight is not None else ""
                return False, f"no round has ended yet{failed}{running}"
            window = self.ready_within()
            # a round in flight that started in time is judged when it ends
            since = (self.in_flight if self.in_flight is not None else now) - self.last_good
            if since > window:
                return False, f"no round has ended for {now - self.last_good:.0f} s{failed}"
            return True, "ok"
