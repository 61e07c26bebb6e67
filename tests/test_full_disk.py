"""Issue 27, item 2: the Aim repo on a small filesystem that fills up (a tmpfs mounted by the
test: root only, skipped with the reason otherwise). Backfill: a one-line error naming the
filesystem and what was written, exit 2 after a bounded wait (or going on when space comes back
meanwhile), SIGTERM honoured; the daemon: keeps running, unhealthy, resumes by itself; nothing
lost (a later sync is exact)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, T0, client_for, free_port, read_aim, run_syncer, syncer_cmd
from test_sync_daemon import Daemon, wait_for

pytestmark = pytest.mark.slow

SMALL = "110m"  # the syncer keeps 64 MiB free: room for a run or two of the store below
RUNS, POINTS = 10, 30_000  # per run, two keys: about 6 MB of Aim data a run


@pytest.fixture
def small_fs(tmp_path):
    """A tmpfs of SMALL at tmp_path/fs; grow(size) remounts it larger."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the Aim repo needs root (the full-disk tests run as root)")
    mnt = tmp_path / "fs"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL}", "tmpfs", str(mnt)], capture_output=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.decode().strip()}")

    def grow(size: str = "1g") -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)

    try:
        yield mnt, grow
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _big_store(root: Path) -> dict[str, int]:
    """RUNS finished runs of a real file store, each with `loss` and `acc` of POINTS points (the
    runs made by MLflow's client, the metric files appended to as MLflow writes them)."""
    c = client_for(str(root))
    exp = c.create_experiment("big")
    runs = {}
    for i in range(RUNS):
        run = c.create_run(exp, run_name=f"r{i}", start_time=T0).info.run_id
        c.log_metric(run, "loss", 0.0, timestamp=T0, step=0)
        c.log_metric(run, "acc", 0.0, timestamp=T0, step=0)
        for key in ("loss", "acc"):
            with open(root / exp / run / "metrics" / key, "a") as f:
                f.writelines(f"{T0 + s} {s * 0.5} {s}\n" for s in range(1, POINTS))
        c.set_terminated(run, "FINISHED", end_time=T0 + POINTS)
        runs[run] = 2 * POINTS
    return runs


def _readyz(port: int) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _exact(repo: Path, runs: dict[str, int]) -> bool:
    aim = read_aim(repo)
    return set(aim) == set(runs) and all(
        sum(len(m["steps"]) for m in aim[r]["metrics"].values()) == n and not aim[r]["active"] for r, n in runs.items()
    )


def _full_disk_line(stderr: str, mnt: Path) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("Error: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    line = lines[0]
    assert "filesystem is full" in line and f"tmpfs mounted at {mnt}" in line and "MiB free" in line, line
    assert "this round wrote" in line and "nothing is lost" in line, line
    return line


def test_a_backfill_on_a_full_disk_stops_with_a_clear_error_and_a_later_one_is_exact(small_fs, tmp_path):
    mnt, grow = small_fs
    store, repo = tmp_path / "mlruns", mnt / "aim"
    runs = _big_store(store)
    args = ("backfill", "--mlflow-tracking-uri", str(store), "--aim-repo", str(repo), "--workers", "1")
    p = run_syncer(*args, "--full-disk-wait", "0", timeout=300)
    assert p.returncode == 2, (p.returncode, p.stderr[-3000:])
    line = _full_disk_line(p.stderr, mnt)
    # it got somewhere before the disk filled (a batch's runs count as written once committed)
    assert re.search(r"wrote \d+ run\(s\), [1-9][\d,]* point\(s\)", line), line
    grow()
    p = run_syncer(*args, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert _exact(repo, runs)


def test_a_backfill_waiting_for_space_goes_on_when_it_comes_back_and_stops_on_sigterm(small_fs, tmp_path):
    mnt, grow = small_fs
    store, repo = tmp_path / "mlruns", mnt / "aim"
    runs = _big_store(store)
    args = ["backfill", "--mlflow-tracking-uri", str(store), "--aim-repo", str(repo), "--workers", "1"]
    log = tmp_path / "backfill.log"

    def start() -> subprocess.Popen:
        with open(log, "w") as f:
            return subprocess.Popen(syncer_cmd(*args, "--full-disk-wait", "600"), cwd=ROOT, stdout=f, stderr=f)

    def waiting() -> bool:
        return "waiting up to 600 s for space" in log.read_text()

    p = start()  # SIGTERM while it waits: exit 143 at once
    try:
        wait_for(waiting, 240)
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 143, log.read_text()[-3000:]
        assert time.monotonic() - t0 < 10
    finally:
        p.kill()
    p = start()  # space back while it waits: it goes on and finishes
    try:
        wait_for(waiting, 240)
        grow()
        assert p.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        p.kill()
    assert "has room again" in log.read_text() and "Traceback" not in log.read_text()
    assert _exact(repo, runs)


def test_the_daemon_on_a_full_disk_stays_up_unhealthy_and_resumes_by_itself(small_fs, tmp_path):
    mnt, grow = small_fs
    store, repo, health = tmp_path / "mlruns", mnt / "aim", tmp_path / "health"
    runs = _big_store(store)
    port = free_port()
    args = ("--health-file", str(health), "--no-watch", "--metrics-port", str(port))
    d = Daemon(str(store), repo, *args, interval=1).start(ready=False)
    try:
        wait_for(lambda: d.text().count("filesystem is full") >= 2, 240)  # a failed round, and a retry
        code, why = _readyz(port)
        assert code == 503 and "filesystem is full" in why, (code, why)
        touched = health.stat().st_mtime if health.exists() else None
        n = d.text().count("filesystem is full")
        wait_for(lambda: d.text().count("filesystem is full") >= n + 2, 120)  # failing on
        assert d.proc.poll() is None, d.text()[-3000:]
        assert (health.stat().st_mtime if health.exists() else None) == touched  # not reported healthy
        st = run_syncer("status", "--aim-repo", str(repo))
        assert "failed" in st.stdout and "filesystem is full" in st.stdout, st.stdout
        grow()
        wait_for(lambda: _exact(repo, runs), 300)
        wait_for(lambda: health.exists() and health.stat().st_mtime != touched, 60)  # healthy again
        wait_for(lambda: _readyz(port)[0] == 200, 60)
        assert "Traceback" not in d.text()
        rc, took = d.stop(signal.SIGTERM, timeout=30)
        assert rc == 0 and took < 10, d.text()[-3000:]
    finally:
        d.kill()


def test_a_repo_that_cannot_be_made_for_lack_of_space_is_waited_for(small_fs, tmp_path):
    """The disk already full when the syncer starts: backfill says so in one line (not "the state is
    damaged", not "cannot open the repo"), exit 2, nothing to clean up; the daemon waits, and
    syncs once space is freed."""
    mnt, _grow = small_fs
    store, repo = tmp_path / "mlruns", mnt / "aim"
    c = client_for(str(store))
    exp = c.create_experiment("small")
    runs = {}
    for i in range(2):
        run = c.create_run(exp, run_name=f"r{i}", start_time=T0).info.run_id
        c.log_metric(run, "loss", 1.0, timestamp=T0, step=0)
        c.set_terminated(run, "FINISHED", end_time=T0 + 1)
        runs[run] = 1
    ballast = mnt / "ballast"
    with open(ballast, "wb") as f:  # the filesystem full to the last byte
        try:
            while True:
                f.write(b"\0" * 1024 * 1024)
                f.flush()
        except OSError:
            pass
    p = run_syncer("backfill", "--mlflow-tracking-uri", str(store), "--aim-repo", str(repo), "--full-disk-wait", "0")
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("Error: ")]
    assert len(lines) == 1 and "filesystem is full" in lines[0] and f"mounted at {mnt}" in lines[0], p.stderr
    assert "Traceback" not in p.stderr and "delete it" not in p.stderr, p.stderr
    d = Daemon(str(store), repo, "--no-watch", interval=1)
    d.log = tmp_path / "daemon.log"  # not on the full filesystem
    d.start(ready=False)
    try:
        wait_for(lambda: d.text().count("filesystem is full") >= 3, 120)
        assert d.proc.poll() is None, d.text()[-3000:]
        ballast.unlink()
        try:
            wait_for(lambda: _exact(repo, runs), 180)
        except AssertionError:
            raise AssertionError(f"not synced once space was freed; the daemon said:\n{d.text()[-4000:]}") from None
        rc, took = d.stop(signal.SIGTERM, timeout=30)
        assert rc == 0 and took < 10, d.text()[-3000:]
    finally:
        d.kill()
