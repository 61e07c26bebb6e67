"""The failures an adversarial run found, one test each, on real stores: nothing lost, nothing
stuck, nothing leaked. (Artifact-folder entries and failed conversions: tests/test_artifact_safety.py.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from syncer.config import Config
from syncer.runner import open_driver

from conftest import ROOT, T0, client_for, free_port, log_points, populate, read_aim, run_syncer, syncer_cmd
from test_sync_daemon import Daemon, finish_writer, start_writer, wait_for, wait_until_synced


def _backfill(uri, repo, *extra):
    return run_syncer("backfill", "--mlflow-tracking-uri", uri, "--aim-repo", str(repo), *extra)


def _status_points(stdout: str) -> int:
    """The total of the points column of `syncer status`."""
    import re

    return sum(int(m.group(2)) for m in re.finditer(r"(\d+)\s+(\d+)\s+\d+\s*$", stdout, re.M))


def _one_line_error(p, *needles):
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in p.stderr and len(lines) == 1 and lines[0].startswith("Error: "), p.stderr
    for n in needles:
        assert n in lines[0], lines[0]


# 1 -------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_rounds_keep_running_while_a_job_logs_every_100_ms(kind, tmp_path):
    """Steady file events must not push the next round back forever: points reach Aim while the
    writer is still logging, and the health file stays fresh."""
    uri = str(tmp_path / "mlruns") if kind == "file" else f"sqlite:///{tmp_path / 'mlflow.db'}"
    if kind == "sqlite":
        client_for(uri).create_experiment("warm-up")  # the database exists before the daemon starts
    repo, health = tmp_path / "aim", tmp_path / "health"
    writer = start_writer(uri, "fast", 25, tmp_path / "logged.json", every=0.1)
    d = Daemon(uri, repo, "--health-file", str(health), interval=30).start(ready=False)
    try:
        seen_while_logging = 0
        while writer.poll() is None:
            try:
                aim = read_aim(repo)
                seen_while_logging = max(
                    [seen_while_logging]
                    + [len(m["steps"]) for r in aim.values() if r["name"] == "long" for m in r["metrics"].values()]
                )
            except Exception:  # the repo may not exist yet
                pass
            time.sleep(0.5)
        assert seen_while_logging >= 50, f"only {seen_while_logging} points reached Aim while the job logged"
        assert time.time() - health.stat().st_mtime < 30  # the interval is 30 s: events drove the rounds
        logged = finish_writer(writer, tmp_path / "logged.json")
        wait_until_synced(repo, logged, timeout=90)
    finally:
        writer.kill()
        d.kill()


# 2 -------------------------------------------------------------------------------------------
def test_keys_mapping_to_one_aim_metric_keep_all_their_points(tmp_path):
    uri = str(tmp_path / "mlruns")
    c = client_for(uri)
    run = c.create_run(c.create_experiment("collide"), run_name="r", start_time=T0).info.run_id
    log_points(c, run, "train_loss", [(s, 1.0, T0 + s) for s in range(3)])
    log_points(c, run, "train/loss", [(s, 2.0, T0 + 10 + s) for s in range(3)])
    c.set_terminated(run, "FINISHED")
    p = _backfill(uri, tmp_path / "aim")
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("both map to Aim metric 'loss'") == 1 and "'train/loss'" in p.stderr, p.stderr
    metrics = read_aim(tmp_path / "aim")[run]["metrics"]
    assert metrics[("loss", (("subset", "train"),))]["values"] == [2.0] * 3  # 'train/loss' sorts first
    assert metrics[("loss", (("mlflow_key", "train_loss"), ("subset", "train")))]["values"] == [1.0] * 3
    log_points(c, run, "train_loss", [(3, 1.0, T0 + 99)])  # later rounds keep each key where it was
    assert _backfill(uri, tmp_path / "aim").returncode == 0
    metrics = read_aim(tmp_path / "aim")[run]["metrics"]
    assert len(metrics[("loss", (("mlflow_key", "train_loss"), ("subset", "train")))]["steps"]) == 4
    assert len(metrics[("loss", (("subset", "train"),))]["steps"]) == 3


# 3 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["file", "sqlite", "server"])
def test_artifacts_added_to_a_finished_run_arrive(kind, tmp_path, request):
    from conftest import store_uri

    server = request.getfixturevalue("mlflow_server") if kind == "server" else None
    uri = store_uri(kind, tmp_path, server)
    c = client_for(uri)
    loc = None if kind == "server" else (tmp_path / "art").as_uri()
    exp = c.create_experiment(f"late-artifacts-{kind}-{tmp_path.name}", artifact_location=loc)
    run = c.create_run(exp, run_name="r", start_time=T0).info.run_id
    log_points(c, run, "loss", [(0, 1.0, T0)])
    c.set_terminated(run, "FINISHED", end_time=T0 + 10)
    s = open_driver(
        Config(tracking_uri=uri, aim_repo=tmp_path / "aim"), strict_experiments=False, must_exist=True, role="daemon"
    )
    try:
        s.round()
        note = tmp_path / "notes.txt"
        note.write_text("written after the run ended\n")
        c.log_artifact(run, str(note))
        s.listing.full_every_s = 0.0  # a finished run's artifacts are looked at by the full listing
        st = s.round()
        assert st.artifacts == 1, st.as_dict()
        arts = {a["path"] for a in read_aim(tmp_path / "aim")[run]["params"]["artifacts"]}
        assert "notes.txt" in arts
    finally:
        s.close()


# 5 -------------------------------------------------------------------------------------------
def test_deleted_aim_repo_is_refilled_with_the_state_elsewhere(tmp_path):
    uri = str(tmp_path / "mlruns")
    populate(uri, tmp_path)
    state, repo = tmp_path / "elsewhere" / "state.sqlite", tmp_path / "aim"
    assert _backfill(uri, repo, "--state", str(state)).returncode == 0
    before = read_aim(repo)
    shutil.rmtree(repo)
    p = _backfill(uri, repo, "--state", str(state))
    assert "sending everything again" in p.stderr, p.stderr
    after = read_aim(repo)
    assert set(after) == set(before)
    assert all(repr(after[r]["metrics"]) == repr(before[r]["metrics"]) for r in before)  # NaN-safe
    st = run_syncer("status", "--aim-repo", str(repo), "--state", str(state))
    assert st.returncode == 0 and _status_points(st.stdout) == 91, st.stdout  # populate() logs 91 points


def test_run_removed_with_aim_runs_rm_is_sent_again(tmp_path):
    uri = str(tmp_path / "mlruns")
    logged = populate(uri, tmp_path)
    repo = tmp_path / "aim"
    _backfill(uri, repo)
    fin = logged["runs"]["finished"]["run_id"]
    h = read_aim(repo)[fin]["hash"]
    rm = subprocess.run(
        [str(Path(sys.executable).parent / "aim"), "runs", "--repo", str(repo), "rm", "-y", h],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rm.returncode == 0, rm.stdout + rm.stderr
    assert fin not in read_aim(repo)
    p = _backfill(uri, repo)
    assert "removed from the Aim repo" in p.stderr, p.stderr
    assert len(read_aim(repo)[fin]["metrics"][("loss", ())]["steps"]) == 50


def test_the_last_run_removed_with_aim_runs_rm_comes_back_with_only_its_own_tags(tmp_path):
    """`aim runs rm` leaves the removed run's tag links in Aim's database, and SQLite gives the
    next new run row the removed last row's id: the re-sent run must neither fail on those
    links nor inherit them."""
    uri = str(tmp_path / "mlruns")
    c = client_for(uri)
    run = c.create_run(c.create_experiment("tagged"), run_name="r", start_time=T0).info.run_id
    c.set_tag(run, "team", "nlp")
    c.set_tag(run, "stage", "dev")
    log_points(c, run, "loss", [(s, 1.0, T0 + s) for s in range(5)])
    c.set_terminated(run, "FINISHED")
    repo = tmp_path / "aim"
    assert _backfill(uri, repo).returncode == 0
    assert read_aim(repo)[run]["labels"] == ["stage=dev", "team=nlp"]
    rm = subprocess.run(
        [
            str(Path(sys.executable).parent / "aim"),
            "runs",
            "--repo",
            str(repo),
            "rm",
            "-y",
            read_aim(repo)[run]["hash"],
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rm.returncode == 0, rm.stdout + rm.stderr
    c.delete_tag(run, "stage")
    p = _backfill(uri, repo)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    got = read_aim(repo)[run]
    assert got["labels"] == ["team=nlp"] and len(got["metrics"][("loss", ())]["steps"]) == 5


# 6 -------------------------------------------------------------------------------------------
def test_torn_last_line_of_a_finished_run_is_a_warning_once_not_work(tmp_path):
    uri = str(tmp_path / "mlruns")
    c = client_for(uri)
    run = c.create_run(c.create_experiment("torn"), run_name="r", start_time=T0).info.run_id
    log_points(c, run, "loss", [(s, 1.0, T0 + s) for s in range(5)])
    c.set_terminated(run, "FINISHED")
    metric = next((tmp_path / "mlruns").glob(f"*/{run}/metrics/loss"))
    with open(metric, "ab") as f:
        f.write(b"1700000000999 0.5")  # no newline: a line MLflow never finished
    s = open_driver(
        Config(tracking_uri=uri, aim_repo=tmp_path / "aim"), strict_experiments=False, must_exist=True, role="daemon"
    )
    try:
        st = s.round()
        assert st.points == 5
        s.listing.full_every_s = 0.0  # every round a full listing: the torn file looked at each time
        for _ in range(3):
            again = s.round()
            assert again.runs_written == 0 and again.read["histories"] == 0, again.as_dict()
    finally:
        s.close()


# 7 -------------------------------------------------------------------------------------------
HOLDER = r"""
import sys, time
from syncer.aim import AimRunWriter, open_repo
repo, _ = open_repo(sys.argv[1])
w = AimRunWriter.open(repo, sys.argv[2], experiment="x")
w.write_points("loss", {}, [0], [1.0], [1.7e9]); w.flush()
print("held", flush=True)
time.sleep(120)
"""


def test_a_run_another_process_writes_cannot_be_opened(tmp_path):
    """Aim's run lock alone no longer keeps a second writer out (filelock breaks Aim's lock
    file as malformed after 2 s): the syncer checks the holder itself."""
    from syncer.aim import AimRunLocked, AimRunWriter, open_repo

    repo_path = tmp_path / "aim"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(repo_path), "held-run"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        time.sleep(2.5)  # older than filelock's malformed-lock age
        repo, _ = open_repo(repo_path)
        with pytest.raises(AimRunLocked, match=f"process {holder.pid} on this machine"):
            AimRunWriter.open(repo, "held-run", experiment="x", lock_timeout=5)
        assert (repo_path / ".aim" / "locks" / "held-run.softlock").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_backfill_says_which_runs_another_writer_held_and_exits_1_until_they_are_synced(tmp_path):
    """A run held by another writer is not an error of the run (nothing wrong with it, nor with
    the syncer: a daemon stays healthy) but the backfill did not finish: it says so apart from
    errors, exits 1, and a later backfill writes it."""
    from syncer.sink import aim_run_hash

    uri, repo = str(tmp_path / "mlruns"), tmp_path / "aim"
    c = client_for(uri)
    exp = c.create_experiment("held")
    runs = [c.create_run(exp, run_name=f"r{i}", start_time=T0).info.run_id for i in range(2)]
    for r in runs:
        log_points(c, r, "loss", [(0, 1.0, T0)])
    assert _backfill(uri, repo).returncode == 0
    log_points(c, runs[0], "loss", [(1, 2.0, T0 + 1)])
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(repo), aim_run_hash(runs[0])], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        p = _backfill(uri, repo)
        assert p.returncode == 1, p.stderr
        assert "1 run(s) held by another writer" in p.stdout and "with errors" not in p.stdout, p.stdout
        assert "skipped this round" in p.stderr and "Traceback" not in p.stderr, p.stderr
    finally:
        holder.kill()
        holder.wait()
    p = _backfill(uri, repo)
    assert p.returncode == 0, p.stderr
    assert read_aim(repo)[runs[0]]["metrics"][("loss", ())]["steps"] == [0, 1]


@pytest.mark.slow
def test_second_daemon_on_the_same_repo_skips_locked_runs_with_one_warning(tmp_path):
    uri, repo = str(tmp_path / "mlruns"), tmp_path / "aim"
    c = client_for(uri)
    run = c.create_run(c.create_experiment("shared"), run_name="running", start_time=T0).info.run_id
    log_points(c, run, "loss", [(0, 1.0, T0)])
    a = Daemon(uri, repo, interval=0.5).start()
    try:
        wait_for(lambda: run in read_aim(repo), 60)
        # a second syncer with a state of its own (misconfigured): it wants to write the run a holds
        b = Daemon(uri, repo, "--state", str(tmp_path / "b.sqlite"), interval=0.5).start()
        try:
            deadline = time.monotonic() + 60
            while b.text().count("skipped this round") < 1:
                assert time.monotonic() < deadline and b.proc.poll() is None, b.text()
                time.sleep(0.3)
            time.sleep(3)  # several more rounds of b
            text = b.text()
            assert b.proc.poll() is None and "AttributeError" not in text and "round failed" not in text, text
            assert text.count("skipped this round") == 1 and "held by process" in text, text
        finally:
            b.kill()
        assert a.stop()[0] == 0
    finally:
        a.kill()


# 8 -------------------------------------------------------------------------------------------
def test_status_counts_each_point_once_after_concurrent_backfills(tmp_path):
    uri = str(tmp_path / "mlruns")
    populate(uri, tmp_path)
    repo = tmp_path / "aim"
    procs = [
        subprocess.Popen(
            syncer_cmd("backfill", "--mlflow-tracking-uri", uri, "--aim-repo", str(repo)),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    for p in procs:
        p.communicate(timeout=300)
    _backfill(uri, repo)  # whatever a lock made one of them skip
    st = run_syncer("status", "--aim-repo", str(repo))
    assert _status_points(st.stdout) == 91, st.stdout  # populate() logs 91 MLflow points


# 9 -------------------------------------------------------------------------------------------
def test_errors_are_reported_while_the_store_still_has_them(tmp_path):
    uri = str(tmp_path / "mlruns")
    logged = populate(uri, tmp_path)
    metric = next((tmp_path / "mlruns").glob(f"*/{logged['runs']['finished']['run_id']}/metrics/loss"))
    with open(metric, "ab") as f:
        f.write(b"garbage in the middle\n")
    meta = next((tmp_path / "mlruns").glob(f"*/{logged['runs']['failed']['run_id']}/meta.yaml"))
    meta.write_text("{{{ not yaml")
    repo = tmp_path / "aim"
    for _ in range(3):
        p = _backfill(uri, repo)
        assert p.returncode == 1, (p.stdout, p.stderr)
        assert "malformed line" in p.stderr and logged["runs"]["failed"]["run_id"] in p.stderr, p.stderr


# 11 ------------------------------------------------------------------------------------------
def test_bad_inputs_are_one_line_and_create_nothing(tmp_path):
    uri = str(tmp_path / "mlruns")
    populate(uri, tmp_path)
    latin1 = tmp_path / "rules.toml"
    latin1.write_bytes('[[rule]]\npattern = "^(?P<name>caf\xe9)$"\n'.encode("latin-1"))
    _one_line_error(_backfill(uri, tmp_path / "a1", "--context-map", str(latin1)), "not UTF-8")
    assert not (tmp_path / "a1").exists()

    not_db = tmp_path / "state.txt"
    not_db.write_text("this is not a database " * 100)
    _one_line_error(_backfill(uri, tmp_path / "a2", "--state", str(not_db)), "cannot be used", "delete it")
    assert not (tmp_path / "a2").exists()

    (tmp_path / "locked").mkdir()
    os.chmod(tmp_path / "locked", 0o500)
    try:
        if os.geteuid() != 0:  # root writes anywhere
            _one_line_error(
                _backfill(uri, tmp_path / "a3", "--state", str(tmp_path / "locked" / "s.sqlite")), "cannot be created"
            )
            assert not (tmp_path / "a3").exists()
    finally:
        os.chmod(tmp_path / "locked", 0o700)

    good_state = tmp_path / "good.sqlite"
    assert _backfill(uri, tmp_path / "a4", "--state", str(good_state)).returncode in (0, 1)
    data = good_state.read_bytes()
    good_state.write_bytes(data[: len(data) // 2])  # half-truncated
    for suffix in ("-wal", "-shm"):
        Path(str(good_state) + suffix).unlink(missing_ok=True)
    _one_line_error(_backfill(uri, tmp_path / "a4", "--state", str(good_state)), "delete it", "rebuild")


# 13 ------------------------------------------------------------------------------------------
def test_credentials_never_printed_even_unparseable_ones(tmp_path):
    port = free_port()  # nothing listens there: warnings, retries
    for uri, secret in (
        (f"http://user:s3cr/tPASS@127.0.0.1:{port}", "s3cr/tPASS"),
        (f"http://127.0.0.1:{port}/?token=TOKEN123", "TOKEN123"),
    ):
        d = Daemon(uri, tmp_path / "aim", interval=0.5).start(ready=False)
        try:
            deadline = time.monotonic() + 60
            while d.text().count("unreachable") < 2:
                assert time.monotonic() < deadline, d.text()
                time.sleep(0.3)
        finally:
            d.kill()
        assert secret not in d.text() and "unreachable" in d.text(), d.text()
        p = _backfill(uri, tmp_path / "aim")
        assert p.returncode == 2 and secret not in p.stderr + p.stdout, p.stderr


# 14 ------------------------------------------------------------------------------------------
def test_experiment_names_with_spaces_from_the_environment(tmp_path):
    uri = str(tmp_path / "mlruns")
    c = client_for(uri)
    for name in ("xnli fine tune", "other exp", "third"):
        run = c.create_run(c.create_experiment(name), run_name=name, start_time=T0).info.run_id
        c.set_terminated(run, "FINISHED")
    env = {"SYNCER_EXPERIMENTS": json.dumps(["xnli fine tune", "other exp"])}
    p = run_syncer("backfill", "--mlflow-tracking-uri", uri, "--aim-repo", str(tmp_path / "aim"), env=env)
    assert p.returncode == 0, p.stderr
    assert sorted(r["name"] for r in read_aim(tmp_path / "aim").values()) == ["other exp", "xnli fine tune"]
    helptext = run_syncer("backfill", "--help").stdout
    assert "JSON" in helptext
