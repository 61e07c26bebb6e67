"""A backfill SIGKILLed at any moment and run again ends with exactly MLflow's points."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import time

import pytest

from conftest import ROOT, T0, client_for, log_points, read_aim, run_syncer, syncer_cmd

RUNS, KEYS, POINTS = 8, 3, 4000  # 96,000 points: a backfill of several seconds


def make_store(uri: str) -> dict[str, dict[str, list]]:
    client = client_for(uri)
    exp = client.create_experiment("crash")
    logged = {}
    for r in range(RUNS):
        run = client.create_run(exp, run_name=f"run-{r}", start_time=T0 + r)
        logged[run.info.run_id] = {}
        for k in range(KEYS):
            pts = [(s, r + k + s / POINTS, T0 + 10 * s + k) for s in range(POINTS)]
            log_points(client, run.info.run_id, f"eval_m{k}", pts)
            logged[run.info.run_id][f"m{k}"] = pts
        client.set_terminated(run.info.run_id, "FINISHED", end_time=T0 + 10 * POINTS)
    return logged


def committed_cursors(state_db) -> int:
    try:
        with sqlite3.connect(state_db, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
    except sqlite3.Error:
        return 0


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def start_backfill(store, repo) -> subprocess.Popen:
    return subprocess.Popen(
        syncer_cmd("backfill", "--mlflow-tracking-uri", str(store), "--aim-repo", str(repo)),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_sigkill_at_any_moment_then_resume(tmp_path):
    store, repo = tmp_path / "mlruns", tmp_path / "aim"
    logged = make_store(str(store))
    state_db = repo / ".aim" / "mlflow-syncer" / "state.sqlite"

    kills = 0
    # kill: as soon as the repo exists (mid first run), after some runs committed, and later
    for wait_for in (0, 2 * KEYS, 5 * KEYS):
        p = start_backfill(store, repo)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None:
            if (wait_for == 0 and (repo / ".aim").exists()) or (wait_for and committed_cursors(state_db) >= wait_for):
                time.sleep(0.05 * kills)  # vary the moment a little
                break
            time.sleep(0.01)
        if p.poll() is None:
            workers = children(p.pid)
            os.kill(p.pid, signal.SIGKILL)
            kills += 1
            # worker processes die with their parent: none left holding Aim run locks
            deadline = time.monotonic() + 10
            while any(alive(w) for w in workers) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not any(alive(w) for w in workers), f"orphaned workers {workers}"
        _out, err = p.communicate()
        assert p.returncode in (0, -signal.SIGKILL), err  # a resumed backfill must not fail
    assert kills >= 2, "the backfill finished before it could be killed: make the store bigger"
    assert committed_cursors(state_db) < RUNS * KEYS  # it really was cut short

    p = start_backfill(store, repo)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err

    aim = read_aim(repo)
    assert set(aim) == set(logged)
    total = 0
    for run_id, keys in logged.items():
        run = aim[run_id]
        assert len(run["metrics"]) == KEYS
        for k, pts in keys.items():
            m = run["metrics"][(k, (("subset", "eval"),))]
            assert m["steps"] == [s for s, _, _ in pts]  # none lost, none doubled
            assert m["values"] == [v for _, v, _ in pts]
            assert m["timestamps"] == [ts / 1000 for _, _, ts in pts]
            total += len(m["steps"])
    assert total == RUNS * KEYS * POINTS


@pytest.mark.slow
def test_ctrl_c_in_the_middle_of_keys_stops_at_a_safe_point_and_the_next_backfill_finishes(tmp_path):
    """Ctrl-C reaches the backfill and its worker processes (the terminal signals the whole
    process group) while runs are half read: exit 130, and the next backfill sends exactly the
    rest (cursors committed in the middle of a key do not claim the key was read to its end)."""
    store, repo = tmp_path / "mlruns", tmp_path / "aim"
    client = client_for(str(store))
    exp = client.create_experiment("ctrl-c")
    n = 30_000  # a key of three source chunks: a stop lands in the middle of one
    runs = []
    for r in range(8):  # enough runs for worker processes
        run = client.create_run(exp, run_name=f"run-{r}", start_time=T0).info.run_id
        log_points(client, run, "loss", [(s, r + s / n, T0 + s) for s in range(n)])
        client.set_terminated(run, "FINISHED", end_time=T0 + n)
        runs.append(run)
    state_db = repo / ".aim" / "mlflow-syncer" / "state.sqlite"
    args = ("backfill", "--mlflow-tracking-uri", str(store), "--aim-repo", str(repo), "--workers", "2")
    p = subprocess.Popen(
        syncer_cmd(*args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while p.poll() is None and committed_cursors(state_db) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(p.pid, signal.SIGINT)
    _out, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGINT, err
    assert "Traceback" not in err and "stopped at a safe point" in err, err

    done = run_syncer(*args)
    assert done.returncode == 0, done.stderr
    aim = read_aim(repo)
    for r, run in enumerate(runs):
        m = aim[run]["metrics"][("loss", ())]
        assert m["steps"] == list(range(n)) and m["values"] == [r + s / n for s in range(n)], run
    status = run_syncer("status", "--aim-repo", str(repo))
    assert re.search(rf"ctrl-c\s+8\s+{8 * n}\s", status.stdout), status.stdout  # each point counted once
