"""The run index (``<repo>/.aim/meta/index``): what makes a run visible.

A run is listed by ``Repo.iter_runs`` / ``get_run`` / queries / ``aim up`` only once its meta
chunk (``meta/chunks/<hash>``) has been copied into the repo index.  Aim itself indexes only from
``aim up``'s background indexer or ``aim storage reindex``; :func:`index_runs` calls that same
indexing code (``RepoIndexManager.index``), so a run is visible at once (to ``aim up`` too,
running or not).  It runs it on a manager made without the watchdog observers that
``RepoIndexManager.__init__`` starts for ``aim up`` (:func:`indexer`): one inotify instance per
repo, never released, would run a long-lived syncer out of them.  Indexing records a stamp of
the chunk's files (``index_cache/<hash>``: md5 over their paths, mtimes and sizes).

A writer killed after writing but before indexing leaves the run unlisted (or listed as it
was): a writer's close therefore also indexes when it wrote nothing but the index's stamp
differs from the chunk as it found it (:class:`IndexFreshness`), and :func:`index_missing`
repairs every such run at once (when a process starts: runs closed with ``index=False`` whose
batch ``index_runs`` never came are seen by nobody else).

For a writer kept open, what only the index holds (the run itself, params, end time, the list
of sequences, each sequence's last value / step / min / max shown in the tables) is refreshed
by :func:`index_writers` when ``IndexFreshness.due()`` says so; new points of a sequence
already listed are readable without it.

Caveat (Aim 3.29): while ``aim up`` runs, its indexer thread and ``index_runs`` take turns on the
index DB; ``index_runs`` retries, but Aim's indexer thread does not catch the lock error and
stops if it loses the race (then only runs we index are re-indexed until ``aim up`` restarts).
Reproduced with two ``syncer sync`` and ``aim up`` on one repo: the thread dies within seconds,
every synced run stays listed by ``aim up`` with all its points (the syncers index them).
``close(index=False)`` + one ``index_runs`` per sync pass keeps the window small.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..retry import retrying
from . import space
from .repo import aim_path, get_repo

log = logging.getLogger(__name__)

# index_runs' retries while another process (aim up's indexer) holds the index DB
INDEX_ATTEMPTS = 10
INDEX_FIRST_DELAY = 0.02  # seconds, doubled after each attempt
INDEX_MAX_DELAY = 0.5
# index_missing's retries of reading the index (its files swapped by a concurrent compaction)
READ_ATTEMPTS = 3
READ_DELAY = 0.2
_UNSET: Any = object()


class IndexFreshness:
    """How the run index's entry for one open run compares with the run's meta chunk.

    Taken when the writer opens the run (before the chunk is opened: opening changes its
    files).  The index entry lags when the chunk changed since it was last indexed
    (:meth:`changed`), and must catch up *soon* (``urgent``) when readers of the index would
    notice: a new run, its metadata (params, end time), its list of sequences; per-sequence
    bookkeeping (last value / step, min, max) may lag up to ``max_age`` (:meth:`due`)."""

    def __init__(self, repo: Any, run_hash: str, *, new_run: bool, stamp: Any = _UNSET) -> None:
        self._repo = repo
        self._hash = run_hash
        # Aim's stamp of the chunk as the last writer left it (None: no chunk yet); taken by the
        # caller when it opened the chunk ahead
        self._stamp_at_open = chunk_stamp(repo, run_hash) if stamp is _UNSET else stamp
        self.dirty = False  # the meta chunk changed since the run was last indexed
        self.urgent = new_run or self._stamp_at_open is None  # ... in a way readers notice at once
        self._compared = False  # whether the index was compared with the chunk as found
        self._indexed_open = False  # indexed while open: the stamp changes again on close
        self._last_index = time.monotonic()

    def changed(self, *, urgent: bool = False) -> None:
        """The meta chunk was written; ``urgent``: the index must catch up soon."""
        self.dirty = True
        if urgent:
            self.urgent = True

    def due(self, max_age: float) -> bool:
        """Whether the index should be refreshed now: at once when the run is not in it (or it
        holds an older state than the chunk found at open: a killed writer), or when the change
        is urgent; at most every ``max_age`` seconds when only points of known sequences were
        added."""
        if not self._compared:
            self._compared = True
            if not self.urgent and not self._indexed_open and self._index_lags():
                self.urgent = True
        if self.urgent:
            return True
        return self.dirty and time.monotonic() - self._last_index >= max_age

    def indexed(self) -> None:
        """The run, as it is now, was copied into the index (the writer stays open)."""
        self.dirty = self.urgent = False
        self._compared = self._indexed_open = True
        self._last_index = time.monotonic()

    def needs_index_on_close(self, *, look: bool) -> bool:
        """Whether the closed run must be indexed.  Yes when it changed or was indexed while open
        (closing flushes the memtables: the chunk's files, so its stamp, change once more).
        With ``look``, also when nothing was written now but an earlier writer (killed, or
        closed with ``index=False`` and never indexed) left the index without this run or with
        an older state of it (a read-only look-up of the index, a few ms)."""
        if self.dirty or self.urgent or self._indexed_open:
            return True
        return look and not self._compared and self._index_lags()

    def _index_lags(self) -> bool:
        """The index's stamp of the run differs from the chunk's as found at open."""
        if self._stamp_at_open is None:
            return True
        return index_stamps(self._repo, [self._hash]).get(self._hash) != self._stamp_at_open


# What Aim's indexing code (``RepoIndexManager.index`` / ``_get_run_checksum``) reads on its
# manager, all that :func:`indexer` sets; ``compat`` checks Aim's code reads nothing else.
INDEXER_ATTRS = ("repo", "repo_path", "chunks_dir", "_corrupted_runs", "_watches")


@functools.cache
def _indexer_class() -> type:
    from aim.sdk.index_manager import RepoIndexManager

    class ObserverFreeIndexer(RepoIndexManager):
        """Aim's ``RepoIndexManager`` indexing code without what its ``__init__`` starts: a
        watchdog inotify ``Observer`` (an inotify instance and a thread, never released) and a
        ``PollingObserver``, for ``aim up``'s background indexer, which the syncer never runs."""

        def __init__(self, repo: Any) -> None:  # no super().__init__(): that makes the observers
            self.repo = repo
            self.repo_path = repo.path
            self.chunks_dir = Path(repo.path) / "meta" / "chunks"
            self._corrupted_runs: set[str] = set()
            self._watches: dict[str, Any] = {}  # nothing monitored

        def _stop_monitoring_chunk(self, run_hash: str) -> None:
            """``index`` stops watching a finished run's chunk: nothing is watched here."""

    return ObserverFreeIndexer


def indexer(repo: Any) -> Any:
    """Aim's own indexing code (``RepoIndexManager.index``, ``_get_run_checksum``) for ``repo``,
    without the inotify observer that ``RepoIndexManager.get_index_manager`` would create and
    keep for the life of the process (one inotify instance per repo: a long-lived process runs
    out of them, 128 per user by default).  Cheap: nothing opened, nothing started."""
    return _indexer_class()(repo)


def chunk_stamp(repo: Any, run_hash: str) -> str | None:
    """Aim's freshness stamp of a run's meta chunk (md5 over its files' paths, mtimes and sizes:
    ``RepoIndexManager._get_run_checksum``, computed here as it does without loading Aim;
    ``compat`` checks both agree), what indexing stores as ``index_cache/<hash>``; ``None`` when
    the chunk does not exist.  Stats the chunk's files, reads none."""
    chunk = os.path.join(str(Path(aim_path(repo)) / "meta" / "chunks"), run_hash)
    if not os.path.isdir(chunk):
        return None
    md5 = hashlib.md5()
    for root, _dirs, files in os.walk(chunk):
        for name in sorted(files):  # as RepoIndexManager._get_run_checksum
            if name.startswith("LOG"):
                continue
            filepath = os.path.join(root, name)
            try:
                st = os.stat(filepath)
            except FileNotFoundError:
                continue
            md5.update(filepath.encode("utf-8"))
            md5.update(str(st.st_mtime).encode("utf-8"))
            md5.update(str(st.st_size).encode("utf-8"))
    return md5.hexdigest()


# how Aim encodes what the run index holds and this module reads without Aim (``compat`` checks
# them against Aim's own encoding): a key path's elements end with the sentinel, a str value
# is its tag byte and UTF-8
SENTINEL = b"\xfe"
STR_TAG = b"\x04"
STAMP_PREFIX = b"index_cache" + SENTINEL
CHUNKS_PREFIX = b"meta" + SENTINEL + b"chunks" + SENTINEL


def _open_index_for_reading(repo: Any) -> Any:
    """A private read-only handle on the run index's RocksDB (no lock taken, nothing written:
    not Aim's read path, which may rewrite the index's WAL); ``None`` when the repo has none."""
    import aimrocks

    path = os.path.join(aim_path(repo), "meta", "index")
    if not os.path.isdir(path):
        return None
    return aimrocks.DB(path, aimrocks.Options(max_open_files=-1), read_only=True)


def _str(value: bytes | None) -> str | None:
    return value[1:].decode("utf-8") if value is not None and value[:1] == STR_TAG else None


def index_stamps(repo: Any, run_hashes: Iterable[str]) -> dict[str, str]:
    """``index_cache`` of the run index for ``run_hashes`` (point lookups): run hash -> the chunk
    stamp it was indexed at.  Empty when the index cannot be read."""
    try:
        db = _open_index_for_reading(repo)
    except Exception as e:  # e.g. files swapped by a concurrent compaction: unknown
        log.debug("cannot read Aim's run index: %r", e)
        return {}
    if db is None:
        return {}
    try:
        out = {}
        for h in run_hashes:
            v = _str(db.get(STAMP_PREFIX + h.encode() + SENTINEL))
            if v is not None:
                out[h] = v
        return out
    finally:
        del db


def index_runs(
    repo: Any,
    run_hashes: Iterable[str],
    *,
    attempts: int = INDEX_ATTEMPTS,
    items: dict[str, list[tuple[bytes, Any]]] | None = None,
) -> list[str]:
    """Copy the given runs' meta chunks into the repo index with Aim's own indexing code
    (``RepoIndexManager.index``, what ``aim up``'s indexer and ``aim storage reindex`` run),
    so that ``Repo.iter_runs`` / ``get_run`` / queries and ``aim up`` list them.  The index DB is
    opened once for all the hashes.  ``items``: for some of the runs, every (key, value) of
    their meta chunk, read by the caller (a batch reads them before it closes its writers): those
    are indexed from them (:func:`index_from_items`), their chunks not reopened.

    Returns the hashes not indexed now: the index is held by another process (``aim up``'s
    indexer, which then indexes them itself), or a chunk could not be read.

    A repo without an index (made by an old Aim) reads every chunk directly: nothing to do
    (creating an index there would hide every other not-yet-indexed run)."""
    import aimrocks.errors
    from aim.sdk.repo import ContainerConfig

    from .chunks import index_container  # (chunks imports Aim's storage: not at a no-op's start)

    hashes = list(dict.fromkeys(run_hashes))
    repo = get_repo(repo)
    if not hashes or not os.path.isdir(os.path.join(repo.path, "meta", "index")):
        return []
    if space.short(repo.path):  # the index DB's close would flush to a full disk: the next start indexes them
        log.debug("the Aim repo's filesystem is short of space: %d run(s) indexed later", len(hashes))
        return hashes
    mgr = indexer(repo)
    config = ContainerConfig("meta/index", None, True)  # how Repo._get_index_container pools it
    try:
        for tried in retrying(
            aimrocks.errors.RocksIOError, attempts=attempts, first_wait=INDEX_FIRST_DELAY, max_wait=INDEX_MAX_DELAY
        ):
            with tried:  # the index DB may be open in another process (aim up's indexer)
                container = repo.container_pool.get(config)
                if container is None:  # opened as Repo._get_index_container opens it, pooled where it
                    # pools it (Aim's indexer, below, takes it from there); buffers that hold a batch
                    container = repo.container_pool[config] = index_container(os.path.join(repo.path, "meta", "index"))
    except aimrocks.errors.RocksIOError as e:
        log.warning("Aim's run index is busy (%s); `aim up` will index %d run(s) itself", e, len(hashes))
        return hashes
    assert container is not None
    failed = []
    try:
        for h in hashes:
            if items is not None and h in items:
                index_from_items(container, h, items[h], chunk_stamp(repo, h))
                continue
            mgr.index(h)  # reuses the pooled container we hold
            if container.tree().get(("index_cache", h), None) is None:
                failed.append(h)
    finally:
        repo.container_pool.pop(config, None)
        container.close()  # flush and release the index DB at once
        # drop the cached read-only handle on the index: it would not see the new entries
        repo.container_pool.pop(ContainerConfig("meta", None, True), None)
    if failed:
        log.warning("could not index Aim run(s) %s", ", ".join(failed))
    return failed


def index_from_items(index: Any, run_hash: str, items: list[tuple[bytes, Any]], stamp: str | None) -> None:
    """What ``RepoIndexManager.index`` writes for one run into the index container ``index``,
    from the (key, value) items of the run's meta chunk and its stamp: the run's subtree of the
    index cleared (``PrefixView.finalize``), every item of the chunk copied
    (``RocksContainer.finalize``), ``index_cache/<hash>`` set to the stamp -- the same entries, in
    one RocksDB batch instead of a write per key (``tests/test_aim_adapter`` compares the index
    both make); a plain value's twin in the blob domain is not deleted: the chunk had none there
    (a value stored as a blob comes back as one and is set as Aim sets it)."""
    from aim.storage import encoding as aim_encoding
    from aim.storage import treeutils

    E: Any = aim_encoding  # compiled (Cython)
    batch = index.batch()
    prefix = E.encode_path(("meta", "chunks", run_hash))
    index.delete_range(prefix, prefix + b"\xff", store_batch=batch)
    put = batch.put
    for key, value in items:
        if isinstance(value, bytes):  # a key's twin in the blob domain: none, the chunk has no blob there
            put(key, value)
        else:
            index.set(key, value, store_batch=batch)
    path = E.encode_path(("index_cache", run_hash))
    index.delete_range(path, path + b"\xff", store_batch=batch)
    for key, value in treeutils.encode_tree(stamp, strict=True):
        index.set(path + key, value, store_batch=batch)
    index.commit(batch)


def index_missing(repo: Any, *, stale: bool = True) -> list[str]:
    """Index every run that has a meta chunk but that Aim's index lacks (``get_run`` returns
    ``None`` for it), or (``stale=True``) whose index entry is older than its chunk; returns
    the hashes indexed.  Self-healing after a writer was killed between writing a run and
    indexing it (e.g. runs closed with ``index=False`` whose batch ``index_runs`` never came).
    Call it once when a backfill or the sync daemon starts.

    Cost when all is well: one listing of ``meta/chunks``, one read-only pass over the index's
    ``index_cache`` keys and, with ``stale``, a ``stat`` of each chunk's files (what Aim's own
    indexer does every 5 s); no chunk is opened.  Runs it indexes cost what ``index_runs`` does.
    Runs being written right now by someone else may show as stale: indexing them is harmless
    (``aim up`` does the same)."""
    chunks = os.path.join(aim_path(repo), "meta", "chunks")
    if not os.path.isdir(os.path.join(aim_path(repo), "meta", "index")) or not os.path.isdir(chunks):
        return []
    with os.scandir(chunks) as it:
        hashes = sorted(e.name for e in it if e.is_dir())
    if not hashes:
        return []
    stamps, listed = _read_index(repo)
    todo = [h for h in hashes if h not in listed or h not in stamps]
    if stale:
        todo += [h for h in hashes if h in listed and h in stamps and stamps[h] != chunk_stamp(repo, h)]
    if not todo or space.short(aim_path(repo)):  # short of space: the next start (or open) does it
        return []
    # a chunk whose run never got its structured-DB row (a writer killed between the two): Aim
    # cannot list such a run; the sync that wrote it writes it again, row and all
    from .structured import existing_rows

    rows = existing_rows(repo, todo)
    todo = [h for h in todo if h in rows]
    if not todo:
        return []
    log.info("indexing %d Aim run(s) missing from (or outdated in) the run index", len(todo))
    failed = set(index_runs(repo, todo))
    return [h for h in todo if h not in failed]


def _read_index(repo: Any) -> tuple[dict[str, str], set[str]]:
    """The whole ``index_cache`` (hash -> stamp) and the hashes whose chunk the index lists."""

    def read() -> tuple[dict[str, str], set[str]]:
        db = _open_index_for_reading(repo)
        try:
            stamps: dict[str, str] = {}
            it = db.iteritems()
            it.seek(STAMP_PREFIX)
            for key, value in it:
                if not key.startswith(STAMP_PREFIX):
                    break
                h, end = key[len(STAMP_PREFIX) :].partition(SENTINEL)[::2]
                stamp = _str(value)
                if stamp is not None and end == b"":  # index_cache/<hash>, a str
                    stamps[h.decode()] = stamp
            listed: set[str] = set()
            keys = db.iterkeys()
            keys.seek(CHUNKS_PREFIX)
            while True:  # one key a run: then on past its subtree
                try:
                    key = keys.next()
                except StopIteration:
                    break
                if key is None or not key.startswith(CHUNKS_PREFIX):  # (aimrocks: None at the end)
                    break
                h = key[len(CHUNKS_PREFIX) :].partition(SENTINEL)[0]
                listed.add(h.decode())
                keys.seek(CHUNKS_PREFIX + h + b"\xff")
            return stamps, listed
        finally:
            del db

    # files swapped under a read-only handle by a concurrent compaction: read again
    for tried in retrying(Exception, attempts=READ_ATTEMPTS, first_wait=READ_DELAY, max_wait=READ_DELAY):
        with tried:
            return read()
    raise AssertionError("unreachable")
