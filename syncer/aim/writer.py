"""The run writer: one Aim run, created or reopened under a caller-chosen hash.

Writes the storage layout Aim's own ``RunTracker`` writes (``aim.sdk.base_run`` +
``aim.sdk.tracker``), but with the caller's timestamps, one RocksDB batch per chunk of points,
idempotently (a point's key derives from ``(context, name, step)``), and re-openable on every
later sync without touching the creation time that was set.  Its parts live next door: the
chunks (``chunks.RunChunks``), the sequences (``tracker.SequenceTracker``), the run row
(``structured.RunRow``), the index entry's freshness (``index.IndexFreshness``), the lock
(``locks.lock_run``), the byte encoding (``encoding``).

What the UI takes from the run's meta tree (``meta/chunks/<hash>``): params (``attrs``), the
list of sequences with their last value / step / min / max (``traces``), and the end time:
``end_time`` key (``finalized_at`` in the structured DB is only a fallback, kept equal);
``active = not end_time``; ``duration = end_time - creation_time`` (or ``now - creation``).
Bookkeeping of ours there: ``__mlflow_aim_syncer/labels`` (the tags this writer added, so later
syncs can drop the ones MLflow no longer has) and ``__mlflow_aim_syncer/note`` (the text of the
run note this writer wrote, so a later sync updates that note and no other).

Crash-safe order: series data before its metadata (a crash in between leaves metadata that
lags, never metadata pointing at missing points); everything durable at :meth:`flush` (structured
DB committed, WALs fsync'ed) before the caller commits its cursors; indexing last.

Keeping a writer open (what ``syncer sync`` does for a RUNNING MLflow run, so a round with a
few new points neither reopens three RocksDB databases nor re-indexes): new points of a
sequence already in the index are visible to other processes right after :meth:`flush`; the
rest waits for ``index_writers`` when :meth:`index_due` says so.  The run's lock and its
``meta/progress/<hash>`` marker stay while it is open: ``aim up`` lists the run under
``/api/runs/active/`` only meanwhile (a running run, ``end_time`` None, is shown as active
either way; ``aim up`` would mark a run with a progress marker finished if it saw no heartbeat).

Not thread-safe: one writer per run, used from one thread at a time (a writer kept open
across syncs may be used by another thread once the first is done with it, e.g. closed by
the main thread after the scheduler thread stopped).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import encoding as enc
from . import index as _index
from .chunks import OpenedChunks, RunChunks, open_chunks
from .compat import check_aim_compatibility
from .locks import lock_run
from .repo import get_repo
from .structured import RunRow
from .tracker import SequenceTracker

if TYPE_CHECKING:
    from typing import Self

# private bookkeeping inside the run's meta tree (not params: the UI never shows it)
OWN_KEY = "__mlflow_aim_syncer"
_MISSING = object()


@dataclass
class Prepared:
    """What opening a run takes before any write: its lock, the index stamp of its chunk as the
    last writer left it, its chunks open (see :func:`prepare`)."""

    lock: Any
    stamp: str | None
    chunks: OpenedChunks | None


def prepare(repo: Any, run_hash: str, *, seqs: bool, lock_timeout: float = 10) -> Prepared:
    """Take the run's lock, stamp its chunk, open (create) its chunks: the part of opening a
    writer that waits on the disk, safe in a thread of its own (``batch.WriterBatch`` opens the
    runs it writes next so, side by side).  :class:`AimRunLocked` when another writer holds it."""
    lock = lock_run(repo, run_hash, lock_timeout)
    try:
        stamp = _index.chunk_stamp(repo, run_hash)  # before opening: opening changes its files
        return Prepared(lock, stamp, open_chunks(repo, run_hash, seqs=seqs))
    except BaseException:
        lock.release()
        raise


class AimRunWriter:
    """Writes one Aim run (create or reopen) under a caller-chosen hash.

    Holds the run's lock (``<repo>/.aim/locks/<hash>.softlock``) and its RocksDB chunks
    (:attr:`chunks`) open for writing until :meth:`close`.  Structured-DB changes (name,
    description, archived, tags, experiment, creation/end time) are collected in :attr:`row`
    and committed in one transaction by :meth:`flush` / :meth:`close`.  Also usable as a
    context manager.
    """

    repo: Any  # aim.Repo
    hash: str
    row: RunRow  # the structured-DB row's pending changes
    freshness: _index.IndexFreshness  # how the run index's entry compares with the chunk
    chunks: RunChunks  # the meta and seqs chunks, open for writing
    _closed: bool
    _lock: Any
    _sequences: SequenceTracker  # metric series and objects

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # pragma: no cover - use open()
        raise TypeError("use AimRunWriter.open(repo, run_hash, experiment=...)")

    # ---- open / flush / close ---------------------------------------------------------------

    @classmethod
    def open(
        cls,
        repo: Any,
        run_hash: str,
        *,
        experiment: str | None = None,
        lock_timeout: float = 10,
        prepared: Prepared | None = None,
        row_exists: bool | None = None,
    ) -> AimRunWriter:
        """Create the run ``run_hash`` in ``repo`` (an ``aim.Repo`` or a path; created when
        missing), or reopen it.  Reopening keeps the creation time, params, points, tags.
        ``experiment``: the run's experiment (created if missing); ``None`` leaves it as is
        (``default`` for a new run).  Raises :class:`AimRunLocked` when another writer holds
        the run after ``lock_timeout`` seconds (Aim's default: 10).  ``prepared``: the lock
        and chunks taken ahead by :func:`prepare` (in another thread); ``row_exists``: whether
        the structured DB has the run's row, when the caller looked (for many runs at once)."""
        check_aim_compatibility()
        enc.check_hash(run_hash)
        repo = get_repo(repo)
        if repo.is_remote_repo:
            raise NotImplementedError("remote (aim://) repos are not supported; write to a local repo")
        if prepared is None:
            prepared = prepare(repo, run_hash, seqs=False, lock_timeout=lock_timeout)
        self = object.__new__(cls)
        self._closed = True
        self.repo = repo
        self.hash = run_hash
        self._lock = prepared.lock
        try:
            self.row = RunRow(repo, run_hash, experiment=experiment, exists=row_exists)
            self.freshness = _index.IndexFreshness(repo, run_hash, new_run=self.row.is_new, stamp=prepared.stamp)
            self.chunks = RunChunks(repo, run_hash, on_meta_change=self.freshness.changed, opened=prepared.chunks)
            prepared.chunks = None  # the writer's now
            self._closed = False
            self._sequences = SequenceTracker(self.chunks, new_run=self.row.is_new and prepared.stamp is None)
        except BaseException:
            if prepared.chunks is not None:
                prepared.chunks.close()
            self._shut()
            raise
        return self

    @property
    def closed(self) -> bool:
        return self._closed

    def flush(self) -> None:
        """Make everything written so far durable: commit the structured-DB changes, fsync the
        RocksDB write-ahead logs (only of the chunks written since the last flush: a flush with
        nothing new costs nothing).

        Points of a sequence the run index already lists are then visible to readers in other
        processes (``aim up``, a new ``aim.Repo``): they open the ``seqs`` chunk read-only,
        which replays this writer's WAL.  What lives in the index (the run itself, its params,
        end time, its list of sequences, their last value / step) needs ``index_writers`` or
        :meth:`close`."""
        self._check_open()
        self._sequences.settle()
        self.row.commit()
        self.chunks.flush()

    def index_due(self, max_age: float = 5.0) -> bool:
        """Whether the run index should be refreshed now for this (open) run (then call
        ``index_writers``): see ``IndexFreshness.due``.  Points of known sequences are readable
        right after :meth:`flush`; only their last value / step in Aim's tables lag."""
        self._check_open()
        self._sequences.settle()  # a new sequence among the points waiting makes it due
        return self.freshness.due(max_age)

    def close(self, *, index: bool = True, look: bool = False) -> bool:
        """Commit, flush and close the run's storage, index it (so ``Repo.iter_runs``,
        ``get_run``, ``query_metrics`` and ``aim up`` list it at once) and release the lock.
        Idempotent.  ``index=False`` skips indexing: then call ``index_runs`` for a batch of
        closed runs (one index open for all), or use ``close_writers``.  A session that wrote
        nothing still indexes when the index does not hold the run as this session found it (an
        earlier writer was killed before indexing): a read-only look-up of the index, a few ms;
        ``look=True`` does that look-up without indexing.  Returns whether the run (still) needs
        indexing."""
        if self._closed:
            return False
        try:
            self._sequences.settle()
            self.row.commit()
        except BaseException:
            self._shut()  # never list a run whose structured-DB row is missing
            raise
        self._closed = True
        try:
            self.chunks.close()  # flush memtables + WALs, drop the progress marker
            needs = self.freshness.needs_index_on_close(look=index or look)
            if index and needs:
                needs = bool(_index.index_runs(self.repo, [self.hash]))
            return needs
        finally:
            self._unlock()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def settle(self) -> None:
        """Write the chunks of points still waiting (``SequenceTracker.settle``): the writer's
        chunks then hold everything written so far."""
        self._check_open()
        self._sequences.settle()

    def close_storage(self) -> None:
        """The writer is done: no more writes.  Flush and close its chunks (durable: SST files,
        fsync'ed) -- from any thread, after :meth:`settle`; the caller then commits :attr:`row`
        (``commit_rows``, many runs in one transaction), indexes (``index_runs``) and calls
        :meth:`release`."""
        self._closed = True
        self.chunks.close_storage()

    def release(self) -> None:
        """After :meth:`close_storage` (the writer's thread): forget the chunks, free the lock."""
        try:
            self.chunks.forget()
        finally:
            self._unlock()

    def _shut(self) -> None:
        """Close the storage and release the lock; nothing committed, nothing indexed."""
        self._closed = True
        try:
            chunks = getattr(self, "chunks", None)  # none when opening failed before
            if chunks is not None and chunks.meta is not None:
                chunks.close()
        finally:
            self._unlock()

    def _unlock(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"AimRunWriter for run {self.hash} is closed")

    # ---- info / times -----------------------------------------------------------------------

    def set_info(
        self,
        *,
        name: str | None,
        description: str | None,
        params: dict[str, Any],
        labels: Iterable[str],
        archived: bool,
        note: str | None | object = _MISSING,
    ) -> None:
        """Set the run's state (idempotent; call with the full desired state every sync).

        * ``name``: the run name (``None``: Aim's default ``Run: <hash>``);
        * ``description``: ``None`` clears it;
        * ``params``: replaces all of ``run[...]`` (Aim params; nested dicts fine; values Aim
          cannot store are kept as their ``repr``);
        * ``labels``: Aim run tags; missing ones are added, ones this writer added earlier and
          no longer listed are removed, tags added by hand in Aim are left alone;
        * ``archived``: Aim's archived flag (MLflow deleted run -> archived);
        * ``note``: the text of the run note this writer keeps (Aim's Notes tab shows the note
          updated last); ``None`` removes it; left out: notes untouched.  Notes written in Aim's UI
          are left alone.
        Structured-DB fields are committed by :meth:`flush` / :meth:`close`."""
        self._check_open()
        self._sequences.settle()  # points first: metadata never runs ahead of them
        labels = list(dict.fromkeys(str(x) for x in labels if str(x)))
        ours_before = self.chunks.meta_run_tree.get((OWN_KEY, "labels"), None) or []
        self.row.set_info(
            name=name if name else f"Run: {self.hash}",
            description=description if description else None,
            archived=bool(archived),
            labels=labels,
            labels_remove=[t for t in ours_before if t not in set(labels)],
        )
        chunks = self.chunks
        batch = chunks.meta.batch()
        if note is not _MISSING:
            note_before = chunks.meta_run_tree.get((OWN_KEY, "note"), None)
            note_text = str(note) if note else None
            self.row.set_note(note_text, before=note_before)
            if note_before != note_text:
                chunks.tree_set(batch, ("meta", "chunks", self.hash, OWN_KEY, "note"), note_text)
        params = dict(params)
        if chunks.meta_run_tree.get("attrs", None) != params or chunks.meta_tree.get("attrs", None) != params:
            items = list(enc.encode_tree(params, strict=False))  # encoded once for both paths
            for path in (("meta", "chunks", self.hash, "attrs"), ("meta", "attrs")):
                # as Aim leaves it after `run[...] = {}` (on open) and `run[key] = ...`: the
                # object flag on the root, then the keys
                chunks.tree_set(batch, path, params, items=items)
                chunks.meta.set(enc.encode_path(path), enc.OBJECT_FLAG, store_batch=batch)
        if list(ours_before) != labels:
            chunks.tree_set(batch, ("meta", "chunks", self.hash, OWN_KEY, "labels"), labels)
        if batch.count():
            chunks.commit_meta(batch, urgent=True)

    def set_times(self, *, created_at: float, ended_at: float | None, active: bool) -> None:
        """Creation time (MLflow start), end time (MLflow end) and the active flag, in seconds
        since the epoch.  ``active=True`` stores no end time (Aim: running).  A finished run
        without ``ended_at`` ends at ``created_at`` (Aim needs an end time to call it
        finished).  The creation time is committed by :meth:`flush` / :meth:`close`."""
        self._check_open()
        self._sequences.settle()  # points first: a run shows as ended only once it has them
        created_at = float(created_at)
        if active:
            end = None
        else:
            end = float(ended_at) if ended_at is not None else created_at
        self.row.set_times(created_at, end)
        if self.chunks.meta_run_tree.get("end_time", _MISSING) != end:
            batch = self.chunks.meta.batch()
            self.chunks.tree_set(batch, ("meta", "chunks", self.hash, "end_time"), end)
            self.chunks.commit_meta(batch, urgent=True)

    # ---- sequences --------------------------------------------------------------------------

    def write_points(
        self,
        name: str,
        context: dict[str, Any] | None,
        steps: Sequence[int],
        values: Sequence[float],
        timestamps: Sequence[float],
        epochs: Sequence[int | None] | None = None,
    ) -> None:
        """Write one chunk of a metric series in one RocksDB batch.

        ``timestamps`` are seconds since the epoch (floats); Aim reads them back as the point
        time.  A point is keyed by (name, context, step): writing a step again overwrites it,
        so re-sending a chunk never doubles points (pass one winner per step; if a chunk
        repeats a step, its last occurrence wins).  Steps may arrive in any order and may be
        huge (|step| <= 2**53, Aim hashes steps as doubles).  NaN and +-inf are stored as is.
        Cost is proportional to the chunk, not to the series length."""
        self._check_open()
        self._sequences.write_points(name, context, steps, values, timestamps, epochs)

    def write_objects(
        self,
        name: str,
        context: dict[str, Any] | None,
        step: int,
        timestamp: float,
        obj: Any,
        *,
        epoch: int | None = None,
    ) -> None:
        """Track ``obj`` (an ``aim.Image``, ``aim.Text``, ``aim.Audio``, ``aim.Distribution``,
        ``aim.Figure`` or a list of one kind) at ``step`` with the given time (seconds).
        Uses Aim's own ``RunTracker`` (one object at a time), with the time fixed.  Writing the
        same step again overwrites it."""
        self._check_open()
        self._sequences.write_objects(name, context, step, timestamp, obj, epoch)


def index_writers(writers: Iterable[AimRunWriter]) -> list[AimRunWriter]:
    """Flush the given open writers (of one repo) and copy their runs, as they are now, into
    the run index in one pass (one open of the index DB), keeping them open for writing.
    Returns the writers not indexed now (the index is busy: try again later)."""
    writers = [w for w in writers if not w.closed]
    if not writers:
        return []
    for w in writers:
        w.flush()  # the indexer reads the chunk through its own read-only handle: WAL on disk
    failed = set(_index.index_runs(writers[0].repo, [w.hash for w in writers]))
    for w in writers:
        if w.hash not in failed:
            w.freshness.indexed()
    return [w for w in writers if w.hash in failed]


def close_writers(writers: Iterable[AimRunWriter], *, index: bool = True) -> list[str]:
    """Close several writers (of one repo), then index those that need it in one pass: what a
    long-lived syncer does when it stops.  Every writer is closed even if one fails (the first
    error is raised after).  Returns the hashes not indexed (``index=False``: all that need it)."""
    todo: list[str] = []
    error: BaseException | None = None
    repo = None
    for w in list(writers):
        repo = w.repo
        try:
            if w.close(index=False, look=index):
                todo.append(w.hash)
        except BaseException as e:  # raised after the others are closed
            error = error or e
    missed = _index.index_runs(repo, todo) if (index and todo) else todo
    if error is not None:
        raise error
    return missed
