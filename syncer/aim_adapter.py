"""The one module that touches Aim's internals (Aim 3.29.x).

Everything else in the syncer writes Aim only through this module.  Aim's public API
(``aim.Run.track``) stamps every point with *now*, commits one RocksDB batch per value and
column (plus range deletes), and cannot create a run under a chosen hash.  This module writes
the same storage layout Aim's own ``RunTracker`` writes, but

* with the caller's timestamps (MLflow's), so Aim's wall-time / relative-time axes are true;
* one RocksDB write batch per chunk of points (the ``seqs`` container) plus one small batch of
  sequence metadata (the ``meta`` container): far faster than ``Run.track``;
* idempotently: a point lives at a key derived from ``(context, name, step)``, so writing the
  same step again overwrites it; nothing reads the series history to append to it;
* under a caller-chosen run hash, re-openable on every later sync without touching the creation
  time that was set.

Interface (all that the sink uses)::

    w = AimRunWriter.open(repo_or_path, run_hash, experiment="exp")   # create or reopen
    w.set_info(name=..., description=..., params={...}, labels=["k=v"], archived=False)
    w.set_times(created_at=1.7e9, ended_at=None, active=True)         # seconds since epoch
    w.write_points("loss", {"subset": "train"}, steps, values, timestamps, epochs=None)
    w.write_objects("samples", {}, step, timestamp, aim.Text("..."))  # aim.Image / Text / Audio
    w.flush()    # durable: structured DB committed, RocksDB WAL fsync'ed; new points of
                 # sequences the index lists are readable by other processes from here on
    w.close()    # flush + index: listed by Repo.iter_runs / query_metrics / ``aim up``
    # many runs in a row: w.close(index=False) each, then one index_runs(repo, hashes)
    # a writer kept open across syncs (a running run, the sync daemon):
    w.index_due(max_age=5.0) -> bool          # new run / metadata / sequence: now; else <= 5 s
    index_writers([w, ...])                   # flush + index while open (one index pass)
    close_writers([w, ...])                   # close all, one index pass for those that need it
    index_missing(repo) -> [hashes indexed]   # self-healing; once when a backfill / daemon starts
    fresh_repo(path) -> aim.Repo              # in-process reads of what was just written

    system_metric_name("system/cpu_utilization_percentage") -> "__system__cpu"
    system_metric(name) -> (aim_name, context)     # context carries the GPU index, if any
    set_experiment_description(repo, "exp", "text")
    read_metric(repo, run_hash, name, context) -> dict   # read back through Aim's public SDK
    check_aim_compatibility()                            # raises AimInternalsChanged

How Aim 3.29 decides what the UI shows (read from its source):

* creation time = ``run.created_at`` column of the structured DB (``run_metadata.sqlite``);
  the runs table is ordered by it (``ORDER BY created_at DESC``), ``creation_time`` in the web
  API is its timestamp;
* end time = ``end_time`` key of the run's meta tree (``meta/chunks/<hash>/end_time``; the
  ``finalized_at`` column is only a fallback and is kept equal);
  ``active = not end_time``; ``duration = end_time - creation_time`` (or ``now - creation``);
* a run is listed by ``Repo.iter_runs`` / ``get_run`` / queries / ``aim up`` only once its meta
  chunk has been copied into the repo index (``meta/index``).  Aim itself indexes only from
  ``aim up``'s background indexer or ``aim storage reindex``; ``close()`` here calls that same
  indexing code (``RepoIndexManager.index``) for this run, so it is visible at once (to
  ``aim up`` too, running or not).  Indexing records a stamp of the chunk's files
  (``index_cache/<hash>``).  A writer killed after writing but before indexing leaves the
  run unlisted (or listed as it was): ``close()`` therefore also indexes when it wrote nothing
  but the index's stamp differs from the chunk as it found it, and ``index_missing(repo)``
  repairs every such run at once (when a process starts: runs closed with ``index=False``
  whose batch ``index_runs`` never came are seen by nobody else);
* ``Run.metrics()`` / ``Repo.query_metrics(q)`` / ``query_runs(q)`` add ``run.archived ==
  False`` to every query that does not mention ``run.archived``: an archived run (MLflow
  deleted) lists no metrics there, as with Aim's own SDK.  Its Run page shows them
  (``collect_sequence_info``); read them with ``iter_metrics_info()`` + ``get_metric()`` or a
  query with ``run.archived == True``;
* the Run page's *System* tab holds every metric whose name starts with ``__system__``.

Keeping a writer open (what ``syncer sync`` does for a RUNNING MLflow run, so a round with a
few new points neither reopens three RocksDB databases nor re-indexes):

* readers in other processes open the ``seqs`` chunk read-only, which replays the writer's
  WAL: new points of a sequence already in the index are visible right after :meth:`flush`
  (tested with a reader subprocess).  What only the index holds (the run itself, params, end
  time, the list of sequences, each sequence's last value / step / min / max shown in the
  tables) is refreshed by ``index_writers`` when ``index_due()`` says so;
* the run's lock (``locks/<hash>.softlock``) and its ``meta/progress/<hash>`` marker stay
  while it is open: another writer (a second syncer for the same run, ``aim.Run(hash)``, the
  ``aim`` CLI's run commands) cannot write that run meanwhile and gets :class:`AimRunLocked`
  after its timeout; ``aim up`` lists the run under ``/api/runs/active/`` meanwhile;
* a SIGKILLed holder leaves the lock and an index that lags the chunk: Aim takes a lock over
  when its recorded pid (same machine) is dead, and :func:`_drop_own_stale_lock` when it names
  this very pid but predates this process (containers restarted with the same pid);
  ``index_missing`` at start-up re-indexes the run.  A lock left by another machine id (e.g. a
  *recreated* container with a new MAC address) is not taken over: ``aim runs close --force``.

Caveats (Aim 3.29 behaviour, not worked around here):

* a running run (``end_time`` None) is shown as active but is in ``/api/runs/active/`` only
  while a writer holds it open (that lists runs with a ``meta/progress/<hash>`` file; ``aim
  up`` would mark such a run finished if it saw no heartbeat);
* while ``aim up`` runs, its indexer thread and ``index_runs`` take turns on the index DB;
  ``index_runs`` retries, but Aim's indexer thread does not catch the lock error and stops if
  it loses the race (then only runs we index are re-indexed until ``aim up`` restarts).
  ``close(index=False)`` + one ``index_runs`` per sync pass keeps the window small;
* Aim keys steps through a double: steps beyond +-2**53 are refused (they would collide);
* metric min/max are running aggregates: overwriting a point with a different value does not
  shrink them (Aim's own tracker behaves the same);
* in one process, ``Repo.list_all_runs()`` is cached for 0.5 s per repo path, even across new
  ``Repo`` objects: read with ``fresh_repo(path)`` right after writing (``get_run`` /
  ``iter_runs`` are not cached).

Bookkeeping of ours inside the run's meta tree: ``__mlflow_aim_syncer/labels`` (the tags this
module added, so later syncs can drop the ones MLflow no longer has).

Not thread-safe: one writer per run, used from one thread at a time (a writer kept open
across syncs may be used by another thread once the first is done with it, e.g. closed by
the main thread after the scheduler thread stopped).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import math
import operator
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

log = logging.getLogger(__name__)

# The Aim versions whose storage layout this module was written against and tested with.
SUPPORTED_AIM = ((3, 29), (3, 30))  # [3.29, 3.30)

# Steps are hashed by Aim through a C double: integers beyond 2**53 would collide.
MAX_ABS_STEP = 2**53

# A writer kept open flushes its seqs memtable to an SST file after this many points, so the WAL
# that every reader's read-only open replays stays short (~1.5 MB).
MEMTABLE_FLUSH_POINTS = 5000

_HASH_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_SYSTEM_PREFIX = "__system__"  # aim.ext.resource.configs.AIM_RESOURCE_METRIC_PREFIX
_MLFLOW_SYSTEM_PREFIX = "system/"
_METRIC_DTYPES = ("float", "int", "float64", "number")
# private bookkeeping inside the run's meta tree (not params: the UI never shows it)
_OWN_KEY = "__mlflow_aim_syncer"


class AimInternalsChanged(RuntimeError):
    """The installed Aim does not have the internals this module relies on."""


class AimRunLocked(RuntimeError):
    """Another writer (process) holds the Aim run's lock."""


# ----------------------------------------------------------------------------------------------
# compatibility guard

_compat_checked = False


def check_aim_compatibility() -> None:
    """Raise :class:`AimInternalsChanged` with a clear message when the installed Aim lacks an
    internal this module relies on, or its step hashing / encoding differs from what we write."""
    global _compat_checked
    if _compat_checked:
        return
    problems: list[str] = []
    if _IMPORT_ERROR is not None:
        problems.append(f"importing Aim's storage internals failed: {_IMPORT_ERROR!r}")
    try:
        import aim  # noqa: F401
        from aim.__version__ import __version__ as aim_version
    except Exception as e:  # pragma: no cover - aim missing entirely
        raise AimInternalsChanged(f"cannot import aim: {e}") from e
    try:
        ver = tuple(int(x) for x in aim_version.split(".")[:2])
    except ValueError:
        ver = (0, 0)
    lo, hi = SUPPORTED_AIM
    if not (lo <= ver < hi):
        problems.append(
            f"aim {aim_version} is outside the supported range "
            f"[{lo[0]}.{lo[1]}, {hi[0]}.{hi[1]}) (pinned in pyproject.toml)"
        )

    def need(modname: str, *attrs: str) -> Any:
        try:
            mod = __import__(modname, fromlist=["_"])
        except Exception as e:
            problems.append(f"module {modname} cannot be imported ({e})")
            return None
        for a in attrs:
            obj = mod
            for part in a.split("."):
                if not hasattr(obj, part):
                    problems.append(f"{modname}.{a} is missing")
                    break
                obj = getattr(obj, part)
        return mod

    need("aimrocks", "WriteBatch.put", "WriteBatch.delete_range", "DB.write", "DB.flush_wal", "errors.RocksIOError")
    need(
        "aim.sdk.repo",
        "Repo.request_container", "Repo.request_tree", "Repo.request_props", "Repo.request_run_lock",
        "Repo.from_path", "Repo.exists", "Repo._get_index_container", "ContainerConfig",
    )
    need("aim.sdk.repo_utils", "get_repo")
    need("aim.sdk.lock_manager", "LockManager.softlock_fname", "LockManager.machine_id", "SFRunLock")
    need("filelock", "SoftFileLock.lock_file", "SoftFileLock.timeout", "SoftFileLock.is_thread_local")
    need("aim.sdk.index_manager", "RepoIndexManager.get_index_manager", "RepoIndexManager.index",
         "RepoIndexManager._get_run_checksum")
    need("aim.sdk.repo", "Repo._all_run_hashes.cache_clear")
    need("aim.sdk.tracker", "RunTracker._track", "STEP_HASH_FUNCTIONS")
    need("aim.sdk.sequence", "SequenceV2Data.numpy")
    need("aim.storage.context", "Context")
    need("aim.storage.encoding", "encode", "encode_path", "encode_key", "encode_int64", "decode_path")
    need("aim.storage.treeutils", "encode_tree")
    need("aim.storage.utils", "ArrayFlag", "ObjectFlag")
    need("aim.storage.rockscontainer", "RocksContainer.set", "RocksContainer.delete_range",
         "RocksContainer.batch", "RocksContainer.commit", "RocksContainer.close", "RocksContainer.db")
    need("aim.storage.hashing.hashing", "hash_auto", "_HASH_UNIFORM_SALT")
    need("aim.storage.hashing.c_hash", "det_hash")
    need(
        "aim.storage.structured.sql_engine.models",
        "Run.hash", "Run.name", "Run.description", "Run.is_archived", "Run.created_at", "Run.finalized_at",
        "Run.experiment", "Run.tags", "Experiment.name", "Experiment.description", "Tag.name",
    )
    need("aim.storage.structured.sql_engine.entities", "ModelMappedRun", "ModelMappedExperiment")
    need("aimrocks", "Options", "VectorMemtableFactory")
    if not problems:
        # functional checks: our fast step-key derivation and value encoding equal Aim's own
        from aim.sdk.tracker import STEP_HASH_FUNCTIONS
        from aim.storage import encoding as E
        from aim.storage.utils import ArrayFlag

        try:
            for s in (0, 1, -1, 7, 2**31 + 5, 10**12, -(10**12), MAX_ABS_STEP):
                want = E.encode_key(STEP_HASH_FUNCTIONS[2](s)) + b"\xfe"
                if _step_key(s) != want:
                    problems.append(f"Aim's step hashing changed (step {s})")
                    break
            if E.encode(ArrayFlag) != _ARRAY_FLAG:
                problems.append("Aim's array-flag encoding changed")
            floats = [1.5, -0.0, math.nan, math.inf, -1e-300, 1.7e9 + 0.001]
            ints = [0, -1, 2**53, -(2**40) + 3]
            if (
                _encode_column(_FLOAT_TAG, np.array(floats)) != [E.encode(x) for x in floats]
                or _encode_column(_INT_TAG, np.array(ints, dtype=np.int64)) != [E.encode(x) for x in ints]
                or E.encode(None) != _NONE_ENC
            ):
                problems.append("Aim's value encoding changed")
        except Exception as e:  # pragma: no cover
            problems.append(f"Aim's hashing/encoding cannot be exercised ({e!r})")
    if problems:
        raise AimInternalsChanged(
            "syncer.aim_adapter relies on Aim internals that are not as expected:\n  - "
            + "\n  - ".join(problems)
            + "\nPin aim to the supported range or update syncer/aim_adapter.py (see its docstring)."
        )
    _compat_checked = True


# ----------------------------------------------------------------------------------------------
# low-level encoding (mirrors aim.sdk.tracker.RunTracker + aim.storage.encoding byte for byte)

try:
    from aim.storage import encoding as _E
    from aim.storage import treeutils as _treeutils
    from aim.storage.hashing import c_hash as _c_hash
    from aim.storage.hashing import hashing as _hashing
    from aim.storage.utils import ArrayFlag as _ArrayFlag
    from aim.storage.utils import ObjectFlag as _ObjectFlag

    _encode = _E.encode
    _encode_path = _E.encode_path
    _encode_int64 = _E.encode_int64
    _det_hash = _c_hash.det_hash
    _HASH_SALT = _hashing._HASH_UNIFORM_SALT
    _ARRAY_FLAG = _encode(_ArrayFlag)
    _OBJECT_FLAG = _encode(_ObjectFlag)
    _FLOAT_TAG = _encode(0.0)[:1]
    _INT_TAG = _encode(0)[:1]
    _NONE_ENC = _encode(None)
    _IMPORT_ERROR: Exception | None = None
except Exception as _e:  # reported with a clear message by check_aim_compatibility()
    _IMPORT_ERROR = _e

_blake2b = hashlib.blake2b
_LITTLE = sys.byteorder == "little"


def _step_key(step: int) -> bytes:
    """``encode_key(hash_auto(step)) + PATH_SENTINEL``: the key suffix of one point in a v2
    (metric) series array.  Same as ``aim.storage.hashing.hash_number`` without the call layers:
    ``blake2b(int64(det_hash(step)), salt)`` read as int64, encoded big-endian."""
    d = _blake2b(_encode_int64(_det_hash(step)), digest_size=8, salt=_HASH_SALT).digest()
    if _LITTLE:
        d = d[::-1]
    else:  # pragma: no cover
        d = int.from_bytes(d, sys.byteorder, signed=True).to_bytes(8, "big", signed=True)
    return b"\xfe" + d + b"\xfe"


_key_cache: dict[int, bytes] = {}
_KEY_CACHE_MAX = 65536  # bounded: ~8 MB; runs' metrics mostly share their steps


def _step_keys(steps: list[int]) -> list[bytes]:
    cache = _key_cache
    get = cache.get
    out = []
    append = out.append
    for s in steps:
        k = get(s)
        if k is None:
            k = _step_key(s)
            if len(cache) >= _KEY_CACHE_MAX:
                cache.clear()
            cache[s] = k
        append(k)
    return out


def _encode_column(tag: bytes, arr: np.ndarray) -> list[bytes]:
    """``[encode(x) for x in arr]`` for float64 (``tag`` = float) or int64 (``tag`` = int)
    arrays: Aim encodes both as a type byte and 8 little-endian bytes."""
    n = len(arr)
    buf = np.empty((n, 9), dtype=np.uint8)
    buf[:, 0] = tag[0]
    buf[:, 1:] = arr.astype(arr.dtype.newbyteorder("<"), copy=False).view(np.uint8).reshape(n, 8)
    b = buf.tobytes()
    return [b[i : i + 9] for i in range(0, 9 * n, 9)]


def _int_list(xs, what: str) -> list[int]:
    """Python ints from a sequence of ints / numpy ints / integral floats; rejects the rest."""
    arr = np.asarray(xs)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a flat sequence")
    kind = arr.dtype.kind
    if kind in "iu":
        return arr.tolist()
    if kind == "f" and bool(np.all(np.isfinite(arr))) and bool(np.all(arr == np.floor(arr))):
        return [int(x) for x in arr.tolist()]
    if kind == "O":
        return [operator.index(x) for x in xs]
    raise ValueError(f"{what} must be integers (got {arr.dtype})")


_WriteOptimizedContainer = None


def _write_optimized_container(path: str):
    """An ``aim.storage.rockscontainer.RocksContainer`` (write mode) whose RocksDB is opened
    with a vector memtable (fast bulk inserts, slow memtable reads: we never read through it)
    and 16 MB write buffers instead of Aim's 1 MB.  Only the in-memory write path differs; the
    files are plain RocksDB files every Aim reader opens with its own options."""
    global _WriteOptimizedContainer
    if _WriteOptimizedContainer is None:
        import aimrocks
        from aim.storage.rockscontainer import RocksContainer

        class WriteOptimizedContainer(RocksContainer):
            @property
            def _db_opts(self):
                return self.__dict__["_tuned_db_opts"]

            @_db_opts.setter
            def _db_opts(self, opts):
                self.__dict__["_tuned_db_opts"] = {
                    **opts,
                    "memtable_factory": aimrocks.VectorMemtableFactory(),
                    "allow_concurrent_memtable_write": False,
                    "write_buffer_size": 16 << 20,
                    "max_write_buffer_number": 2,
                    "db_write_buffer_size": 32 << 20,
                }

        _WriteOptimizedContainer = WriteOptimizedContainer
    return _WriteOptimizedContainer(path, read_only=False)


def _check_hash(run_hash: str) -> str:
    if not isinstance(run_hash, str) or not _HASH_RE.match(run_hash):
        raise ValueError(f"invalid Aim run hash {run_hash!r}: use 1-128 of [A-Za-z0-9_.-]")
    return run_hash


def _utc_naive(ts: float) -> _dt.datetime:
    """Seconds since the epoch -> naive UTC datetime, as Aim's structured DB stores them."""
    return _dt.datetime.fromtimestamp(float(ts), tz=_dt.timezone.utc).replace(tzinfo=None)


def _get_repo(repo):
    from aim.sdk.repo import Repo
    from aim.sdk.repo_utils import get_repo

    if isinstance(repo, Repo):
        return repo
    return get_repo(os.fspath(repo))


# ----------------------------------------------------------------------------------------------
# the writer


@dataclass
class _SeqInfo:
    """What the meta tree says about one metric series (kept in memory between chunks)."""

    new: bool
    first_step: int | None = None
    last_step: int | None = None
    min: float = math.inf
    max: float = -math.inf
    prefixes: tuple[bytes, bytes, bytes, bytes] = (b"", b"", b"", b"")  # val, step, epoch, time


class AimRunWriter:
    """Writes one Aim run (create or reopen) under a caller-chosen hash.

    Holds the run's lock (``<repo>/.aim/locks/<hash>.softlock``) and its RocksDB chunks open for
    writing until :meth:`close`.  Structured-DB changes (name, description, archived, tags,
    experiment, creation/end time) are collected and committed in one transaction by
    :meth:`flush` / :meth:`close`.  Also usable as a context manager.
    """

    # ---- open / close -----------------------------------------------------------------------

    def __init__(self, *args, **kwargs):  # pragma: no cover - use open()
        raise TypeError("use AimRunWriter.open(repo, run_hash, experiment=...)")

    @classmethod
    def open(
        cls, repo, run_hash: str, *, experiment: str | None = None, lock_timeout: float = 10
    ) -> "AimRunWriter":
        """Create the run ``run_hash`` in ``repo`` (an ``aim.Repo`` or a path; created when
        missing), or reopen it.  Reopening keeps the creation time, params, points, tags.
        ``experiment``: the run's experiment (created if missing); ``None`` leaves it as is
        (``default`` for a new run).  Raises :class:`AimRunLocked` when another writer holds
        the run after ``lock_timeout`` seconds (Aim's default: 10)."""
        check_aim_compatibility()
        _check_hash(run_hash)
        repo = _get_repo(repo)
        if repo.is_remote_repo:
            raise NotImplementedError("remote (aim://) repos are not supported; write to a local repo")
        self = object.__new__(cls)
        self._closed = True
        self._stamp_at_open = None
        self.repo = repo
        self.hash = run_hash
        _drop_own_stale_lock(repo, run_hash)
        self._lock = _thread_free(repo.request_run_lock(run_hash, timeout=lock_timeout))
        try:
            self._lock.lock()
        except Exception as e:
            raise AimRunLocked(
                f"cannot lock Aim run {run_hash} in {repo.path}: {type(e).__name__}: {e}"
                " (another writer holds it; if none does, `aim runs close --force` it)"
            ) from e
        try:
            # Aim's freshness stamp of the chunk as the last writer left it, taken before we open
            # it (opening changes its files): close() compares it with the index's stamp
            self._stamp_at_open = _chunk_stamp(repo, run_hash)
            self._meta_c = repo.request_container("meta", run_hash, read_only=False)
            self._seqs_c = None  # opened on the first point / object
            self._closed = False
            # tree views shaped like aim.sdk.base_run.BaseRun's (RunTracker reads them)
            self.read_only = False
            self.meta_tree = self._meta_c.tree().subtree("meta")
            self.meta_run_tree = self.meta_tree.subtree(("chunks", run_hash))
            self._series_run_trees = None
            self._seqs: dict[tuple[int, str], _SeqInfo] = {}
            self._contexts: set[int] = set()
            self._tracker = None
            # what the run index (``meta/index``) lacks; see index_due() / index()
            self._meta_dirty = False  # the meta chunk changed since the run was last indexed
            # ... in a way readers of the index notice at once: the run, its metadata (params,
            # end time) or its list of sequences (a new metric name / context, objects)
            self._index_urgent = self._stamp_at_open is None
            self._stale_checked = False  # whether the index was compared with the chunk as found
            self._indexed_open = False  # indexed while open: the stamp changes again on close
            self._last_index = time.monotonic()
            self._wal_dirty = {"meta": False, "seqs": False}  # written since the last flush()
            self._seqs_unflushed = 0  # points written since the seqs memtable was last flushed
            self._props_committed: dict[str, Any] = {}  # structured-DB values as last committed
            self._pending: dict[str, Any] = {}  # structured-DB changes, committed by flush/close
            if not repo.structured_db.find_run(run_hash):
                self._pending["create"] = True
                self._index_urgent = True
            if experiment is not None:
                self._pending["experiment"] = str(experiment)
            self._init_meta()
        except BaseException:
            self._release(index=False)
            raise
        return self

    def _init_meta(self) -> None:
        # what aim.sdk.run.BasicRun.__init__ writes for a run opened for writing, less end_time
        # (which it resets to None on every open: we keep what set_times() wrote)
        batch = self._meta_c.batch()
        n = batch.count()
        try:
            self.meta_run_tree.first_key("attrs")
        except (KeyError, StopIteration):
            self._tree_set(batch, ("meta", "chunks", self.hash, "attrs"), {})
            self._tree_set(batch, ("meta", "attrs"), {})
        if self.meta_run_tree.get("end_time", _MISSING) is _MISSING:
            self._tree_set(batch, ("meta", "chunks", self.hash, "end_time"), None)
        if batch.count() != n:
            self._meta_commit(batch, urgent=True)

    def _meta_commit(self, batch, *, urgent: bool = False) -> None:
        """Commit a batch to the meta chunk.  ``urgent``: the change must reach the run index
        soon (see :meth:`index_due`); otherwise it is per-sequence bookkeeping (last value,
        last step, min, max) that may lag a few seconds."""
        self._meta_c.commit(batch)
        self._meta_dirty = True
        self._wal_dirty["meta"] = True
        if urgent:
            self._index_urgent = True

    def _seqs_container(self):
        """The run's ``seqs`` chunk, opened on first use, with a vector memtable and larger
        write buffers: we only ever write through this handle (readers open their own, with
        Aim's options), and RocksDB takes our hash-ordered batches about twice as fast so."""
        c = self._seqs_c
        if c is None:
            from aim.sdk.repo import ContainerConfig

            config = ContainerConfig("seqs", self.hash, False)
            c = self.repo.container_pool.get(config)
            if c is None:
                path = os.path.join(self.repo.path, "seqs", "chunks", self.hash)
                try:
                    c = _write_optimized_container(path)
                except Exception as e:  # e.g. options refused: Aim's own container
                    log.debug("default RocksDB options for %s: %r", path, e)
                    c = None
                if c is not None:
                    self.repo.container_pool[config] = c
                else:
                    c = self.repo.request_container("seqs", self.hash, read_only=False)
            self._seqs_c = c
        return c

    @property
    def series_run_trees(self):
        if self._series_run_trees is None:
            seqs = self._seqs_container().tree().subtree("seqs")
            h = self.hash
            self._series_run_trees = {1: seqs.subtree(("chunks", h)), 2: seqs.subtree(("v2", "chunks", h))}
        return self._series_run_trees

    def flush(self) -> None:
        """Make everything written so far durable: commit the structured-DB changes, fsync the
        RocksDB write-ahead logs (only of the chunks written since the last flush: a flush with
        nothing new costs nothing).

        Points of a sequence the run index already lists are then visible to readers in other
        processes (``aim up``, a new ``aim.Repo``): they open the ``seqs`` chunk read-only,
        which replays this writer's WAL.  What lives in the index (the run itself, its params,
        end time, its list of sequences, their last value / step) needs :meth:`index` or
        :meth:`close`."""
        self._check_open()
        self._commit_props()
        for name, attr in (("meta", "_meta_c"), ("seqs", "_seqs_c")):
            c = self.__dict__.get(attr)
            if c is not None and self._wal_dirty[name]:
                c.db.flush_wal(True)
                self._wal_dirty[name] = False
        if self._seqs_unflushed >= MEMTABLE_FLUSH_POINTS and self._seqs_c is not None:
            # every reader's read-only open replays the WAL: keep it short for a writer that
            # stays open (the memtable goes to an SST file, a new WAL starts)
            self._seqs_c.db.flush()
            self._seqs_unflushed = 0

    # ---- the run index while open -----------------------------------------------------------

    def index_due(self, max_age: float = 5.0) -> bool:
        """Whether the run index should be refreshed now for this (open) run: at once when the
        run is not in the index (or the index holds an older state than the chunk this writer
        found: a killed writer), or when the run's metadata or list of sequences changed; at
        most every ``max_age`` seconds when only points of known sequences were added (their
        last value / step in Aim's tables lag that much; the points themselves are readable
        right after :meth:`flush`)."""
        self._check_open()
        if not self._stale_checked:
            self._stale_checked = True
            if not self._index_urgent and not self._indexed_open:
                found = _index_stamps(self.repo, [self.hash]).get(self.hash)
                if found != self._stamp_at_open:
                    self._index_urgent = True
        if self._index_urgent:
            return True
        return self._meta_dirty and time.monotonic() - self._last_index >= max_age

    def index(self) -> bool:
        """Flush and copy the run, as it is now, into the run index while keeping it open for
        writing (what ``aim up``'s indexer does for runs being written).  Returns whether it was
        indexed (``False``: the index is held by another process; try again later)."""
        return not index_writers([self])

    def _indexed(self) -> None:
        self._meta_dirty = self._index_urgent = False
        self._stale_checked = self._indexed_open = True
        self._last_index = time.monotonic()

    def close(self, *, index: bool = True) -> bool:
        """Commit, flush and close the run's storage, index it (so ``Repo.iter_runs``,
        ``get_run``, ``query_metrics`` and ``aim up`` list it at once) and release the lock.
        Idempotent.  ``index=False`` skips indexing: then call :func:`index_runs` for a batch
        of closed runs (one index open for all), or use :func:`close_writers`.  A session that
        wrote nothing still indexes when the index does not hold the run as this session found
        it (an earlier writer was killed before indexing): a read-only look-up of the index, a
        few ms.  Returns whether the run (still) needs indexing."""
        if self._closed:
            return False
        try:
            self._commit_props()
        except BaseException:
            self._release(index=False)  # never list a run whose structured-DB row is missing
            raise
        return self._release(index=index)

    def __enter__(self) -> "AimRunWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _release(self, *, index: bool, check_stale: bool = False) -> bool:
        from aim.sdk.repo import ContainerConfig

        self._closed = True
        try:
            # indexed while open: closing flushes the memtables, so the chunk's files (and the
            # index's freshness stamp of them) change once more
            dirty = self._meta_dirty or self._index_urgent or self._indexed_open
            for name in ("_meta_c", "_seqs_c"):
                c = self.__dict__.pop(name, None)
                if c is not None:
                    c.close()  # flush memtable + WAL, drop the progress marker
            for sub in ("meta", "seqs"):
                self.repo.container_pool.pop(ContainerConfig(sub, self.hash, False), None)
            self.meta_tree = self.meta_run_tree = self._series_run_trees = None
            self._tracker = None
            if not dirty and not self._stale_checked and (index or check_stale):
                # nothing written now, but an earlier writer (killed, or closed with
                # index=False and never indexed) may have left the index without this run or
                # with an older state of it: the index's stamp then differs from the chunk's
                dirty = self._stamp_at_open is None or _index_stamps(self.repo, [self.hash]).get(self.hash) != self._stamp_at_open
            if index and dirty:
                dirty = bool(index_runs(self.repo, [self.hash]))
            return dirty
        finally:
            lock, self._lock = self._lock, None
            if lock is not None:
                lock.release()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"AimRunWriter for run {self.hash} is closed")

    # ---- helpers ----------------------------------------------------------------------------

    def _tree_set(self, batch, path: tuple, value, strict: bool = True) -> None:
        """``ContainerTreeView.set(path, value)`` into ``batch`` of the meta container."""
        c = self._meta_c
        p = _encode_path(path)
        c.delete_range(p, p + b"\xff", store_batch=batch)
        for k, v in _treeutils.encode_tree(value, strict=strict):
            c.set(p + k, v, store_batch=batch)

    # ---- structured DB (sqlite) -------------------------------------------------------------

    def _commit_props(self) -> None:
        """Apply the pending structured-DB changes in one transaction (creating the run row,
        with its experiment, when missing).  The same tables Aim's ModelMappedRun writes."""
        if not self._pending:
            return
        from contextlib import nullcontext

        from aim.storage.structured.sql_engine.models import Experiment as ExperimentModel
        from aim.storage.structured.sql_engine.models import Run as RunModel
        from aim.storage.structured.sql_engine.models import Tag as TagModel
        from sqlalchemy.exc import IntegrityError

        p = self._pending
        db = self.repo.structured_db
        for attempt in range(3):
            session = db.get_session()
            try:
                with self.repo._sdb_lock if p.get("create") else nullcontext():
                    model = session.query(RunModel).filter(RunModel.hash == self.hash).first()
                    exp_name = p.get("experiment")
                    if model is None:
                        model = RunModel(self.hash, p.get("created_at"))
                        session.add(model)
                        exp_name = exp_name or "default"
                    if exp_name is not None and (model.experiment is None or model.experiment.name != exp_name):
                        exp = session.query(ExperimentModel).filter(ExperimentModel.name == exp_name).first()
                        if exp is None:
                            exp = ExperimentModel(exp_name)
                            session.add(exp)
                        model.experiment = exp
                    for attr in ("name", "description", "created_at", "finalized_at"):
                        if attr in p and getattr(model, attr) != p[attr]:
                            setattr(model, attr, p[attr])
                    if "archived" in p and bool(model.is_archived) != p["archived"]:
                        model.is_archived = p["archived"]
                    if "labels" in p:
                        attached = {t.name: t for t in model.tags}
                        for tag_name in p["labels_remove"]:
                            if tag_name in attached:
                                model.tags.remove(attached.pop(tag_name))
                        for tag_name in p["labels"]:
                            if tag_name not in attached:
                                tag = session.query(TagModel).filter(TagModel.name == tag_name).first()
                                if tag is None:
                                    tag = TagModel(tag_name)
                                    session.add(tag)
                                model.tags.append(tag)
                                attached[tag_name] = tag
                    session.commit()
                break
            except IntegrityError:  # an experiment / tag created meanwhile by another process
                session.rollback()
                if attempt == 2:
                    raise
            except BaseException:
                session.rollback()
                raise
        self._props_committed.update((k, p[k]) for k in ("created_at", "finalized_at") if k in p)
        self._pending = {}

    # ---- info / times -----------------------------------------------------------------------

    def set_info(
        self,
        *,
        name: str | None,
        description: str | None,
        params: dict,
        labels: Iterable[str],
        archived: bool,
    ) -> None:
        """Set the run's state (idempotent; call with the full desired state every sync).

        * ``name``: the run name (``None``: Aim's default ``Run: <hash>``);
        * ``description``: ``None`` clears it;
        * ``params``: replaces all of ``run[...]`` (Aim params; nested dicts fine; values Aim
          cannot store are kept as their ``repr``);
        * ``labels``: Aim run tags; missing ones are added, ones this module added earlier and
          no longer listed are removed, tags added by hand in Aim are left alone;
        * ``archived``: Aim's archived flag (MLflow deleted run -> archived).
        Structured-DB fields are committed by :meth:`flush` / :meth:`close`."""
        self._check_open()
        labels = list(dict.fromkeys(str(x) for x in labels if str(x)))
        ours_before = self.meta_run_tree.get((_OWN_KEY, "labels"), None) or []
        self._pending.update(
            name=name if name else f"Run: {self.hash}",
            description=description if description else None,
            archived=bool(archived),
            labels=labels,
            labels_remove=[t for t in ours_before if t not in set(labels)],
        )
        params = dict(params)
        batch = self._meta_c.batch()
        if self.meta_run_tree.get("attrs", None) != params or self.meta_tree.get("attrs", None) != params:
            for path in (("meta", "chunks", self.hash, "attrs"), ("meta", "attrs")):
                # as Aim leaves it after `run[...] = {}` (on open) and `run[key] = ...`: the
                # object flag on the root, then the keys
                self._tree_set(batch, path, params, strict=False)
                self._meta_c.set(_encode_path(path), _OBJECT_FLAG, store_batch=batch)
        if list(ours_before) != labels:
            self._tree_set(batch, ("meta", "chunks", self.hash, _OWN_KEY, "labels"), labels)
        if batch.count():
            self._meta_commit(batch, urgent=True)

    def set_times(self, *, created_at: float, ended_at: float | None, active: bool) -> None:
        """Creation time (MLflow start), end time (MLflow end) and the active flag, in seconds
        since the epoch.  ``active=True`` stores no end time (Aim: running).  A finished run
        without ``ended_at`` ends at ``created_at`` (Aim needs an end time to call it
        finished).  The creation time is committed by :meth:`flush` / :meth:`close`."""
        self._check_open()
        created_at = float(created_at)
        if active:
            end = None
        else:
            end = float(ended_at) if ended_at is not None else created_at
        times = {"created_at": _utc_naive(created_at), "finalized_at": _utc_naive(end) if end is not None else None}
        if any(self._props_committed.get(k, _MISSING) != v for k, v in times.items()):
            self._pending.update(times)  # a writer kept open commits them once, not every sync
        if self.meta_run_tree.get("end_time", _MISSING) != end:
            batch = self._meta_c.batch()
            self._tree_set(batch, ("meta", "chunks", self.hash, "end_time"), end)
            self._meta_commit(batch, urgent=True)

    # ---- metrics ----------------------------------------------------------------------------

    def _seq_info(self, ctx_idx: int, name: str) -> _SeqInfo:
        key = (ctx_idx, name)
        info = self._seqs.get(key)
        if info is not None:
            return info
        try:
            meta = self.meta_run_tree.subtree(("traces", ctx_idx, name)).collect()
        except KeyError:
            meta = None
        if not meta:
            info = _SeqInfo(new=True)
        else:
            dtype = meta.get("dtype", "float")
            if dtype not in _METRIC_DTYPES:
                raise ValueError(
                    f"Aim sequence {name!r} {self._ctx_repr(ctx_idx)} holds {dtype!r} objects, not metric values"
                )
            if meta.get("version", 1) != 2:
                raise ValueError(
                    f"Aim metric {name!r} uses the pre-3.11 storage layout; run `aim storage upgrade 3.11+`"
                )
            info = _SeqInfo(
                new=False,
                first_step=meta.get("first_step"),
                last_step=meta.get("last_step"),
                min=meta.get("min", math.inf),
                max=meta.get("max", -math.inf),
            )
            if dtype != "float":
                info.new = True  # rewrite dtype bookkeeping as float
        p = _encode_path(("seqs", "v2", "chunks", self.hash, ctx_idx, name))
        info.prefixes = tuple(p + _E.encode_key(col) + b"\xfe" for col in ("val", "step", "epoch", "time"))
        self._seqs[key] = info
        return info

    def _ctx_repr(self, ctx_idx: int) -> str:
        try:
            return f"context {self.meta_tree['contexts', ctx_idx]!r}"
        except KeyError:
            return f"context #{ctx_idx}"

    def write_points(
        self,
        name: str,
        context: dict | None,
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
        if not isinstance(name, str) or not name:
            raise ValueError("metric name must be a non-empty string")
        n = len(steps)
        if len(values) != n or len(timestamps) != n or (epochs is not None and len(epochs) != n):
            raise ValueError(
                f"metric {name!r}: steps/values/timestamps/epochs lengths differ "
                f"({n}, {len(values)}, {len(timestamps)}, {None if epochs is None else len(epochs)})"
            )
        if n == 0:
            return
        from aim.storage.context import Context

        ctx = Context(dict(context or {}))
        ctx_idx = ctx.idx
        info = self._seq_info(ctx_idx, name)
        pv, ps, pe, pt = info.prefixes

        step_list = _int_list(steps, f"metric {name!r}: steps")
        for s in (min(step_list), max(step_list)):
            if not -MAX_ABS_STEP <= s <= MAX_ABS_STEP:
                raise ValueError(f"metric {name!r}: step {s} is beyond +-2**53, which Aim cannot key exactly")
        vals = np.asarray(values, dtype=np.float64).reshape(n)
        times = np.asarray(timestamps, dtype=np.float64).reshape(n)
        keys = _step_keys(step_list)
        v_enc = _encode_column(_FLOAT_TAG, vals)
        s_enc = _encode_column(_INT_TAG, np.asarray(step_list, dtype=np.int64))
        t_enc = _encode_column(_FLOAT_TAG, times)
        if epochs is None:
            e_enc = [_NONE_ENC] * n
        else:
            e_enc = [_NONE_ENC if e is None else _encode(operator.index(e)) for e in epochs]

        seqs_c = self._seqs_container()
        batch = seqs_c.batch()
        put = batch.put
        for col in info.prefixes:
            put(col, _ARRAY_FLAG)  # array flags (TreeArrayView.allocate); idempotent
        for k, v, s, e, t in zip(keys, v_enc, s_enc, e_enc, t_enc):
            put(pv + k, v)
            put(ps + k, s)
            put(pe + k, e)
            put(pt + k, t)

        st = np.asarray(step_list, dtype=np.int64)
        lo = n - 1 - int(np.argmin(st[::-1]))  # last occurrence of the smallest step
        hi = n - 1 - int(np.argmax(st[::-1]))  # last occurrence of the largest step
        lo_step, lo_val = step_list[lo], float(vals[lo])
        hi_step, hi_val = step_list[hi], float(vals[hi])
        vmin, vmax = info.min, info.max
        ok = ~np.isnan(vals)  # Aim's min/max comparisons skip NaN
        if ok.any():
            vmax = max(vmax, float(vals[ok].max()))
            vmin = min(vmin, float(vals[ok].min()))
        # series data first, then its metadata: a crash in between leaves metadata that lags
        # (never metadata pointing at missing points); re-sending the chunk repairs it.
        seqs_c.db.write(batch)
        self._wal_dirty["seqs"] = True
        self._seqs_unflushed += n

        mbatch = self._meta_c.batch()
        mset = self._meta_c.set
        tp = ("meta", "chunks", self.hash, "traces", ctx_idx, name)
        tprefix = _encode_path(tp)

        def meta_put(key: str, value) -> None:
            mset(tprefix + _E.encode_key(key) + b"\xfe", _encode(value), store_batch=mbatch)

        if info.new:
            if ctx_idx not in self._contexts:
                cd = ctx.to_dict()
                self._tree_set(mbatch, ("meta", "contexts", ctx_idx), cd)
                self._tree_set(mbatch, ("meta", "chunks", self.hash, "contexts", ctx_idx), cd)
                self._contexts.add(ctx_idx)
            self._tree_set(mbatch, ("meta", "traces_types", "float", ctx_idx, name), 1)
            self._tree_set(mbatch, ("meta", "chunks", self.hash, "typed_traces", "metric", ctx_idx, name), 1)
            meta_put("dtype", "float")
            meta_put("version", 2)
        if info.first_step is None or lo_step <= info.first_step:
            meta_put("first", lo_val)
            meta_put("first_step", lo_step)
            info.first_step = lo_step
        if info.last_step is None or hi_step >= info.last_step:
            meta_put("last", hi_val)
            meta_put("last_step", hi_step)
            info.last_step = hi_step
        if vmax > info.max:
            meta_put("max", vmax)
            info.max = vmax
        if vmin < info.min:
            meta_put("min", vmin)
            info.min = vmin
        # a new sequence must reach the index soon (readers find sequences there); new points
        # of a known one are read from the seqs chunk, only its last value / step lag
        self._meta_commit(mbatch, urgent=info.new)
        info.new = False

    # ---- objects ----------------------------------------------------------------------------

    def write_objects(
        self,
        name: str,
        context: dict | None,
        step: int,
        timestamp: float,
        obj,
        *,
        epoch: int | None = None,
    ) -> None:
        """Track ``obj`` (an ``aim.Image``, ``aim.Text``, ``aim.Audio``, ``aim.Distribution``,
        ``aim.Figure`` or a list of one kind) at ``step`` with the given time (seconds).
        Uses Aim's own ``RunTracker`` (one object at a time), with the time fixed.  Writing the
        same step again overwrites it."""
        self._check_open()
        from aim.sdk.tracker import RunTracker
        from aim.storage.context import Context

        ctx = Context(dict(context or {}))
        if (ctx.idx, name) in self._seqs:
            raise ValueError(f"Aim sequence {name!r} in context {ctx.to_dict()!r} holds metric values")
        dtype = self.meta_run_tree.get(("traces", ctx.idx, name, "dtype"), None)
        if dtype in _METRIC_DTYPES:
            raise ValueError(f"Aim sequence {name!r} in context {ctx.to_dict()!r} holds metric values")
        if self._tracker is None:
            self._tracker = RunTracker(self)  # reads `meta_tree`, `meta_run_tree`, ... of self
        # RunTracker writes both chunks itself; a new object sequence must reach the index
        self._meta_dirty = self._index_urgent = True
        self._wal_dirty["meta"] = self._wal_dirty["seqs"] = True
        self._tracker._track(
            obj, float(timestamp), name, operator.index(step), None if epoch is None else operator.index(epoch),
            context=ctx.to_dict(),
        )


class _Missing:
    pass


_MISSING = _Missing()


# ----------------------------------------------------------------------------------------------
# visibility (the repo index)


def index_runs(repo, run_hashes: Iterable[str], *, attempts: int = 10) -> list[str]:
    """Copy the given (closed) runs' meta chunks into the repo index (``<repo>/.aim/meta/index``)
    with Aim's own indexing code (``RepoIndexManager.index``, what ``aim up``'s indexer and
    ``aim storage reindex`` run), so that ``Repo.iter_runs`` / ``get_run`` / queries and
    ``aim up`` list them.  The index DB is opened once for all the hashes.

    Returns the hashes not indexed now: the index is held by another process (``aim up``'s
    indexer, which then indexes them itself), or a chunk could not be read.

    A repo without an index (made by an old Aim) reads every chunk directly: nothing to do
    (creating an index there would hide every other not-yet-indexed run)."""
    import aimrocks.errors
    from aim.sdk.index_manager import RepoIndexManager
    from aim.sdk.repo import ContainerConfig

    hashes = list(dict.fromkeys(run_hashes))
    repo = _get_repo(repo)
    if not hashes or not os.path.isdir(os.path.join(repo.path, "meta", "index")):
        return []
    mgr = RepoIndexManager.get_index_manager(repo)
    index_repo = mgr.repo  # the manager indexes through the Repo it was made for
    config = ContainerConfig("meta/index", None, True)  # how Repo._get_index_container pools it
    container = None
    delay = 0.02
    for attempt in range(attempts):
        try:
            container = index_repo._get_index_container("meta", timeout=0)
            break
        except aimrocks.errors.RocksIOError as e:  # the index DB is open in another process
            if attempt == attempts - 1:
                log.warning("Aim's run index is busy (%s); `aim up` will index %d run(s) itself", e, len(hashes))
                return hashes
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
    failed = []
    try:
        for h in hashes:
            mgr.index(h)  # reuses the pooled container we hold
            if container.tree().get(("index_cache", h), None) is None:
                failed.append(h)
    finally:
        index_repo.container_pool.pop(config, None)
        container.close()  # flush and release the index DB at once
        # drop cached read-only handles on the index: they would not see the new entries
        for r in {id(repo): repo, id(index_repo): index_repo}.values():
            r.container_pool.pop(ContainerConfig("meta", None, True), None)
    if failed:
        log.warning("could not index Aim run(s) %s", ", ".join(failed))
    return failed


def index_writers(writers: Iterable["AimRunWriter"]) -> list["AimRunWriter"]:
    """Flush the given open writers (of one repo) and copy their runs, as they are now, into
    the run index in one pass (one open of the index DB), keeping them open for writing.
    Returns the writers not indexed now (the index is busy: try again later)."""
    writers = [w for w in writers if not w._closed]
    if not writers:
        return []
    for w in writers:
        w.flush()  # the indexer reads the chunk through its own read-only handle: WAL on disk
    failed = set(index_runs(writers[0].repo, [w.hash for w in writers]))
    for w in writers:
        if w.hash not in failed:
            w._indexed()
    return [w for w in writers if w.hash in failed]


def close_writers(writers: Iterable["AimRunWriter"], *, index: bool = True) -> list[str]:
    """Close several writers (of one repo), then index those that need it in one pass: what a
    long-lived syncer does when it stops.  Every writer is closed even if one fails (the first
    error is raised after).  Returns the hashes not indexed (``index=False``: all that need it)."""
    todo, error = [], None
    repo = None
    for w in list(writers):
        repo = w.repo
        try:
            w._commit_props()
        except BaseException as e:
            w._release(index=False)
            error = error or e
            continue
        try:
            if w._release(index=False, check_stale=index):
                todo.append(w.hash)
        except BaseException as e:
            error = error or e
    missed = index_runs(repo, todo) if (index and todo) else todo
    if error is not None:
        raise error
    return missed


def _thread_free(run_lock):
    """Aim's run lock with a ``filelock.SoftFileLock`` that any thread may release.

    Aim makes it with filelock's default ``thread_local=True``: a release from another thread
    than the one that locked is a silent no-op, and the lock file stays (held for good as far
    as this process is concerned).  A writer kept open between the daemon's rounds may be
    opened on one scheduler worker thread and closed on another, or on the main thread."""
    sf = getattr(run_lock, "_sf_lock", None)
    if sf is not None and sf.is_thread_local():
        from filelock import SoftFileLock

        run_lock._sf_lock = SoftFileLock(sf.lock_file, timeout=sf.timeout, thread_local=False)
    return run_lock


def _drop_own_stale_lock(repo, run_hash: str) -> None:
    """Remove a run lock that an earlier process with *this* process's id left behind.

    Aim frees a run lock whose writer died only when the recorded pid is not alive; a
    container restarted after a SIGKILL often gets the same pid (e.g. 7 under ``init: true``),
    so the dead writer's lock would look held by us.  A lock file naming this machine and this
    pid but written before this process started cannot be ours: it is stale."""
    from aim.sdk.lock_manager import LockManager

    path = os.path.join(repo.path, "locks", LockManager.softlock_fname(run_hash))
    try:
        with open(path) as fh:
            machine, pid, *_ = fh.read().split("-")
        if int(machine) != LockManager.machine_id or int(pid) != os.getpid():
            return
        if os.stat(path).st_mtime >= _process_started():
            return  # taken by this process (another writer object in it): a real conflict
        log.info("removing a stale lock of Aim run %s left by an earlier process with this pid", run_hash)
        os.unlink(path)
    except (OSError, ValueError):
        return


_started: float | None = None


def _process_started() -> float:
    global _started
    if _started is None:
        try:
            import psutil

            _started = psutil.Process().create_time()
        except Exception:  # pragma: no cover - no psutil: never take a lock over
            _started = -math.inf
    return _started


def _chunk_stamp(repo, run_hash: str) -> str | None:
    """Aim's freshness stamp of a run's meta chunk (md5 over its files' paths, mtimes and sizes:
    ``RepoIndexManager._get_run_checksum``), what indexing stores as ``index_cache/<hash>``;
    ``None`` when the chunk does not exist.  Stats the chunk's files, reads none."""
    from aim.sdk.index_manager import RepoIndexManager

    if not os.path.isdir(os.path.join(repo.path, "meta", "chunks", run_hash)):
        return None
    return RepoIndexManager.get_index_manager(repo)._get_run_checksum(run_hash)


def _open_index_for_reading(repo):
    """A private read-only handle on the run index (no lock taken, nothing written: not Aim's
    read path, which may rewrite the index's WAL); ``None`` when the repo has no index."""
    from aim.storage.rockscontainer import RocksContainer

    path = os.path.join(repo.path, "meta", "index")
    if not os.path.isdir(path):
        return None
    return RocksContainer(path, read_only=True, skip_read_optimization=True)


def _index_stamps(repo, run_hashes: Iterable[str] | None = None) -> dict[str, str]:
    """``index_cache`` of the run index: run hash -> the chunk stamp it was indexed at (all
    runs, or only ``run_hashes``: point lookups).  Empty when the index cannot be read."""
    try:
        c = _open_index_for_reading(repo)
    except Exception as e:  # e.g. files swapped by a concurrent compaction: treat as unknown
        log.debug("cannot read Aim's run index: %r", e)
        return {}
    if c is None:
        return {}
    try:
        tree = c.tree()
        if run_hashes is None:
            return {h: v for h, v in tree.subtree("index_cache").items()}
        out = {}
        for h in run_hashes:
            v = tree.get(("index_cache", h), None)
            if v is not None:
                out[h] = v
        return out
    finally:
        c.close()


def index_missing(repo, *, stale: bool = True) -> list[str]:
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
    repo = _get_repo(repo)
    chunks = os.path.join(repo.path, "meta", "chunks")
    if not os.path.isdir(os.path.join(repo.path, "meta", "index")) or not os.path.isdir(chunks):
        return []
    with os.scandir(chunks) as it:
        hashes = sorted(e.name for e in it if e.is_dir())
    if not hashes:
        return []
    stamps = None
    for attempt in range(3):
        try:
            c = _open_index_for_reading(repo)
            try:
                tree = c.tree()
                stamps = {h: v for h, v in tree.subtree("index_cache").items()}
                listed = set(tree.subtree(("meta", "chunks")).keys())
            finally:
                c.close()
            break
        except Exception as e:
            if attempt == 2:
                raise
            log.debug("reading Aim's run index: %r; retrying", e)
            time.sleep(0.2)
    todo = [h for h in hashes if h not in listed or h not in stamps]
    if stale:
        todo += [h for h in hashes if h in listed and h in stamps and stamps[h] != _chunk_stamp(repo, h)]
    if not todo:
        return []
    log.info("indexing %d Aim run(s) missing from (or outdated in) the run index", len(todo))
    failed = set(index_runs(repo, todo))
    return [h for h in todo if h not in failed]


def fresh_repo(path) -> Any:
    """A new ``aim.Repo`` for reading what was written a moment ago in this same process.

    ``Repo.list_all_runs()`` (``_all_run_hashes``) is cached for 0.5 s per repo *path* (a
    ``ttl_cache`` keyed by the Repo object, which hashes and compares by path), so even a new
    ``Repo(path)`` may list the runs of half a second ago; this drops that cache.  Other
    processes (``aim up``) are not affected.  Close the returned Repo when done."""
    from aim import Repo

    Repo._all_run_hashes.cache_clear()
    return Repo(_root_path(path))


def _root_path(path) -> str:
    """The repo root for ``aim.Repo``: ``path`` may be an ``aim.Repo``, its root or its ``.aim``."""
    if hasattr(path, "root_path"):
        return path.root_path
    p = os.fspath(path)
    return os.path.dirname(p.rstrip(os.sep)) if os.path.basename(p.rstrip(os.sep)) == ".aim" else p


# ----------------------------------------------------------------------------------------------
# experiments, system metrics, reading back


def set_experiment_description(repo, name: str, description: str | None) -> None:
    """Set the description of Aim experiment ``name`` (created when missing)."""
    repo = _get_repo(repo)
    db = repo.structured_db
    exp = None
    for e in db.experiments():
        if e.name == name:
            exp = e
            break
    if exp is None:
        try:
            exp = db.create_experiment(name)
        except ValueError:  # created meanwhile
            exp = next(e for e in db.experiments() if e.name == name)
    if exp.description != description:
        exp.description = description


# MLflow system metric (without `system/` and the GPU index) -> Aim's resource-tracker name
_SYSTEM_NAMES = {
    "cpu_utilization_percentage": "cpu",
    "system_memory_usage_percentage": "memory_percent",
    "disk_usage_percentage": "disk_percent",
    "gpu_utilization_percentage": "gpu",
    "gpu_memory_usage_percentage": "gpu_memory_percent",
    "gpu_power_usage_watts": "gpu_power_watts",
    "gpu_temperature_celsius": "gpu_temp",
}
_GPU_INDEXED = re.compile(r"^gpu_(?P<gpu>\d+)_(?P<what>.+)$")


def system_metric(name: str) -> tuple[str, dict]:
    """MLflow system metric -> (Aim system-metric name, context).

    Aim's Run page puts every metric whose name starts with ``__system__`` in its *System* tab
    (and names ``__system__cpu``, ``__system__memory_percent``, ``__system__disk_percent``,
    ``__system__gpu``, ``__system__gpu_memory_percent``, ``__system__gpu_power_watts``,
    ``__system__gpu_temp`` nicely in the explorers); Aim's own resource tracker keeps the GPU
    index in the context ``{"gpu": i}``.  Accepts ``system/gpu_0_utilization_percentage``,
    ``gpu_0_utilization_percentage`` or ``gpu_utilization_percentage`` (GPU index already moved
    to the context); other names keep their MLflow name after ``__system__``."""
    if name.startswith(_SYSTEM_PREFIX):
        return name, {}
    rest = name[len(_MLFLOW_SYSTEM_PREFIX):] if name.startswith(_MLFLOW_SYSTEM_PREFIX) else name
    ctx: dict = {}
    m = _GPU_INDEXED.match(rest)
    if m:
        ctx = {"gpu": int(m.group("gpu"))}
        rest = f"gpu_{m.group('what')}"
    return _SYSTEM_PREFIX + _SYSTEM_NAMES.get(rest, rest), ctx


def system_metric_name(name: str) -> str:
    """The Aim system-metric name for an MLflow system metric name; see :func:`system_metric`
    (which also returns the GPU-index context for names that still carry it)."""
    return system_metric(name)[0]


def read_metric(repo, run_hash: str, name: str, context: dict | None = None) -> dict | None:
    """Read a metric back through Aim's public SDK (a fresh ``aim.Repo``): a dict of
    ``steps``, ``values``, ``timestamps`` (seconds), ``epochs`` (lists, ordered by step), or
    ``None`` when the run or metric is not visible."""
    from aim import Repo
    from aim.storage.context import Context

    path = repo.root_path if hasattr(repo, "root_path") else os.fspath(repo)
    run = Repo(path).get_run(run_hash)
    if run is None:
        return None
    metric = run.get_metric(name, Context(dict(context or {})))
    if metric is None:
        return None
    steps, (values, epochs, timestamps) = metric.data.numpy()
    return {
        "steps": steps.tolist(),
        "values": values.tolist(),
        "timestamps": timestamps.tolist(),
        "epochs": [None if e != e else int(e) for e in epochs.tolist()],
    }
