"""The Aim writers of RUNNING runs that the sync daemon keeps open between rounds, so a round
with a few new points neither reopens three RocksDB databases nor re-indexes.

MLflow keeps crashed runs RUNNING for good: their writers must not stay open forever, holding
locks, file handles and memory. So at most `max_open` stay open (the least recently written are
closed first, also mid-round), and one idle for `idle_s` is closed; a closed one is simply
reopened when its run gets new points. Not thread-safe: used by one round at a time."""

from __future__ import annotations

import logging
import time

from .sink import RunSink

log = logging.getLogger(__name__)

# a kept run's index entry is refreshed at most this often when only points were added (its
# last value / step in Aim's tables lag this much; the points themselves are readable after
# each round's flush); a new run, changed metadata or a new metric is indexed in its round
INDEX_MAX_AGE_S = 5.0
IDLE_S = 60.0
MAX_OPEN = 32


class KeptRuns:
    def __init__(self, *, max_open: int = MAX_OPEN, idle_s: float = IDLE_S, index_max_age: float = INDEX_MAX_AGE_S):
        self.max_open = max_open
        self.idle_s = idle_s
        self.index_max_age = index_max_age
        self._sinks: dict[str, RunSink] = {}  # Aim hash -> open sink
        self._last_write: dict[str, float] = {}  # Aim hash -> when it last wrote (monotonic)

    def __len__(self) -> int:
        return len(self._sinks)

    def __contains__(self, aim_hash: object) -> bool:
        return aim_hash in self._sinks

    @property
    def hashes(self) -> list[str]:
        return list(self._sinks)

    def take(self, aim_hash: str) -> RunSink | None:
        """The open sink of this run, now the caller's (None when none is kept)."""
        self._last_write.pop(aim_hash, None)
        return self._sinks.pop(aim_hash, None)

    def put(self, sink: RunSink) -> None:
        """Keep a flushed sink open for the next round; closes the least recently written ones
        beyond `max_open` (e.g. a first round over many RUNNING runs)."""
        self._sinks[sink.hash] = sink
        self._last_write[sink.hash] = time.monotonic()
        by_age = sorted(self._sinks, key=lambda h: self._last_write.get(h, 0.0))
        self.close(by_age[: max(0, len(by_age) - self.max_open)])

    def settle(self, active: set[str]) -> None:
        """After a round: close the runs no longer listed as running (ended, deleted for good,
        moved out of the chosen experiments) or idle too long; refresh the index entries due."""
        from .aim import index_writers

        now = time.monotonic()
        self.close([h for h in self._sinks if h not in active or now - self._last_write.get(h, now) > self.idle_s])
        due = [s.writer for s in self._sinks.values() if s.writer.index_due(self.index_max_age)]
        busy = index_writers(due) if due else []
        if busy:
            log.debug("Aim's run index is busy; %d open run(s) indexed next round", len(busy))

    def close(self, hashes: list[str]) -> None:
        """Close (indexing in one pass) the kept sinks of these runs; others are ignored."""
        from .aim import close_writers

        sinks = [self._sinks.pop(h) for h in hashes if h in self._sinks]
        for h in hashes:
            self._last_write.pop(h, None)
        if not sinks:
            return
        missed = close_writers([s.writer for s in sinks])
        if missed:
            log.warning("%d Aim run(s) could not be indexed now; `aim up` or the next start does", len(missed))

    def close_all(self) -> int:
        """Close (and index) every kept run; returns how many."""
        n = len(self._sinks)
        self.close(list(self._sinks))
        if n:
            log.info("closed %d Aim run(s) kept open between rounds", n)
        return n
