"""Where the pipeline gets its Aim run writers (`RunSink`) and gives them back: the round
driver is handed one pool, so one-run code never asks who it runs for.

- `OpenAndClose` (backfill, its worker processes): a run is opened, written and closed (and
  indexed, unless a worker leaves that to its parent: `index=False`, `take_unindexed()`);
- `KeepOpen` (the sync daemon): a RUNNING run's writer stays open between rounds, so a round
  with a few new points neither reopens three RocksDB databases nor re-indexes.

MLflow keeps crashed runs RUNNING for good: kept writers must not stay open forever, holding
locks, file handles and memory. So at most `max_open` stay open (the least recently written are
closed first, also mid-round), and one idle for `idle_s` is closed; a closed one is simply
reopened when its run gets new points. Not thread-safe: used by one round at a time."""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from typing import Any

from .errors import one_line
from .sink import RunSink

log = logging.getLogger(__name__)

# a kept run's index entry is refreshed at most this often when only points were added (its
# last value / step in Aim's tables lag this much; the points themselves are readable after
# each round's flush); a new run, changed metadata or a new metric is indexed in its round
INDEX_MAX_AGE_S = 5.0
IDLE_S = 60.0
MAX_OPEN = 32


class SinkPool(ABC):
    def __init__(self, repo: Any):
        self.repo = repo

    def open(self, aim_hash: str, experiment: str) -> RunSink:
        """The run's writer (RunLocked when another writer holds the run)."""
        return RunSink(self.repo, aim_hash, experiment)

    @abstractmethod
    def release(self, sink: RunSink, *, keep: bool) -> None:
        """The pipeline is done with the run for this round; `keep`: the run is RUNNING and was
        written without errors, worth keeping open where the pool keeps runs open."""

    def drop(self, aim_hash: str) -> None:  # noqa: B027 - only a pool that keeps runs has any
        """The run cannot be read now: close it if it is kept open."""

    def settle(self, active: set[str]) -> None:  # noqa: B027 - only a pool that keeps runs has any
        """After a round (`active`: the Aim hashes of the runs listed RUNNING)."""

    def take_unindexed(self) -> list[str]:
        """The runs closed without indexing since the last call (worker processes)."""
        return []

    def close_all(self) -> None:  # noqa: B027 - only a pool that keeps runs has any
        pass


class OpenAndClose(SinkPool):
    """Every run closed once written; indexed at once, or (`index=False`, a worker process) by
    whoever takes the hashes from `take_unindexed`."""

    def __init__(self, repo: Any, *, index: bool = True):
        super().__init__(repo)
        self.index = index
        self._unindexed: list[str] = []

    def release(self, sink: RunSink, *, keep: bool) -> None:
        sink.close(index=self.index)
        if not self.index:
            self._unindexed.append(sink.hash)

    def take_unindexed(self) -> list[str]:
        out, self._unindexed = self._unindexed, []
        return out


class KeepOpen(SinkPool):
    def __init__(
        self, repo: Any, *, max_open: int = MAX_OPEN, idle_s: float = IDLE_S, index_max_age: float = INDEX_MAX_AGE_S
    ):
        super().__init__(repo)
        self.max_open = max_open
        self.idle_s = idle_s
        self.index_max_age = index_max_age
        self._sinks: dict[str, RunSink] = {}  # Aim hash -> open sink
        self._last_write: dict[str, float] = {}  # Aim hash -> when it last wrote (monotonic)

    def __len__(self) -> int:
        return len(self._sinks)

    def __contains__(self, aim_hash: object) -> bool:
        return aim_hash in self._sinks

    def open(self, aim_hash: str, experiment: str) -> RunSink:
        """The kept writer of this run, else a new one."""
        self._last_write.pop(aim_hash, None)
        kept = self._sinks.pop(aim_hash, None)
        return kept if kept is not None else super().open(aim_hash, experiment)

    def release(self, sink: RunSink, *, keep: bool) -> None:
        """Kept: made durable now (points readable by other processes at once; the run index is
        refreshed when due, after the round), and the least recently written ones beyond
        `max_open` closed (e.g. a first round over many RUNNING runs). Else closed."""
        if not keep:
            sink.close()
            return
        try:
            sink.flush()
        except BaseException:
            sink.close()
            raise
        self._sinks[sink.hash] = sink
        self._last_write[sink.hash] = time.monotonic()
        by_age = sorted(self._sinks, key=lambda h: self._last_write.get(h, 0.0))
        self._close(by_age[: max(0, len(by_age) - self.max_open)])

    def drop(self, aim_hash: str) -> None:
        self._close([aim_hash])

    def settle(self, active: set[str]) -> None:
        """Close the runs no longer listed as running (ended, deleted for good, moved out of the
        chosen experiments) or idle too long; refresh the index entries due."""
        from .aim import index_writers

        now = time.monotonic()
        self._close([h for h in self._sinks if h not in active or now - self._last_write.get(h, now) > self.idle_s])
        due = [s.writer for s in self._sinks.values() if s.writer.index_due(self.index_max_age)]
        busy = index_writers(due) if due else []
        if busy:
            log.debug("Aim's run index is busy; %d open run(s) indexed next round", len(busy))

    def _close(self, hashes: list[str]) -> None:
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

    def close_all(self) -> None:
        """Close (and index) every kept run."""
        n = len(self._sinks)
        try:
            self._close(list(self._sinks))
        except Exception as e:  # their points and cursors are durable; the next start indexes
            log.warning("closing the Aim runs kept open: %s", one_line(e))
            return
        if n:
            log.info("closed %d Aim run(s) kept open between rounds", n)
