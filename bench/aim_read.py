"""Read an Aim repo back, the way ``aim up`` would see it.

Aim 3.29 reads run metadata through ``.aim/meta/index``, which only the
``RepoIndexManager`` (started by ``aim up`` / ``aim server``) or ``aim storage
reindex`` updates.  Runs written by the SDK in another process are therefore
invisible to ``Repo.iter_runs()`` / ``Repo.get_run()`` until indexed: a fresh
repo written by aimlflow reads back as 0 runs.  ``index_repo`` does what the UI's
index manager does on start-up (index every run whose chunk changed since it was
last indexed), so call it before reading.

Works with the project venv and the aimlflow venv (both have aim 3.29.x).
"""

from __future__ import annotations

import json
import os


def open_repo(path: str):
    from aim.sdk.repo import Repo
    from aim.sdk.utils import clean_repo_path

    return Repo.from_path(clean_repo_path(os.path.abspath(path)))


def index_repo(path: str) -> int:
    """Index every run whose meta chunk is newer than the index; return how many."""
    from aim.sdk.index_manager import RepoIndexManager

    repo = open_repo(path)
    mgr = RepoIndexManager.get_index_manager(repo)  # pooled per repo path: one watchdog observer at most
    index_db = repo.request_tree("meta", read_only=True)
    n = 0
    for run_hash in sorted(repo.list_all_runs()):
        if mgr._is_run_index_outdated(run_hash, index_db):
            mgr.index(run_hash)
            n += 1
    repo.container_pool.clear()  # drop cached read views so the new index is seen
    return n


def ctx_key(context) -> str:
    """Canonical string for an Aim context (dict-like)."""
    return json.dumps(dict(context.to_dict() if hasattr(context, "to_dict") else context), sort_keys=True)


def iter_metric_series(run):
    """Yield (name, context_dict, steps, values, timestamps_seconds) for every metric."""
    for metric in run.metrics():
        steps, (vals, _epochs, times) = metric.data.view(["val", "epoch", "time"]).numpy()
        ctx = metric.context.to_dict() if hasattr(metric.context, "to_dict") else dict(metric.context)
        yield metric.name, ctx, steps, vals, times


def count_points(path: str, index: bool = True) -> tuple[int, int]:
    """(runs, metric points) in the repo at ``path``."""
    if index:
        index_repo(path)
    repo = open_repo(path)
    runs = points = 0
    for run in repo.iter_runs():
        runs += 1
        for metric in run.metrics():
            steps, _ = metric.data.view(["val"]).numpy()
            points += len(steps)
    return runs, points
