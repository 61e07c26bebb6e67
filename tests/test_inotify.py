"""inotify: the syncer never takes an inotify instance for Aim's sake, and a host out of them
(or out of inotify watches) still syncs.

Aim 3.29's ``RepoIndexManager`` makes a watchdog inotify observer the first time it is asked for
a repo and keeps it for the life of the process: one inotify instance per repo a process ever
indexed. Users get 128 by default (``fs.inotify.max_user_instances``); when they are used up,
``inotify_init`` fails with EMFILE (Errno 24).
"""

from __future__ import annotations

import errno
import logging
import os
import sys

import pytest
from click.testing import CliRunner
from syncer.cli import cli

from conftest import T0, client_for, log_points, read_aim

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts inotify fds in /proc (Linux)")


def inotify_instances(pid: int | str = "self") -> int:
    """How many inotify instances the process holds (its fds that are inotify instances)."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                n += 1
        except OSError:  # closed meanwhile
            pass
    return n


def _backfill(uri: str, repo) -> None:
    res = CliRunner().invoke(cli, ["backfill", "--mlflow-tracking-uri", uri, "--aim-repo", str(repo)])
    assert res.exit_code == 0, (res.output, res.exception)


def _add_run(client, exp_id: str, i: int, *, finished: bool = True) -> tuple[str, list]:
    run_id = client.create_run(exp_id, run_name=f"r{i}", start_time=T0 + i).info.run_id
    points = [(s, s / 10 + i, T0 + 1000 * s + i) for s in range(5)]
    log_points(client, run_id, "loss", points)
    if finished:
        client.set_terminated(run_id, "FINISHED", end_time=T0 + 10_000 + i)
    return run_id, points


def test_inotify_instances_stay_flat_over_many_repos_and_runs(tmp_path):
    """Backfills of many repos (new runs each time, a running run reopened, the repos backfilled
    again) and reading them back, all in one process: not one inotify instance more."""
    uri = str(tmp_path / "mlruns")
    client = client_for(uri)
    exp_id = client.create_experiment("inotify")
    logged = dict([_add_run(client, exp_id, 0)])
    running, _ = _add_run(client, exp_id, 100, finished=False)
    before = inotify_instances()
    counts = []
    repos = [tmp_path / f"aim{i}" for i in range(6)]
    for i, repo in enumerate(repos):
        rid, points = _add_run(client, exp_id, i + 1)
        logged[rid] = points
        _backfill(uri, repo)
        _backfill(uri, repos[0])  # reopened: the running run, index entries compared with chunks
        counts.append(inotify_instances())
    for repo in repos:
        aim = read_aim(repo)
        assert running in aim
    counts.append(inotify_instances())
    assert counts == [before] * len(counts), f"inotify instances of this process: {before} -> {counts}"
    aim = read_aim(repos[-1])
    for rid, points in logged.items():
        m = aim[rid]["metrics"][("loss", ())]
        assert m["steps"] == [s for s, _, _ in points]
        assert m["values"] == [v for _, v, _ in points]
        assert m["timestamps"] == [ts / 1000 for _, _, ts in points]


def test_writer_api_takes_no_inotify_instance(tmp_path):
    """The writer API a daemon uses (writers kept open, indexed while open, closed in a batch,
    the self-healing pass) over many repos: no inotify instance."""
    import numpy as np
    from syncer.aim import AimRunWriter, close_writers, index_missing, index_writers, open_repo

    before = inotify_instances()
    for i in range(5):
        repo, _ = open_repo(tmp_path / f"aim{i}")
        writers = [AimRunWriter.open(repo, f"{i:02d}{j:022x}", experiment="e") for j in range(3)]
        for w in writers:
            w.write_points("x", {}, np.arange(3), np.ones(3), np.full(3, 1.7e9))
        assert index_writers(writers) == []
        assert close_writers(writers) == []
        index_missing(repo)
        assert inotify_instances() == before, f"repo {i}"
    assert len(read_aim(tmp_path / "aim4")) == 3
    assert inotify_instances() == before


def test_no_aim_index_manager_is_made(tmp_path):
    """Not only no inotify instance: Aim's RepoIndexManager (whose __init__ makes the observers)
    is never made by a backfill; its pool stays as it was."""
    from aim.sdk.index_manager import RepoIndexManager

    uri = str(tmp_path / "mlruns")
    client = client_for(uri)
    _add_run(client, client.create_experiment("e"), 0)
    pool = dict(RepoIndexManager.index_manager_pool)
    _backfill(uri, tmp_path / "aim")
    assert RepoIndexManager.index_manager_pool == pool


def test_guard_catches_indexing_code_that_needs_the_observers(monkeypatch):
    """The syncer runs Aim's indexing code on a manager made without its observers; an Aim whose
    indexing code reads anything else on the manager (an observer, a lock) is refused loudly."""
    from aim.sdk.index_manager import RepoIndexManager
    from syncer.aim import AimInternalsChanged, check_aim_compatibility, compat

    monkeypatch.setattr(compat, "_compat_checked", False)
    check_aim_compatibility()  # the installed Aim passes

    def checksum_that_watches(self, run_hash):
        self.new_chunk_observer.schedule(None, self.chunks_dir)

    monkeypatch.setattr(RepoIndexManager, "_get_run_checksum", checksum_that_watches)
    monkeypatch.setattr(compat, "_compat_checked", False)
    with pytest.raises(AimInternalsChanged, match=r"_get_run_checksum uses self\.new_chunk_observer"):
        check_aim_compatibility()


# ---------------------------------------------------------------------------------------------
# the daemon's own watch of a local store, where inotify is out of instances or watches


def _failing(err: int):
    """A stand-in for one of libc's inotify calls in watchdog (its ctypes function), failing as
    the kernel does when a limit is reached: -1 and errno."""
    import ctypes

    def call(*_args):
        ctypes.set_errno(err)
        return -1

    return call


@pytest.mark.parametrize(
    ("call", "err", "knob"),
    [("inotify_init", errno.EMFILE, "max_user_instances"), ("inotify_add_watch", errno.ENOSPC, "max_user_watches")],
)
def test_daemon_goes_on_without_file_events_with_one_warning(tmp_path, monkeypatch, caplog, call, err, knob):
    """Out of inotify instances (Observer() fails) or watches (start() fails: the store's folder
    cannot be watched): no file events, one warning naming the limit, the inotify instance of a
    half-made observer given back; tried again later, silently; file events on again once the
    kernel lets us."""
    from syncer import daemon as D
    from syncer.config import Config
    from watchdog.observers import inotify_c

    store = tmp_path / "mlruns"
    for i in range(5):
        (store / str(i) / "run" / "metrics").mkdir(parents=True)
    d = D.Daemon(Config(str(store), tmp_path / "aim", interval=3))
    monkeypatch.setattr(D, "WATCH_RETRY_S", 0.0)
    real = getattr(inotify_c, call)
    before = inotify_instances()
    with caplog.at_level(logging.DEBUG, logger="syncer.daemon"):
        monkeypatch.setattr(inotify_c, call, _failing(err))
        for _ in range(3):
            d._ensure_watch()
            assert d.observer is None
            assert inotify_instances() == before
        monkeypatch.setattr(inotify_c, call, real)
        d._ensure_watch()
    try:
        assert d.observer is not None
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1, warnings
        assert "file events are off" in warnings[0] and f"fs.inotify.{knob}" in warnings[0], warnings[0]
        assert f"sysctl fs.inotify.{knob}=" in warnings[0] and "every 3 s" in warnings[0]
        assert any("file events are on again" in r.getMessage() for r in caplog.records)
    finally:
        if d.observer is not None:
            d.observer.stop()
            d.observer.join(10)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
