"""A run's two RocksDB chunks, open for writing: ``meta/chunks/<hash>`` and ``seqs/chunks/<hash>``.

The meta chunk holds the run's tree (params, end time, contexts, the list of sequences with
their bookkeeping); the seqs chunk holds the points.  :class:`RunChunks` opens them as
``aim.sdk.base_run.BaseRun`` does and exposes the same tree views, so Aim's own
``RunTracker`` can write objects through it.  Opening the meta chunk for writing creates
``meta/progress/<hash>`` (``aim up`` lists the run under ``/api/runs/active/`` while it exists);
closing removes it.

Opening a chunk for writing creates its RocksDB (a dozen fsyncs when new): :func:`open_chunks`
does that without touching the repo's container pool, so a batch opens the runs it writes next in
IO threads (``batch.WriterBatch``), whose waits overlap; :class:`RunChunks` then takes them.

Durability: :meth:`RunChunks.flush` fsyncs the write-ahead log of each chunk written since the
last flush; :meth:`RunChunks.close_storage` (safe from any thread) flushes the memtables to SST
files, fsync'ed, and closes.  Readers in other processes open the seqs chunk read-only, which replays that WAL:
new points are readable right after a flush.  A chunk kept open long has its memtable flushed to
an SST file every ``MEMTABLE_FLUSH_POINTS`` points, so the WAL every reader replays stays short.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import RepoFull
from . import encoding as enc
from . import space

log = logging.getLogger(__name__)

# A writer kept open flushes its seqs memtable to an SST file after this many points, so the WAL
# that every reader's read-only open replays stays short (~1.5 MB).
MEMTABLE_FLUSH_POINTS = 5000

_MISSING = object()


@dataclass
class OpenedChunks:
    """A run's chunks opened for writing by :func:`open_chunks` (the seqs chunk when asked)."""

    meta: Any
    seqs: Any = None

    def close(self) -> None:
        """Close them unused (the progress marker goes with the meta chunk)."""
        for c in (self.seqs, self.meta):
            if c is not None:
                c.close()


def open_chunks(repo: Any, run_hash: str, *, seqs: bool) -> OpenedChunks:
    """Open (create when new) the meta chunk, and with ``seqs`` the seqs chunk, of a run for
    writing, as ``Repo.request_container`` would but without its container pool: safe in a
    thread of its own (the caller holds the run's lock)."""
    from aim.sdk.repo import ContainerConfig

    # one open for writing per process: a container this process holds already is the one
    pool = repo.container_pool
    meta = pool.get(ContainerConfig("meta", run_hash, False))
    if meta is None:
        meta = _open_tuned(os.path.join(repo.path, "meta", "chunks", run_hash), _meta_tuning)
    try:
        found = pool.get(ContainerConfig("seqs", run_hash, False)) if seqs else None
        return OpenedChunks(meta, found if found is not None else (_open_seqs(repo, run_hash) if seqs else None))
    except BaseException:
        meta.close()
        raise


def _open_seqs(repo: Any, run_hash: str) -> Any:
    """The run's seqs chunk for writing, write-optimized where RocksDB takes the options."""
    return _open_tuned(os.path.join(repo.path, "seqs", "chunks", run_hash), _seqs_tuning)


def _open_tuned(path: str, tuning: Callable[[], dict[str, Any]]) -> Any:
    """A chunk opened for writing with ``tuning`` over Aim's options; Aim's own container where
    RocksDB refuses them."""
    try:
        return _tuned_container(path, tuning)
    except Exception as e:  # e.g. options refused: Aim's own container
        log.debug("default RocksDB options for %s: %r", path, e)
    from aim.storage.rockscontainer import RocksContainer

    return RocksContainer(path, read_only=False)


class RunChunks:
    """The meta and seqs chunks of one run, open for writing (the seqs chunk on first use).

    ``on_meta_change(urgent=...)`` is told of every commit to the meta chunk (the run index
    then lags it; see ``index.IndexFreshness``)."""

    read_only = False  # what RunTracker checks, as on aim.sdk.base_run.BaseRun

    def __init__(
        self, repo: Any, run_hash: str, *, on_meta_change: Callable[..., None], opened: OpenedChunks | None = None
    ) -> None:
        self.repo = repo
        self.hash = run_hash
        self._on_meta_change = on_meta_change
        self._seqs: Any = None
        self._series_run_trees: dict[int, Any] | None = None
        self._tracker: Any = None
        self.wal_dirty = {"meta": False, "seqs": False}  # written since the last flush()
        self._seqs_unflushed = 0  # points written since the seqs memtable was last flushed
        if opened is None:
            self.meta: Any = repo.request_container("meta", run_hash, read_only=False)
        else:  # opened ahead (in an IO thread): pooled as request_container would have
            from aim.sdk.repo import ContainerConfig

            self.meta = repo.container_pool[ContainerConfig("meta", run_hash, False)] = opened.meta
            if opened.seqs is not None:
                self._seqs = repo.container_pool[ContainerConfig("seqs", run_hash, False)] = opened.seqs
        try:
            # tree views shaped like aim.sdk.base_run.BaseRun's (RunTracker reads them)
            self.meta_tree: Any = self.meta.tree().subtree("meta")
            self.meta_run_tree: Any = self.meta_tree.subtree(("chunks", run_hash))
            self._init_meta()
        except BaseException:
            self.close()
            raise

    def _init_meta(self) -> None:
        # what aim.sdk.run.BasicRun.__init__ writes for a run opened for writing, less end_time
        # (which it resets to None on every open: the writer keeps what set_times() wrote)
        batch = self.meta.batch()
        n = batch.count()
        try:
            self.meta_run_tree.first_key("attrs")
        except (KeyError, StopIteration):
            self.tree_set(batch, ("meta", "chunks", self.hash, "attrs"), {})
            self.tree_set(batch, ("meta", "attrs"), {})
        if self.meta_run_tree.get("end_time", _MISSING) is _MISSING:
            self.tree_set(batch, ("meta", "chunks", self.hash, "end_time"), None)
        if batch.count() != n:
            self.commit_meta(batch, urgent=True)

    # ---- writing ----------------------------------------------------------------------------

    def tree_set(
        self, batch: Any, path: tuple[Any, ...], value: Any, strict: bool = True, *, items: Any = None
    ) -> None:
        """``ContainerTreeView.set(path, value)`` into ``batch`` of the meta chunk: the subtree
        cleared, then its keys put (``items``: ``encoding.encode_tree(value)`` when the caller
        has it already). (``RocksContainer.set`` would also delete each key's twin in the blob
        domain: the paths set here have none. The only blobs in a meta chunk are media objects'
        data, which Aim's ``RunTracker`` stores under their own series' first and last values.)"""
        p = enc.encode_path(path)
        self.meta.delete_range(p, p + b"\xff", store_batch=batch)
        _put_all(batch, p, enc.encode_tree(value, strict=strict) if items is None else items)

    def tree_put(self, batch: Any, path: tuple[Any, ...], value: Any) -> None:
        """The keys of ``value`` put under ``path`` into ``batch`` of the meta chunk, the subtree
        not cleared first: for a path whose old keys, if any, are the same ones (a scalar over a
        scalar; a context under its own hash), where clearing would only add a range tombstone
        that every later read of the chunk has to skip."""
        _put_all(batch, enc.encode_path(path), enc.encode_tree(value, strict=True))

    def commit_meta(self, batch: Any, *, urgent: bool = False) -> None:
        """Commit a batch to the meta chunk.  ``urgent``: the change must reach the run index
        soon; otherwise it is per-sequence bookkeeping (last value, last step, min, max) that
        may lag a few seconds."""
        space.check(self.repo.path)  # RepoFull before RocksDB meets a full disk
        self.meta.commit(batch)
        self._on_meta_change(urgent=urgent)
        self.wal_dirty["meta"] = True

    def write_seqs(self, batch: Any, points: int) -> None:
        """Write a batch of ``points`` points to the seqs chunk."""
        space.check(self.repo.path)
        self.seqs().db.write(batch)
        self.wal_dirty["seqs"] = True
        self._seqs_unflushed += points

    def write_seqs_rep(self, rep: bytes, points: int) -> None:
        """Write a serialized batch (``encoding.batch_rep``) of ``points`` points to the seqs chunk."""
        import aimrocks

        self.write_seqs(aimrocks.WriteBatch(rep), points)

    def track_object(self, obj: Any, timestamp: float, name: str, step: int, epoch: int | None, context: Any) -> None:
        """Track an object (``aim.Image``, ``aim.Text``, ...) with Aim's own ``RunTracker``,
        which writes both chunks itself; a new object sequence must reach the index soon."""
        space.check(self.repo.path)
        if self._tracker is None:
            from aim.sdk.tracker import RunTracker

            self._tracker = RunTracker(self)  # type: ignore[arg-type]  # duck-types the Run it reads
        self._on_meta_change(urgent=True)
        self.wal_dirty["meta"] = self.wal_dirty["seqs"] = True
        self._tracker._track(obj, timestamp, name, step, epoch, context=context)

    def seqs(self) -> Any:
        """The run's ``seqs`` chunk, opened on first use, with a vector memtable and larger
        write buffers: we only ever write through this handle (readers open their own, with
        Aim's options), and RocksDB takes our hash-ordered batches about twice as fast so."""
        c = self._seqs
        if c is None:
            from aim.sdk.repo import ContainerConfig

            config = ContainerConfig("seqs", self.hash, False)
            c = self.repo.container_pool.get(config)
            if c is None:
                c = self.repo.container_pool[config] = _open_seqs(self.repo, self.hash)
            self._seqs = c
        return c

    @property
    def series_run_trees(self) -> dict[int, Any]:
        """What Aim's own ``RunTracker`` reads from the run it tracks objects for (``BaseRun``'s
        attribute of that name): this object stands in for that run in ``tracker.py``."""
        if self._series_run_trees is None:
            seqs = self.seqs().tree().subtree("seqs")
            h = self.hash
            self._series_run_trees = {1: seqs.subtree(("chunks", h)), 2: seqs.subtree(("v2", "chunks", h))}
        return self._series_run_trees

    # ---- durability -------------------------------------------------------------------------

    def flush(self) -> None:
        """fsync the write-ahead logs of the chunks written since the last flush (nothing new:
        nothing to do); flush a long seqs memtable to an SST file."""
        space.check(self.repo.path)
        for name, c in (("meta", self.meta), ("seqs", self._seqs)):
            if c is not None and self.wal_dirty[name]:
                c.db.flush_wal(True)
                self.wal_dirty[name] = False
        if self._seqs_unflushed >= MEMTABLE_FLUSH_POINTS and self._seqs is not None:
            # every reader's read-only open replays the WAL: keep it short for a writer that
            # stays open (the memtable goes to an SST file, a new WAL starts)
            self._seqs.db.flush()
            self._seqs_unflushed = 0

    def close(self) -> None:
        """Flush the memtables and WALs, close both chunks, drop the progress marker.
        Idempotent. Short of space (``space``), the memtables are not flushed: that would block
        for good on a full disk; the write-ahead logs hold what was written."""
        try:
            self.close_storage()
        finally:
            self.forget()

    def close_storage(self) -> None:
        """Flush the memtables to SST files (fsync'ed: durable) and close both chunks, dropping the
        progress marker; safe to call from another thread than the writer's (the writer is done
        with the chunks: nothing else uses them meanwhile). Idempotent. Short of space, the
        memtables are let go unflushed (the WALs hold the data)."""
        short = space.short(self.repo.path)
        first: BaseException | None = None
        for c in (self.meta, self._seqs):
            if c is not None:
                try:
                    if short:
                        _let_go(c)
                    c.close()
                except BaseException as e:  # the other chunk is closed all the same
                    first = first or e
        if first is not None:
            raise first

    def forget(self) -> None:
        """Drop the closed chunks from the repo's container pool and this object (the writer's
        thread)."""
        from aim.sdk.repo import ContainerConfig

        for sub in ("meta", "seqs"):
            self.repo.container_pool.pop(ContainerConfig(sub, self.hash, False), None)
        self.meta = self._seqs = None
        self.meta_tree = self.meta_run_tree = self._series_run_trees = None
        self._tracker = None


def _put_all(batch: Any, prefix: bytes, items: Any) -> None:
    put = batch.put
    for k, v in items:
        put(prefix + k, v)


def _let_go(container: Any) -> None:
    """Detach a container's RocksDB handle so that Aim's close does not flush its memtable (a
    flush on a full disk never returns): the write-ahead log is synced if it can be, and the
    handle is dropped (RocksDB closes it once nothing refers to it; never closed by hand, which
    crashes while an iterator of it lives)."""
    db = container._db
    if db is None:
        return
    try:
        db.flush_wal(True)
    except Exception as e:  # not durable: the caller must not commit cursors for what it wrote
        raise RepoFull(f"the write-ahead log of {getattr(container, 'path', '?')} could not be synced: {e}") from None
    finally:
        container._db = None


_TunedContainer: Any = None

# RocksDB writes an info log (``LOG``, ~24 kB of options and events) into every database it opens
# for writing: two files a run, created and written, that nothing reads. A log folder that cannot
# be one (the null device) leaves RocksDB without an info log ("no place suitable for logging",
# ``SanitizeOptions``); readers that open a chunk later write their own.
_NO_INFO_LOG = {"db_log_dir": os.devnull}


def _meta_tuning() -> dict[str, Any]:
    return dict(_NO_INFO_LOG)


def _tuned_container(path: str, tuning: Callable[[], dict[str, Any]]) -> Any:
    """An ``aim.storage.rockscontainer.RocksContainer`` (write mode) whose RocksDB is opened with
    Aim's options and ``tuning()`` over them. Only the in-memory write path differs: the files
    are plain RocksDB files every Aim reader opens with its own options."""
    global _TunedContainer
    if _TunedContainer is None:
        from aim.storage.rockscontainer import RocksContainer

        class TunedContainer(RocksContainer):  # type: ignore[misc]  # untyped (Cython)
            def __init__(self, path: str, tuning: Callable[[], dict[str, Any]]) -> None:
                self._tuning = tuning  # read when Aim's __init__ sets its options, before it opens
                super().__init__(path, read_only=False)

            @property
            def _db_opts(self) -> Any:
                return self.__dict__["_tuned_db_opts"]

            @_db_opts.setter
            def _db_opts(self, opts: Any) -> None:
                self.__dict__["_tuned_db_opts"] = {**opts, **self._tuning()}

        _TunedContainer = TunedContainer
    return _TunedContainer(path, tuning)


def _seqs_tuning() -> dict[str, Any]:
    """A seqs chunk's options: a vector memtable (fast bulk inserts, slow memtable reads: we
    never read through it) and 16 MB write buffers instead of Aim's 1 MB."""
    import aimrocks

    return {
        "memtable_factory": aimrocks.VectorMemtableFactory(),
        "allow_concurrent_memtable_write": False,
        "write_buffer_size": 16 << 20,
        "max_write_buffer_number": 2,
        "db_write_buffer_size": 32 << 20,
        **_NO_INFO_LOG,
    }


def _index_tuning() -> dict[str, Any]:
    # a batch's index entries (~100 kB a run) in one memtable, flushed once when the batch closes
    # the index: with Aim's 1 MB buffers a batch of 64 runs makes 4-8 level-0 files, and every 8 of
    # them compact the whole index again (a backfill of 1,000 runs rewrote it ~20 times)
    return {
        "write_buffer_size": 64 << 20,
        "max_write_buffer_number": 2,
        "db_write_buffer_size": 128 << 20,
        **_NO_INFO_LOG,
    }


def index_container(path: str) -> Any:
    """The repo index (``meta/index``) opened for writing as ``Repo._get_index_container`` opens
    it, with write buffers that hold a whole batch (`_index_tuning`)."""
    return _tuned_container(path, _index_tuning)
