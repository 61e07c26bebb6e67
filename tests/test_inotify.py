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
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from syncer.aim import open_repo
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
    """Backfills of several repos (new runs each time, a running run reopened, the first repo
    backfilled again) and reading them back, all in one process: not one inotify instance more
    (before: one more per repo, for the life of the process), no Aim index manager made."""
    from aim.sdk.index_manager import RepoIndexManager

    uri = str(tmp_path / "mlruns")
    client = client_for(uri)
    exp_id = client.create_experiment("inotify")
    logged = dict([_add_run(client, exp_id, 0)])
    running, _ = _add_run(client, exp_id, 100, finished=False)
    pool = dict(RepoIndexManager.index_manager_pool)  # whose __init__ makes the observer
    before = inotify_instances()
    counts = []
    repos = [tmp_path / f"aim{i}" for i in range(4)]
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
    assert RepoIndexManager.index_manager_pool == pool  # no Aim index manager made at all
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
    from syncer.aim import AimRunWriter, close_writers, index_missing, index_writers

    before = inotify_instances()
    for i in range(3):
        repo, _ = open_repo(tmp_path / f"aim{i}")
        writers = [AimRunWriter.open(repo, f"{i:02d}{j:022x}", experiment="e") for j in range(3)]
        for w in writers:
            w.write_points("x", {}, np.arange(3), np.ones(3), np.full(3, 1.7e9))
        assert index_writers(writers) == []
        assert close_writers(writers) == []
        index_missing(repo)
        assert inotify_instances() == before, f"repo {i}"
    assert len(read_aim(tmp_path / "aim2")) == 3
    assert inotify_instances() == before


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


# ---------------------------------------------------------------------------------------------
# a host out of inotify instances: `syncer backfill` and `syncer sync` as real subprocesses

# Runs `python -m syncer ...` where inotify instances are used up. "kernel" (as root): with an
# effective uid whose every instance a holder process keeps (the kernel counts instances per
# effective uid; other users, other tests, keep theirs), files still accessed as root (the
# interpreter may live under /root); every inotify_init in the process fails with EMFILE, from
# the kernel. "watchdog" (not root): watchdog's inotify_init fails as the kernel's does.
WRAPPER = """
import ctypes, os, runpy, sys
mode, uid = sys.argv[1], int(sys.argv[2])
del sys.argv[1:3]
if mode == "kernel":
    os.seteuid(uid)
    ctypes.CDLL(None, use_errno=True).setfsuid(0)
else:
    from watchdog.observers import inotify_c
    def inotify_init():
        ctypes.set_errno(24)
        return -1
    inotify_c.inotify_init = inotify_init
if sys.argv[1:] == ["--probe-inotify"]:  # what the syncer would get
    from watchdog.observers import Observer
    Observer()
sys.argv[0] = "syncer"
runpy.run_module("syncer", run_name="__main__", alter_sys=True)
"""

# as effective uid argv[1]: holds every inotify instance the kernel gives it, says how many and
# why it stopped, then waits for stdin to close
HOLDER = """
import ctypes, os, resource, sys
limit = int(open("/proc/sys/fs/inotify/max_user_instances").read())
resource.setrlimit(resource.RLIMIT_NOFILE, (limit + 64, limit + 64))  # fds are not the limit
os.seteuid(int(sys.argv[1]))
libc = ctypes.CDLL(None, use_errno=True)
held = 0
while libc.inotify_init() >= 0:
    held += 1
print(held, limit, ctypes.get_errno(), flush=True)
sys.stdin.read()
"""


def _unused_uid() -> int:
    """A uid no account and no running process has: its inotify instances are nobody else's."""
    import pwd
    import random

    taken = {p.pw_uid for p in pwd.getpwall()}
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/status") as f:
                taken |= {int(x) for ln in f if ln.startswith("Uid:") for x in ln.split()[1:]}
        except (OSError, ValueError):
            pass
    return random.choice([u for u in range(61000, 62000) if u not in taken])


@pytest.fixture
def no_inotify():
    """A command prefix running `python -m syncer` where no inotify instance can be had."""
    if os.geteuid() != 0:
        yield [sys.executable, "-c", WRAPPER, "watchdog", "0"]
        return
    if int(open("/proc/sys/fs/inotify/max_user_instances").read()) > 100_000:
        pytest.skip("fs.inotify.max_user_instances is too high here to use up one uid's instances")
    uid = _unused_uid()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(uid)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        held, limit, err = (int(x) for x in holder.stdout.readline().split())
        assert (held, err) == (limit, errno.EMFILE), f"{held} of {limit} inotify instances held (errno {err})"
        yield [sys.executable, "-c", WRAPPER, "kernel", str(uid)]
    finally:
        holder.stdin.close()
        holder.wait(30)


@pytest.mark.slow
def test_backfill_and_sync_on_a_host_out_of_inotify_instances(no_inotify, tmp_path):
    """`syncer backfill` and `syncer sync` where no inotify instance is left: exit 0, every point
    exact; the daemon says once that file events are off, and why, and syncs on."""
    probe = subprocess.run([*no_inotify, "--probe-inotify"], capture_output=True, text=True, cwd=tmp_path)
    assert "inotify instance limit reached" in probe.stderr, probe.stderr  # the host this test means
    uri = str(tmp_path / "mlruns")
    client = client_for(uri)
    exp_id = client.create_experiment("limits")
    logged = dict(_add_run(client, exp_id, i) for i in range(3))
    repo = tmp_path / "aim"
    # made here: creating a repo, Aim runs its schema migration in a subprocess of its own, which
    # the "kernel" mode would run as the bare uid (no access to this test's folders)
    open_repo(repo)
    bf = subprocess.run(
        [*no_inotify, "backfill", "--mlflow-tracking-uri", uri, "--aim-repo", str(repo)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert bf.returncode == 0 and "Traceback" not in bf.stderr, bf.stdout + bf.stderr
    _assert_points(read_aim(repo), logged)

    log_path = tmp_path / "sync.log"
    with open(log_path, "w") as log_file:
        daemon = subprocess.Popen(
            [*no_inotify, "sync", "--mlflow-tracking-uri", uri, "--aim-repo", str(repo), "--interval", "1"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        deadline = time.monotonic() + 90
        while "file events are off" not in log_path.read_text():
            assert daemon.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        for i in range(3, 5):  # logged while the daemon runs, one after the other
            rid, points = _add_run(client, exp_id, i)
            logged[rid] = points
            _wait_for(lambda: _points_of(read_aim(repo), logged) == _points_of(None, logged), 60, log_path)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, log_path.read_text()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    text = log_path.read_text()
    _assert_points(read_aim(repo), logged)
    assert text.count("file events are off") == 1, text
    warning = next(ln for ln in text.splitlines() if "file events are off" in ln)
    assert "inotify instance limit" in warning and "sysctl fs.inotify.max_user_instances=" in warning, warning
    assert "Traceback" not in text, text


def _points_of(aim: dict | None, logged: dict) -> dict:
    if aim is None:  # what was logged
        return {rid: [list(x) for x in zip(*points)] for rid, points in logged.items()}
    out = {}
    for rid in logged:
        m = aim.get(rid, {}).get("metrics", {}).get(("loss", ()))
        if m:
            out[rid] = [m["steps"], m["values"], [round(t * 1000) for t in m["timestamps"]]]
    return out


def _assert_points(aim: dict, logged: dict) -> None:
    assert _points_of(aim, logged) == _points_of(None, logged)


def _wait_for(probe, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if probe():
                return
        except Exception:  # the daemon mid-write
            pass
        assert time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.3)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
