"""Many runs written as one batch (a backfill, a daemon catching up): what each run would pay on
its own is paid once per batch, or side by side.

Alone, a run waits for a dozen fsyncs creating each of its two RocksDB chunks, three more
flushing each, a transaction of the structured DB and an open of the run index (about 50 fsyncs:
a quarter of a second on a disk that takes 5 ms an fsync). In a batch:

* the runs written next are opened ahead in IO threads (:meth:`WriterBatch.prepare`): their
  waits overlap each other and the writing of the run before (RocksDB does its file work without
  Python's lock);
* a run written is closed at once in an IO thread (:meth:`WriterBatch.add`): its memtables go to
  SST files, fsync'ed: durable;
* :meth:`WriterBatch.commit` waits for those, commits every run's structured-DB row in one
  transaction, hands what is durable to the caller (who commits its cursors then), indexes every
  run in one pass and releases the locks.

The crash-safe order is the one of a single run: points and metadata durable (chunks closed, rows
committed) before the caller's cursors, indexing last. A kill in between re-sends at most the
batch, whose writes land on the same keys; a chunk left without its row is not indexed by
``index_missing`` (its run is written again, row and all).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from . import space
from .index import index_runs
from .structured import commit_rows, existing_rows
from .writer import AimRunWriter, Prepared, prepare

log = logging.getLogger(__name__)

IO_THREADS = 8  # RocksDB opens and closes side by side (their fsyncs overlap; the CPU work is small)
# what a run opened ahead takes on disk before a point is written: its seqs chunk's write-ahead
# log, preallocated at 1.1 x its 16 MB write buffer (chunks._seqs_tuning), and its
# meta chunk. No more runs are opened ahead than the free space above the reserve holds, so that
# on a nearly full disk the runs opened ahead do not eat the room the run being written needs
OPENED_AHEAD_BYTES = 20 * 1024 * 1024

Durable = Callable[[list[Callable[[], None]]], None]


def _read_and_close(writer: AimRunWriter) -> list[tuple[bytes, Any]]:
    """(In an IO thread.) The points still waiting written, every item of the writer's meta
    chunk read (what indexing the run copies), then its chunks closed: durable. A blob (a media
    object's data, e.g. a Text's first and last value) is read now too: Aim's lazy blob reads
    through the container, which would open the closed chunk again, for writing, when the index
    copies it, changing its files after the index stamped them."""
    from aim.storage.types import BLOB

    try:
        writer.settle()
        items = list(writer.chunks.meta.items())
        for _, value in items:
            if isinstance(value, BLOB):
                value.load()
        return items
    finally:  # also when the points could not be written (a full disk): closed, not left to Aim's
        writer.close_storage()  # finalizer, whose flush would block on a full disk


class WriterBatch:
    """Writers of one repo, opened ahead and closed side by side, committed together. Used from
    one thread (its IO threads do only the opening and closing)."""

    def __init__(self, repo: Any, *, io_threads: int = IO_THREADS) -> None:
        self.repo = repo
        self._io = ThreadPoolExecutor(io_threads, thread_name_prefix="aim-io")
        self._prepared: dict[str, Future[Prepared]] = {}
        self._rows: dict[str, bool] = {}  # run hash -> whether the structured DB has its row
        # writers done: closing (their meta chunk's items, read first, come back), and their `then`
        self._done: list[tuple[AimRunWriter, Future[list[tuple[bytes, Any]]], Callable[[], None] | None]] = []

    def __len__(self) -> int:
        """Writers done and not committed yet."""
        return len(self._done)

    def expect(self, run_hashes: list[str]) -> None:
        """These runs will be written (soon or later in this round): which have a row in the
        structured DB is looked up now, for all of them at once."""
        look = [h for h in run_hashes if h not in self._rows]
        if look:
            found = existing_rows(self.repo, look)
            self._rows.update((h, h in found) for h in look)

    def forget_expected(self) -> None:
        """The round is over: what was looked up for it may be stale by the next one."""
        self._rows = {h: v for h, v in self._rows.items() if h in self._prepared}

    def prepare(self, runs: Iterable[tuple[str, bool]]) -> None:
        """Open these runs ahead, in this order: (run hash, whether its points will be written)."""
        new = [(h, seqs) for h, seqs in runs if h not in self._prepared]
        room = space.room(self.repo.path)
        if room is not None:  # as many as the disk holds beside the reserve (one is opened when written)
            new = new[: max(0, room // OPENED_AHEAD_BYTES - len(self._prepared))]
        if not new:
            return
        self.expect([h for h, _ in new])
        for h, seqs in new:
            self._prepared[h] = self._io.submit(prepare, self.repo, h, seqs=seqs)

    def open(self, run_hash: str, experiment: str) -> AimRunWriter:
        """The run's writer: opened ahead when prepared, else now (``AimRunLocked`` when another
        writer holds the run)."""
        fut = self._prepared.pop(run_hash, None)
        prepared = fut.result() if fut is not None else None
        return AimRunWriter.open(
            self.repo, run_hash, experiment=experiment, prepared=prepared, row_exists=self._rows.pop(run_hash, None)
        )

    def add(self, writer: AimRunWriter, then: Callable[[], None] | None = None) -> None:
        """The writer is done: its chunks are closed now, in an IO thread; ``then`` is called by
        :meth:`commit` once the run is durable."""
        self._done.append((writer, self._io.submit(_read_and_close, writer), then))

    def commit(self, durable: Durable, *, index: bool = True) -> list[str]:
        """Make the runs added so far durable (chunks closed, rows committed in one transaction),
        call ``durable`` with the ``then`` of each run that is (the caller commits its cursors),
        index them in one pass (``index=False``: the caller does) and free their locks. Returns
        the runs left unindexed. The first error is raised once every writer is closed and
        unlocked; the callbacks are called only when nothing failed before them."""
        done, self._done = self._done, []
        if not done:
            return []
        errors: list[BaseException] = []
        ok: list[AimRunWriter] = []
        thens: list[Callable[[], None]] = []
        items: dict[str, list[tuple[bytes, Any]]] = {}
        for w, closing, then in done:
            try:
                items[w.hash] = closing.result()
            except BaseException as e:  # that run is not durable: its cursors stay where they were
                errors.append(e)
                continue
            ok.append(w)
            if then is not None:
                thens.append(then)
        missed: list[str] = []
        try:
            commit_rows(self.repo, [w.row for w in ok])
            durable(thens)
            todo = [w.hash for w in ok if w.freshness.needs_index_on_close(look=True)]
            missed = index_runs(self.repo, todo, items=items) if (index and todo) else todo
        except BaseException as e:
            errors.append(e)
        finally:
            for w, _, _ in done:
                w.release()
        if errors:
            raise errors[0]
        return missed

    def close(self) -> None:
        """Let go of the runs opened ahead and never taken (a stop, a run that needed no write);
        the writers added and not committed are closed without their callbacks. A chunk created
        ahead for nothing is removed."""
        for w, closing, _ in self._done:
            try:
                closing.result()
            except Exception as e:  # closing is best effort: nothing of it was committed
                log.debug("closing Aim run %s: %r", w.hash, e)
            w.release()
        self._done = []
        for h, opening in self._prepared.items():
            try:
                p = opening.result()
            except Exception:  # locked by another writer, or could not be opened: nothing held
                continue
            try:
                if p.chunks is not None:
                    p.chunks.close()
                if p.stamp is None:  # made by us, never written: as if never opened
                    for sub in ("meta", "seqs"):
                        shutil.rmtree(os.path.join(self.repo.path, sub, "chunks", h), ignore_errors=True)
            finally:
                p.lock.release()
        self._prepared = {}
        self._io.shutdown(wait=True)
