"""`syncer sync` as a real subprocess following a store that a real writer process logs into."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, MlflowServer, free_port, read_aim, run_syncer, store_uri, syncer_cmd

pytestmark = pytest.mark.slow
WRITER = Path(__file__).parent / "live_writer.py"


class Daemon:
    def __init__(self, uri: str, repo: Path, *extra: str, interval: float = 2.0, env: dict | None = None):
        self.args = ["sync", "--mlflow-tracking-uri", uri, "--aim-repo", str(repo), "--interval", str(interval), *extra]
        self.env = {**os.environ, **(env or {})}
        self.log = repo.parent / f"syncer-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, ready: bool = True) -> Daemon:
        self._f = open(self.log, "w")
        self.proc = subprocess.Popen(
            syncer_cmd(*self.args), cwd=ROOT, env=self.env, stdout=self._f, stderr=subprocess.STDOUT
        )
        if ready:  # start-up (imports, a new repo's schema) takes seconds on a busy 2-core machine
            deadline = time.monotonic() + 90
            while "syncing " not in self.text():
                assert self.proc.poll() is None and time.monotonic() < deadline, self.text()
                time.sleep(0.1)
        return self

    def stop(self, sig=signal.SIGTERM, timeout: float = 10.0) -> tuple[int, float]:
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=timeout)
        return rc, time.monotonic() - t0

    def text(self) -> str:
        return self.log.read_text()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_writer(
    uri: str, experiment: str, seconds: float, out: Path, every: float = 0.2, stop: Path | None = None
) -> subprocess.Popen:
    """The writer logs for `seconds`, or (`stop`) until that file exists."""
    until = [str(stop)] if stop else []
    return subprocess.Popen(
        [sys.executable, str(WRITER), uri, experiment, str(seconds), str(out), str(every), *until],
        cwd=out.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish_writer(p: subprocess.Popen, out: Path) -> dict:
    stdout, _ = p.communicate(timeout=120)
    assert p.returncode == 0, stdout
    return json.loads(out.read_text())


def wait_until_synced(repo: Path, logged: dict, timeout: float = 60.0) -> dict:
    """Poll Aim (through its SDK) until every logged run has all its points and is finished."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            aim = read_aim(repo)
        except Exception as e:  # the daemon may be mid-write
            last = e
            time.sleep(0.5)
            continue
        ok = set(logged) <= set(aim) and all(
            sum(len(m["steps"]) for m in aim[rid]["metrics"].values()) == len(info["points"])
            and aim[rid]["active"] is False
            for rid, info in logged.items()
        )
        if ok:
            return aim
        last = {
            rid: (
                aim.get(rid, {}).get("active"),
                sum(len(m["steps"]) for m in aim.get(rid, {}).get("metrics", {}).values()),
                len(info["points"]),
            )
            for rid, info in logged.items()
            if rid not in aim
            or aim[rid]["active"] is not False
            or sum(len(m["steps"]) for m in aim[rid]["metrics"].values()) != len(info["points"])
        }
        time.sleep(0.5)
    raise AssertionError(f"Aim did not catch up within {timeout} s: {last}")


def wait_for(probe, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = probe()
        except Exception:
            got = None
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"nothing after {timeout} s")


def assert_exact(aim: dict, logged: dict) -> None:
    for rid, info in logged.items():
        run = aim[rid]
        assert run["name"] == info["name"]
        (metric,) = run["metrics"].values()
        assert metric["steps"] == [s for s, _, _ in info["points"]]  # none lost, none doubled
        assert metric["values"] == [v for _, v, _ in info["points"]]
        assert metric["timestamps"] == [ts / 1000 for _, _, ts in info["points"]]
        assert run["params"]["mlflow"]["status"] == "FINISHED" and run["end_time"] is not None


@pytest.mark.parametrize("kind", ["file", "sqlite", "server"])
def test_follows_a_live_store(kind, tmp_path, request):
    server = request.getfixturevalue("mlflow_server") if kind == "server" else None
    uri = store_uri(kind, tmp_path, server)
    exp = f"live-{kind}-{tmp_path.name}"
    repo = tmp_path / "aim"
    health = tmp_path / "health"
    if kind == "file":
        (tmp_path / "mlruns").mkdir()  # the daemon may start before the writer creates anything
    d = Daemon(uri, repo, "--experiment", exp, "--health-file", str(health)).start()
    try:
        # the writer logs until told to stop: once the syncer has shown its running run, and short
        # runs that lived between two rounds (no fixed wait: a loaded machine may take its time)
        stop = tmp_path / "stop-writing"
        w = start_writer(uri, exp, 600, tmp_path / "logged.json", stop=stop)

        def seen() -> list[dict]:
            aim = read_aim(repo).values()
            long = [r for r in aim if r["name"] == "long"]
            return long if long and len([r for r in aim if r["name"].startswith("short-")]) >= 2 else []

        long_run = wait_for(seen, timeout=300)
        assert w.poll() is None, "the writer ended before the syncer saw its running run"
        assert long_run[0]["active"] is True and long_run[0]["end_time"] is None  # RUNNING in MLflow: active in Aim
        stop.touch()
        logged = finish_writer(w, tmp_path / "logged.json")
        assert len(logged) >= 3  # the long run and short runs that lived between two rounds
        aim = wait_until_synced(repo, logged, timeout=180)
        assert_exact(aim, logged)
        assert health.exists()
        rc, took = d.stop(signal.SIGTERM)
        assert rc == 0 and took < 10, d.text()
        assert "Traceback" not in d.text()
    finally:
        d.kill()
    st = run_syncer("status", "--aim-repo", str(repo))
    assert st.returncode == 0 and exp in st.stdout, st.stdout + st.stderr


def test_sigkill_mid_stream_then_restart(tmp_path):
    uri = str(tmp_path / "mlruns")
    repo = tmp_path / "aim"
    w = start_writer(uri, "kill", 8, tmp_path / "logged.json")
    time.sleep(1.5)
    d = Daemon(uri, repo, interval=1).start()
    time.sleep(4)
    d.proc.kill()
    d.proc.wait()
    time.sleep(1.5)  # the writer goes on while the syncer is down
    d2 = Daemon(uri, repo, interval=1).start()
    try:
        logged = finish_writer(w, tmp_path / "logged.json")
        try:
            aim = wait_until_synced(repo, logged)
        except AssertionError as e:
            raise AssertionError(
                f"{e}\nfirst daemon:\n{d.text()[-3000:]}\nsecond daemon:\n{d2.text()[-5000:]}"
            ) from None
        assert_exact(aim, logged)
        rc, _ = d2.stop()
        assert rc == 0, d2.text()
    finally:
        d2.kill()


def test_survives_a_server_restart(tmp_path):
    port = free_port()
    server = MlflowServer(tmp_path / "server", port=port).start()
    repo = tmp_path / "aim"
    d = Daemon(server.uri, repo, interval=1).start()
    w = start_writer(server.uri, "restart", 10, tmp_path / "logged.json")
    try:
        time.sleep(3)
        server.stop()
        time.sleep(4)  # the writer retries; the syncer warns and backs off
        server = MlflowServer(tmp_path / "server", port=port).start()
        logged = finish_writer(w, tmp_path / "logged.json")
        aim = wait_until_synced(repo, logged, timeout=90)
        assert_exact(aim, logged)
        assert "unreachable" in d.text()
        rc, _ = d.stop()
        assert rc == 0, d.text()
    finally:
        d.kill()
        server.stop()


def test_json_logs_and_redacted_credentials(tmp_path):
    port = free_port()  # nothing listens there: the daemon warns and keeps retrying
    d = Daemon(f"http://alice:hunter2@127.0.0.1:{port}", tmp_path / "aim", "--log-format", "json", interval=0.5).start()
    try:
        time.sleep(6)
        rc, took = d.stop(signal.SIGINT)
        assert rc == 0 and took < 10
    finally:
        d.kill()
    lines = [ln for ln in d.text().splitlines() if ln.strip()]
    docs = [json.loads(ln) for ln in lines]  # one JSON object per line, nothing else
    assert any(doc["level"] == "warning" and "unreachable" in doc["message"] for doc in docs)
    assert "hunter2" not in d.text()


def test_store_folder_appears_later(tmp_path):
    """A sidecar may start before training creates the store: wait, then sync."""
    uri = str(tmp_path / "mlruns")
    repo = tmp_path / "aim"
    d = Daemon(uri, repo, interval=0.5).start()
    try:
        time.sleep(3)
        assert d.proc.poll() is None, d.text()
        w = start_writer(uri, "late", 2, tmp_path / "logged.json")
        logged = finish_writer(w, tmp_path / "logged.json")
        assert_exact(wait_until_synced(repo, logged), logged)
    finally:
        d.kill()


def test_bad_repo_is_a_one_line_error(tmp_path):
    (tmp_path / "afile").write_text("")
    (tmp_path / "mlruns").mkdir()
    p = subprocess.run(
        syncer_cmd(
            "sync", "--mlflow-tracking-uri", str(tmp_path / "mlruns"), "--aim-repo", str(tmp_path / "afile" / "repo")
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("Error: ") and "Aim repo" in p.stderr


def test_two_syncers_split_one_store_into_one_new_repo(tmp_path):
    """One syncer per experiment set, started together on a repo that does not exist yet."""
    uri = str(tmp_path / "mlruns")
    repo = tmp_path / "aim"
    wa = start_writer(uri, "set-a", 3, tmp_path / "a.json")
    wb = start_writer(uri, "set-b", 3, tmp_path / "b.json")
    logged = {**finish_writer(wa, tmp_path / "a.json"), **finish_writer(wb, tmp_path / "b.json")}
    da = Daemon(uri, repo, "--experiment", "set-a", interval=1).start(ready=False)
    db = Daemon(uri, repo, "--experiment", "set-b", interval=1).start(ready=False)
    try:
        assert_exact(wait_until_synced(repo, logged, timeout=90), logged)
        for d in (da, db):
            rc, _ = d.stop()
            assert rc == 0, d.text()
    finally:
        da.kill()
        db.kill()
    st = run_syncer("status", "--aim-repo", str(repo))
    assert "[experiments: set-a]" in st.stdout and "[experiments: set-b]" in st.stdout, st.stdout


# ---------------------------------------------------------------------------------------------
# a RUNNING run's Aim writer stays open between the daemon's rounds

READER = r"""
import json, sys
from aim import Repo
from aim.storage.context import Context
repo = Repo(sys.argv[1])  # a fresh process: nothing cached, what `aim up` or a notebook sees
run = repo.get_run(sys.argv[2])
out = {"listed": run is not None}
if run is not None:
    out["active"] = run.active
    out["end_time"] = run.end_time
    out["metrics"] = {}
    for name, ctx, _ in run.iter_metrics_info():
        steps, _vals = run.get_metric(name, ctx).data.numpy()
        out["metrics"][name] = steps.tolist()
    out["last_step"] = {t["name"]: t["values"]["last_step"] for t in run.collect_sequence_info("metric")["metric"]}
repo.close()
print(json.dumps(out))
"""


def read_in_other_process(repo: Path, run_hash: str) -> dict:
    p = subprocess.run([sys.executable, "-c", READER, str(repo), run_hash], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_running_run_writer_is_kept_open_between_rounds_and_closed_when_it_ends(tmp_path, monkeypatch):
    """In-process rounds (what the daemon runs): the writer of a RUNNING run is opened once; a
    round with one new point neither reopens it nor re-indexes, yet another process reads the
    point right after the round; a new metric is indexed in its round, points-only changes at
    most every `index_max_age`; the run ending in MLflow closes the writer (finished in Aim)."""
    from syncer import aim
    from syncer.aim import index as aim_index
    from syncer.config import Config
    from syncer.runner import open_driver
    from syncer.sink import aim_run_hash

    from conftest import T0, client_for, log_points

    uri, repo = str(tmp_path / "mlruns"), tmp_path / "aim"
    client = client_for(uri)
    run_id = client.create_run(client.create_experiment("keep"), run_name="r", start_time=T0).info.run_id
    log_points(client, run_id, "loss", [(s, float(s), T0 + s) for s in range(100)])
    h = aim_run_hash(run_id)

    opens, indexed = [], []
    real_open, real_index = aim.AimRunWriter.open.__func__, aim_index.index_runs
    monkeypatch.setattr(
        aim.AimRunWriter, "open", classmethod(lambda cls, *a, **kw: opens.append(a[1]) or real_open(cls, *a, **kw))
    )

    def spy_index(r, hs, **kw):
        indexed.append(list(hs))
        return real_index(r, hs, **kw)

    monkeypatch.setattr(aim_index, "index_runs", spy_index)  # calls inside syncer.aim
    monkeypatch.setattr(aim, "index_runs", spy_index)  # calls through the package

    syncer = open_driver(
        Config(tracking_uri=uri, aim_repo=repo), strict_experiments=False, must_exist=True, role="daemon"
    )
    syncer.pool.index_max_age = 3600.0  # points-only re-indexing off until asked for below
    try:
        assert syncer.round().points == 100
        assert opens == [h] and indexed == [[h]]  # a new run: indexed in its first round
        got = read_in_other_process(repo, h)
        assert got["metrics"] == {"loss": list(range(100))} and got["active"] is True

        for step in (100, 101, 102):
            log_points(client, run_id, "loss", [(step, float(step), T0 + step)])
            assert syncer.round().points == 1
            assert opens == [h] and indexed == [[h]]  # neither reopened nor re-indexed
            got = read_in_other_process(repo, h)
            assert got["metrics"]["loss"] == list(range(step + 1))  # readable at once, in another process
            assert got["last_step"] == {"loss": 99}  # the index's bookkeeping lags (until index_max_age)
        assert os.path.exists(repo / ".aim" / "locks" / f"{h}.softlock")  # held between rounds

        log_points(client, run_id, "acc", [(0, 0.5, T0 + 200)])  # a new metric: indexed in its round
        assert syncer.round().points == 1
        assert opens == [h] and indexed == [[h], [h]]
        assert read_in_other_process(repo, h)["metrics"] == {"loss": list(range(103)), "acc": [0]}

        syncer.pool.index_max_age = 0.0  # points only, but the index entry is due
        log_points(client, run_id, "loss", [(103, 103.0, T0 + 300)])
        assert syncer.round().points == 1
        assert opens == [h] and len(indexed) == 3
        assert read_in_other_process(repo, h)["last_step"] == {"loss": 103, "acc": 0}
        assert syncer.round().points == 0 and len(indexed) == 3  # nothing new: nothing to index

        client.set_terminated(run_id, "FINISHED", end_time=T0 + 400)  # the run ends: writer closed
        syncer.round()
        assert not syncer.pool and not os.path.exists(repo / ".aim" / "locks" / f"{h}.softlock")
        got = read_in_other_process(repo, h)
        assert got["active"] is False and got["end_time"] == (T0 + 400) / 1000
        assert got["metrics"] == {"loss": list(range(104)), "acc": [0]}
        assert aim.index_missing(repo) == []  # the index holds the run as closed
    finally:
        syncer.close()


def test_sigterm_closes_the_writers_kept_open(tmp_path):
    """A daemon holding a RUNNING run's writer open stops on SIGTERM within 10 s (exit 0), closing
    it: the lock is free, the index up to date, every point there; a later daemon sees the run
    end and Aim shows it finished."""
    from syncer.aim import AimRunWriter, index_missing
    from syncer.sink import aim_run_hash

    from conftest import T0, client_for, log_points

    uri, repo = str(tmp_path / "mlruns"), tmp_path / "aim"
    client = client_for(uri)
    run_id = client.create_run(client.create_experiment("stop"), run_name="r", start_time=T0).info.run_id
    log_points(client, run_id, "loss", [(s, float(s), T0 + s) for s in range(50)])
    h = aim_run_hash(run_id)
    lock = repo / ".aim" / "locks" / f"{h}.softlock"
    d = Daemon(uri, repo, interval=0.5).start()
    try:
        wait_for(lambda: read_in_other_process(repo, h).get("metrics") == {"loss": list(range(50))}, timeout=60)
        log_points(client, run_id, "loss", [(50, 50.0, T0 + 50)])
        wait_for(lambda: read_in_other_process(repo, h).get("metrics", {}).get("loss") == list(range(51)), timeout=30)
        assert lock.exists()  # the running run stays open between rounds
        rc, took = d.stop(signal.SIGTERM)
        assert rc == 0 and took < 10, d.text()
        assert "closed 1 Aim run(s) kept open" in d.text() and "Traceback" not in d.text()
    finally:
        d.kill()
    assert not lock.exists()
    assert index_missing(repo) == []  # nothing left for the next start to heal
    got = read_in_other_process(repo, h)
    assert got["active"] is True and got["last_step"] == {"loss": 50}  # still RUNNING in MLflow
    AimRunWriter.open(repo, h, lock_timeout=0.5).close()  # free for other writers

    client.set_terminated(run_id, "FINISHED", end_time=T0 + 100)
    d2 = Daemon(uri, repo, interval=0.5).start()
    try:
        wait_for(lambda: read_in_other_process(repo, h).get("active") is False, timeout=60)
        rc, _ = d2.stop()
        assert rc == 0, d2.text()
    finally:
        d2.kill()
    assert read_in_other_process(repo, h)["end_time"] == (T0 + 100) / 1000


def test_kept_writers_are_bounded_and_idle_ones_closed(tmp_path):
    """MLflow leaves crashed runs RUNNING for good: the daemon keeps at most `max_open`
    writers open (the least recently written are closed) and closes those idle for
    `idle_s` s; a closed one is simply reopened when its run gets new points."""
    from syncer.aim import index_missing
    from syncer.config import Config
    from syncer.runner import open_driver
    from syncer.sink import aim_run_hash

    from conftest import T0, client_for, log_points

    uri, repo = str(tmp_path / "mlruns"), tmp_path / "aim"
    client = client_for(uri)
    exp = client.create_experiment("many")
    runs = [client.create_run(exp, run_name=f"r{i}", start_time=T0 + i).info.run_id for i in range(3)]
    for i, r in enumerate(runs):
        log_points(client, r, "loss", [(0, float(i), T0)])
    hashes = [aim_run_hash(r) for r in runs]
    syncer = open_driver(
        Config(tracking_uri=uri, aim_repo=repo), strict_experiments=False, must_exist=True, role="daemon"
    )
    syncer.pool.max_open = 2
    try:
        assert syncer.round().points == 3
        assert len(syncer.pool) == 2  # the cap holds during the round, not only after it
        closed = next(h for h in hashes if h not in syncer.pool)
        assert not (repo / ".aim" / "locks" / f"{closed}.softlock").exists()
        log_points(client, runs[hashes.index(closed)], "loss", [(1, 1.0, T0 + 1)])
        assert syncer.round().points == 1 and closed in syncer.pool and len(syncer.pool) == 2
        syncer.pool.idle_s = 0.0
        time.sleep(0.01)
        assert syncer.round().points == 0 and not syncer.pool  # idle: closed, and indexed as closed
        assert not list((repo / ".aim" / "locks").glob("*.softlock"))
        assert index_missing(repo) == []
        aim = read_aim(repo)
        assert sorted(len(r["metrics"][("loss", ())]["steps"]) for r in aim.values()) == [1, 1, 2]
        assert all(r["active"] for r in aim.values())
    finally:
        syncer.close()


def test_file_events_leave_out_the_rounds_own_reads(tmp_path, monkeypatch):
    """The watch asks inotify for writes only. A round reads every meta.yaml and lists every
    folder; with read events on, a large store's rounds overflowed inotify's queue, watchdog
    re-walked the store on each overflow, and an idle daemon kept a core busy."""
    from syncer import daemon as daemon_mod
    from syncer.config import Config

    store = tmp_path / "mlruns"
    for i in range(20):
        (store / "0" / f"run{i}").mkdir(parents=True)
        (store / "0" / f"run{i}" / "meta.yaml").write_text("status: 3\n")
    seen: list[tuple[str, str]] = []
    monkeypatch.setattr(daemon_mod.Daemon, "kick", lambda self, paths=None: None)
    real = daemon_mod._Kick.on_any_event
    monkeypatch.setattr(
        daemon_mod._Kick,
        "on_any_event",
        lambda self, ev: seen.append((ev.event_type, str(ev.src_path))) or real(self, ev),
    )
    d = daemon_mod.Daemon(Config(tracking_uri=str(store), aim_repo=tmp_path / "aim"))
    d._ensure_watch()
    try:
        for f in sorted(store.rglob("meta.yaml")):  # what a listing does
            f.read_text()
        sentinel = store / "0" / "run0" / "sentinel"
        sentinel.write_text("x")  # events arrive in order: once this one is in, the reads were too
        deadline = time.monotonic() + 60
        while not any(p == str(sentinel.resolve()) for _, p in seen) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(p == str(sentinel.resolve()) for _, p in seen), seen
        assert not [e for e in seen if e[0] in ("opened", "closed_no_write")], seen
    finally:
        d.observer.stop()
        d.observer.join()
