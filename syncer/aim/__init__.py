"""The only package that touches Aim's internals (Aim 3.29.x), split as Aim splits itself.

Everything else in the syncer writes Aim through the names below.  Aim's public API
(``aim.Run.track``) stamps every point with *now*, commits one RocksDB batch per value and
column (plus range deletes), and cannot create a run under a chosen hash.  This package writes
the same storage layout Aim's own ``RunTracker`` writes, but

* with the caller's timestamps (MLflow's), so Aim's wall-time / relative-time axes are true;
* one RocksDB write batch per chunk of points (the ``seqs`` container) plus one small batch of
  sequence metadata (the ``meta`` container): far faster than ``Run.track``;
* idempotently: a point lives at a key derived from ``(context, name, step)``, so writing the
  same step again overwrites it; nothing reads the series history to append to it;
* under a caller-chosen run hash, re-openable on every later sync without touching the creation
  time that was set.

Where each concern lives (each module's docstring says what Aim does there):

* ``compat``     the guard: supported versions, the internals in use; :class:`AimInternalsChanged`
* ``encoding``   pure: step keys, column and value encoding, ``MAX_ABS_STEP``
* ``writer``     :class:`AimRunWriter`: one run, open to close (its params, end time, labels)
* ``chunks``     the run's two RocksDB chunks (meta tree, series) open for writing; durability
* ``tracker``    the run's sequences: metric points in batches, objects through Aim's tracker
* ``structured`` the structured DB (sqlite): run rows, experiments, tags, creation time
* ``index``      the run index, what makes a run visible; the index entry's freshness
* ``locks``      the run lock; :class:`AimRunLocked`
* ``batch``      :class:`WriterBatch`: many runs opened ahead, closed side by side, committed at once
* ``repo``       opening / creating a repo, reading it back in-process

Interface (all that the rest of the syncer uses)::

    repo, created = open_repo(path)                                    # RepoError when unusable
    w = AimRunWriter.open(repo_or_path, run_hash, experiment="exp")   # create or reopen
    w.set_info(name=..., description=..., params={...}, labels=["k=v"], archived=False)
    w.set_times(created_at=1.7e9, ended_at=None, active=True)         # seconds since epoch
    w.write_points("loss", {"subset": "train"}, steps, values, timestamps, epochs=None)
    w.write_objects("samples", {}, step, timestamp, aim.Text("..."))  # aim.Image / Text / Audio
    w.flush()    # durable: structured DB committed, RocksDB WAL fsync'ed; new points of
                 # sequences the index lists are readable by other processes from here on
    w.close()    # flush + index: listed by Repo.iter_runs / query_metrics / ``aim up``
    # many runs in a row: w.close(index=False) each, then one index_runs(repo, hashes); or a batch:
    b = WriterBatch(repo); b.prepare([(hash, True), ...])   # opened ahead, side by side
    w = b.open(hash, "exp"); ...; b.add(w, then=callback)   # closed in the background
    b.commit(lambda callbacks: ...)  # durable (rows in one transaction), callbacks, one index pass
    # a writer kept open across syncs (a running run, the sync daemon):
    w.index_due(max_age=5.0) -> bool          # new run / metadata / sequence: now; else <= 5 s
    index_writers([w, ...])                   # flush + index while open (one index pass)
    close_writers([w, ...])                   # close all, one index pass for those that need it
    index_missing(repo) -> [hashes indexed]   # self-healing; once when a backfill / daemon starts
    fresh_repo(path) -> aim.Repo              # in-process reads of what was just written
    run_hashes(repo) -> {hash, ...}           # every run the repo holds (one folder listing)
    repo_id(repo) -> str                      # made on first use: tells a re-created repo apart
    set_experiment_description(repo, "exp", "text")
    check_aim_compatibility()                 # raises AimInternalsChanged

Aim's Run page puts every metric whose name starts with ``__system__`` in its *System* tab; the
names MLflow system metrics get are chosen in ``syncer.mapping``.
"""

import importlib
from typing import TYPE_CHECKING, Any

# each name is imported from its module when first asked for: Aim itself is imported only by the
# modules that write or read runs, so a round with nothing to write never loads it
_WHERE = {
    "MAX_ABS_STEP": "encoding",
    "AimInternalsChanged": "compat",
    "AimRunLocked": "locks",
    "AimRunWriter": "writer",
    "WriterBatch": "batch",
    "check_aim_compatibility": "compat",
    "close_writers": "writer",
    "fresh_repo": "repo",
    "index_missing": "index",
    "index_runs": "index",
    "index_writers": "writer",
    "open_repo": "repo",
    "repo_id": "repo",
    "run_hashes": "repo",
    "set_experiment_description": "structured",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from .batch import WriterBatch
    from .compat import AimInternalsChanged, check_aim_compatibility
    from .encoding import MAX_ABS_STEP
    from .index import index_missing, index_runs
    from .locks import AimRunLocked
    from .repo import fresh_repo, open_repo, repo_id, run_hashes
    from .structured import set_experiment_description
    from .writer import AimRunWriter, close_writers, index_writers

__all__ = [
    "MAX_ABS_STEP",
    "AimInternalsChanged",
    "AimRunLocked",
    "AimRunWriter",
    "WriterBatch",
    "check_aim_compatibility",
    "close_writers",
    "fresh_repo",
    "index_missing",
    "index_runs",
    "index_writers",
    "open_repo",
    "repo_id",
    "run_hashes",
    "set_experiment_description",
]
