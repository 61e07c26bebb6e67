"""Where the pipeline gets its Aim writers (`RunSink`) and gives them back: the round
driver is handed one pool, so one-run code never asks who it runs for.

- `OpenAndClose` (backfill, its worker processes): a run is opened, written and closed;
- `KeepOpen` (the sync daemon): a RUNNING run's writer stays open between rounds, so a round
  with a few new points neither reopens three RocksDB databases nor re-indexes.

Runs that are closed once written go through a batch (`aim.WriterBatch`): the runs the driver
says come next are opened ahead, side by side (`upcoming`); a run given back is closed at once in
the background; when the batch is due (`due`: so many runs, points or seconds) or the round ends,
`commit` makes the batch durable, then runs what each run's pipeline asked to do once its data is
durable (its cursors: `release(..., then=...)`), in one state transaction, then indexes the batch
(unless a worker leaves that to its parent: `index=False`, `take_unindexed()`).

MLflow keeps crashed runs RUNNING for good: kept writers must not stay open forever, holding
locks, file handles and memory. So at most `max_open` stay open (the least recently written are
closed first, also mid-round), and one idle for `idle_s` is closed; a closed one is simply
reopened when its run gets new points. Not thread-safe: used by one round at a time."""

from __future__ import annotations

import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
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

Then = Callable[[], None]


@dataclass(frozen=True)
class BatchLimits:
    """When a batch is due: a crash re-sends at most this much; the per-batch costs (an index
    open, a structured-DB and a state transaction) are paid once for it."""

    runs: int = 64
    points: int = 50_000
    seconds: float = 5.0


def batch_runs_for_open_files(limit: int) -> int:
    """How many runs a batch may hold open under this process's open-file limit (a run written
    holds two RocksDB databases, ~8 files each; as many again are opened ahead)."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return min(limit, 16)
    if soft == resource.RLIM_INFINITY:
        return limit
    return max(4, min(limit, (soft - 256) // 32))


class SinkPool(ABC):
    def __init__(
        self,
        repo: Any,
        *,
        index: bool = True,
        transaction: Callable[[], AbstractContextManager[Any]] | None = None,
        limits: BatchLimits = BatchLimits(),
    ):
        """`index`: index each batch (a worker process's pool leaves that to its parent);
        `transaction`: what the state writes of a batch run in (one commit for all)."""
        self.repo = repo
        self.index = index
        self.limits = BatchLimits(batch_runs_for_open_files(limits.runs), limits.points, limits.seconds)
        self._transaction = transaction or contextlib.nullcontext
        self._batch: Any = None  # aim.WriterBatch, made on first use
        self._points = 0  # points in the batch
        self._since = 0.0  # when its first run was added (monotonic)
        self._unindexed: list[str] = []

    def _writers(self) -> Any:
        if self._batch is None:
            from .aim import WriterBatch

            self._batch = WriterBatch(self.repo)
        return self._batch

    def expect(self, runs: Iterable[tuple[str, bool]]) -> None:
        """The runs this round will write (Aim hash, whether it writes points): what can be
        looked up for all of them at once is."""
        hashes = [h for h, _ in runs]
        if hashes:  # nothing to write: Aim is not even loaded
            self._writers().expect(hashes)

    def upcoming(self, runs: Iterable[tuple[str, bool]]) -> None:
        """The runs the pipeline writes next, in order (Aim hash, whether it writes points): they
        may be opened ahead."""
        runs = list(runs)
        if runs:
            self._writers().prepare(runs)

    def open(self, aim_hash: str, experiment: str) -> RunSink:
        """The run's writer (RunLocked when another writer holds the run)."""
        return RunSink(self.repo, aim_hash, experiment, writer=self._writers().open(aim_hash, experiment))

    @abstractmethod
    def release(self, sink: RunSink, *, keep: bool, then: Then | None = None) -> None:
        """The pipeline is done with the run for this round; `keep`: the run is RUNNING and was
        written without errors, worth keeping open where the pool keeps runs open. `then`: the
        pipeline's state writes for the run (its cursors), called once what it wrote is durable."""

    def _batched(self, sink: RunSink, then: Then | None) -> None:
        """Closed in the background, made durable with the batch."""
        if not len(self._writers()):
            self._since = time.monotonic()
        self._writers().add(sink.writer, then)
        self._points += sink.points

    def pending(self) -> int:
        """Runs in the batch, not committed yet."""
        return len(self._batch) if self._batch is not None else 0

    def due(self) -> bool:
        """Whether the batch should be committed now."""
        n = len(self._batch) if self._batch is not None else 0
        lim = self.limits
        return n > 0 and (n >= lim.runs or self._points >= lim.points or time.monotonic() - self._since >= lim.seconds)

    def commit(self) -> None:
        """Make the batch durable, commit the state writes of its runs, index it."""
        if self._batch is None or not len(self._batch):
            return
        self._points = 0
        missed = self._batch.commit(self._durable, index=self.index)
        if self.index and missed:
            log.warning("%d Aim run(s) could not be indexed now; `aim up` or the next start does", len(missed))
        self._unindexed.extend(missed)

    def _durable(self, thens: list[Then]) -> None:
        with self._transaction():
            for then in thens:
                then()

    def drop(self, aim_hash: str) -> None:  # noqa: B027 - only a pool that keeps runs has any
        """The run cannot be read now: close it if it is kept open."""

    def settle(self, active: set[str]) -> None:
        """After a round (`active`: the Aim hashes of the runs listed RUNNING)."""
        self.commit()
        if self._batch is not None:
            self._batch.forget_expected()

    def take_unindexed(self) -> list[str]:
        """The runs left unindexed since the last call (a worker process's, for its parent)."""
        self.commit()
        out, self._unindexed = self._unindexed, []
        return out

    def close_all(self) -> None:
        """Commit the batch, let go of what was opened ahead."""
        try:
            self.commit()
        finally:
            if self._batch is not None:
                self._batch.close()
                self._batch = None


class OpenAndClose(SinkPool):
    """Every run closed once written (in batches); indexed with its batch, or (`index=False`, a
    worker process) by whoever takes the hashes from `take_unindexed`."""

    def release(self, sink: RunSink, *, keep: bool, then: Then | None = None) -> None:
        self._batched(sink, then)


class KeepOpen(SinkPool):
    def __init__(
        self,
        repo: Any,
        *,
        max_open: int = MAX_OPEN,
        idle_s: float = IDLE_S,
        index_max_age: float = INDEX_MAX_AGE_S,
        transaction: Callable[[], AbstractContextManager[Any]] | None = None,
    ):
        super().__init__(repo, transaction=transaction)
        self.max_open = max_open
        self.idle_s = idle_s
        self.index_max_age = index_max_age
        self._sinks: dict[str, RunSink] = {}  # Aim hash -> open sink
        self._last_write: dict[str, float] = {}  # Aim hash -> when it last wrote (monotonic)

    def __len__(self) -> int:
        return len(self._sinks)

    def __contains__(self, aim_hash: object) -> bool:
        return aim_hash in self._sinks

    def upcoming(self, runs: Iterable[tuple[str, bool]]) -> None:
        super().upcoming((h, seqs) for h, seqs in runs if h not in self._sinks)

    def open(self, aim_hash: str, experiment: str) -> RunSink:
        """The kept writer of this run, else a new one."""
        self._last_write.pop(aim_hash, None)
        kept = self._sinks.pop(aim_hash, None)
        return kept if kept is not None else super().open(aim_hash, experiment)

    def release(self, sink: RunSink, *, keep: bool, then: Then | None = None) -> None:
        """Kept: made durable now (points readable by other processes at once; the run index is
        refreshed when due, after the round), and the least recently written ones beyond
        `max_open` closed (e.g. a first round over many RUNNING runs). Else closed with the
        batch."""
        if not keep:
            self._batched(sink, then)
            return
        try:
            sink.flush()
        except BaseException:
            self._batched(sink, None)
            raise
        if then is not None:
            with self._transaction():
                then()
        sink.points = 0
        self._sinks[sink.hash] = sink
        self._last_write[sink.hash] = time.monotonic()
        by_age = sorted(self._sinks, key=lambda h: self._last_write.get(h, 0.0))
        self._close(by_age[: max(0, len(by_age) - self.max_open)])

    def drop(self, aim_hash: str) -> None:
        self._close([aim_hash])

    def settle(self, active: set[str]) -> None:
        """Close the runs no longer listed as running (ended, deleted for good, moved out of the
        chosen experiments) or idle too long; refresh the index entries due."""
        super().settle(active)
        if not self._sinks:
            return
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
            super().close_all()
            self._close(list(self._sinks))
        except Exception as e:  # their points and cursors are durable; the next start indexes
            log.warning("closing the Aim runs kept open: %s", one_line(e))
            return
        if n:
            log.info("closed %d Aim run(s) kept open between rounds", n)
