"""`syncer sync --metrics-port`: a real daemon subprocess serving on a free loopback port, real
writers logging into real stores, the pages scraped over HTTP and read with prometheus_client's
own parser. The counters move with what was written; /readyz follows a real `mlflow server`
stopped and started again; the lag rises while a run is held by another writer (a real Aim SDK
session: the daemon cannot write it) and drops to 0 once it is written; a credential in the
tracking URI is on no page; a port that cannot be bound is a one-line error; `backfill` prints
what it printed before.

Why a held run and not SIGSTOP for the lag: a stopped process answers no scrape at all, and the
lag is what the syncer's listings saw (service_health.py), so a scrape right after SIGCONT shows
what the daemon knew before it stopped. A run the daemon lists but cannot write is the case an
operator alerts on, and its lag rises scrape after scrape."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import T0, MlflowServer, client_for, free_port, log_points, read_aim, run_syncer
from test_sync_daemon import Daemon, finish_writer, start_writer

pytestmark = pytest.mark.slow
SECRET = "S3cr3t-metrics-pass"


class Pages:
    """The daemon's metrics port: each page read is kept (`seen`) for the credential check."""

    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"
        self.seen: list[str] = []

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.base + path, timeout=10) as r:
                status, body = r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read().decode()
        self.seen.append(body)
        return status, body

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics: `name` or `name{label="value",...}` -> value."""
        from prometheus_client.parser import text_string_to_metric_families

        status, text = self.get("/metrics")
        assert status == 200, text
        out = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[s.name + (f"{{{labels}}}" if labels else "")] = s.value
        return out


def wait_for(what: str, probe, daemon: Daemon, timeout: float = 120.0, each=None):
    """Poll `probe` until it returns something true; `each` runs before every try (a writer)."""
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        assert daemon.proc.poll() is None, daemon.text()
        if each is not None:
            each()
        try:
            got = probe()
        except (OSError, AssertionError) as e:  # not serving yet
            got = None
            last = e
        else:
            last = got
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last})\n{daemon.text()[-3000:]}")


def start_daemon(uri: str, repo: Path, port: int, **kw) -> Daemon:
    return Daemon(uri, repo, "--metrics-port", str(port), interval=1, **kw).start()


def test_counters_move_with_what_was_written_and_readyz_follows_the_server(tmp_path):
    server = MlflowServer(tmp_path / "server").start()
    repo, port = tmp_path / "aim", free_port()
    pages = Pages(port)
    d = start_daemon(f"http://syncer:{SECRET}@127.0.0.1:{server.port}", repo, port)
    try:
        # 1. a writer logs a long run and short ones: every point it logged is counted once
        logged = finish_writer(
            start_writer(server.uri, "metrics", 4, tmp_path / "logged.json"), tmp_path / "logged.json"
        )
        total = sum(len(r["points"]) for r in logged.values())
        m = wait_for(
            "every logged point counted",
            lambda: (m := pages.metrics())["syncer_points_written_total"] == total and m,
            d,
        )
        assert m["syncer_runs_written_total"] >= len(logged)
        assert m["syncer_read_points_total"] >= total and m["syncer_read_histories_total"] >= len(logged)
        assert m["syncer_read_runs_listed_total"] >= len(logged) and m["syncer_read_requests_total"] > 0
        # a server's listing carries the runs' metadata: none read apart (runs_read stays 0)
        assert "syncer_read_runs_read_total" in m and m["syncer_full_listings_total"] >= 1
        assert m['syncer_rounds_total{result="ok"}'] >= 1 and m['syncer_rounds_total{result="error"}'] == 0
        assert m["syncer_round_duration_seconds_count"] >= 1 and m["syncer_round_duration_seconds_sum"] > 0
        assert m["syncer_run_errors_total"] == 0 and m["syncer_runs_locked_total"] == 0
        assert m["syncer_source_up"] == 1 and m["syncer_lag_seconds"] == 0
        assert abs(m["syncer_last_good_round_timestamp_seconds"] - time.time()) < 60
        assert pages.get("/healthz") == (200, "ok\n")
        wait_for("ready", lambda: pages.get("/readyz") == (200, "ok\n"), d)
        aim = read_aim(repo)
        assert sum(len(s["steps"]) for rid in logged for s in aim[rid]["metrics"].values()) == total

        # 2. three more points of a new run: the counters move by exactly that
        c = client_for(server.uri)
        run = c.create_run(c.get_experiment_by_name("metrics").experiment_id, run_name="more").info.run_id
        log_points(c, run, "acc", [(s, s / 10, int(time.time() * 1000)) for s in range(3)])
        before = m
        # a RUNNING run written to its listed points: caught up (the server's marks match the cursors)
        m = wait_for(
            "three more points, caught up",
            lambda: (
                (m := pages.metrics())["syncer_points_written_total"] == total + 3
                and m["syncer_lag_seconds"] == 0
                and m
            ),
            d,
        )
        assert m["syncer_runs_written_total"] > before["syncer_runs_written_total"]
        assert m["syncer_read_points_total"] >= before["syncer_read_points_total"] + 3

        # 3. MLflow stops: not ready (one line, why), still alive; rounds fail; the source is down
        server.stop()
        status, body = wait_for("not ready", lambda: (r := pages.get("/readyz"))[0] == 503 and r, d)
        assert body.endswith("\n") and "\n" not in body[:-1] and "does not answer" in body, body
        assert f"127.0.0.1:{server.port}" in body, body
        m = wait_for("a failed round", lambda: (m := pages.metrics())['syncer_rounds_total{result="error"}'] and m, d)
        assert m["syncer_source_up"] == 0
        assert pages.get("/healthz") == (200, "ok\n")
        assert pages.get("/nothing-here")[0] == 404

        # 4. back: ready again, and what was logged meanwhile arrives
        server.start()
        wait_for("ready again", lambda: pages.get("/readyz") == (200, "ok\n"), d, timeout=180)
        log_points(c, run, "acc", [(3, 0.3, int(time.time() * 1000))])
        wait_for("after the restart", lambda: pages.metrics()["syncer_points_written_total"] == total + 4, d)
        assert pages.metrics()["syncer_source_up"] == 1
        rc, _ = d.stop()
        assert rc == 0, d.text()
    finally:
        d.kill()
        server.stop()
    # the credential of the tracking URI is on no page, nor in the log
    assert len(pages.seen) > 10 and not [p for p in pages.seen if SECRET in p]
    assert SECRET not in d.text()


HOLDER = r"""
import sys
import aim
run = aim.Run(run_hash=sys.argv[2], repo=sys.argv[1], system_tracking_interval=None, capture_terminal_logs=False)
print("held", flush=True)
sys.stdin.read()  # until the test closes it
run.close()
print("released", flush=True)
"""


def test_lag_rises_while_another_writer_holds_a_run_and_falls_back_to_zero(tmp_path):
    from syncer.sink import aim_run_hash

    uri, repo, port = str(tmp_path / "mlruns"), tmp_path / "aim", free_port()
    c = client_for(uri)
    run = c.create_run(c.create_experiment("lag"), run_name="training", start_time=T0).info.run_id
    step = 0

    def log_one() -> None:  # the training goes on all along: a point each poll
        nonlocal step
        log_points(c, run, "loss", [(step, 1.0 / (step + 1), int(time.time() * 1000))])
        step += 1

    log_one()
    run_syncer("backfill", "--mlflow-tracking-uri", uri, "--aim-repo", str(repo), check=True)
    # a user resumes the Aim run in a notebook: Aim's own SDK holds its lock
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(repo), aim_run_hash(run)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    pages = Pages(port)
    d = None
    try:
        assert holder.stdout.readline().strip() == "held"
        log_one()  # a point the daemon finds and cannot write
        d = start_daemon(uri, repo, port)
        m = wait_for("the run found held", lambda: (m := pages.metrics())["syncer_runs_locked_total"] >= 1 and m, d)
        assert m["syncer_points_written_total"] == 0
        first = wait_for(
            "a lag of 3 s", lambda: (v := pages.metrics()["syncer_lag_seconds"]) >= 3 and v, d, each=log_one
        )
        later = wait_for(
            "the lag rising", lambda: (v := pages.metrics()["syncer_lag_seconds"]) >= first + 2 and v, d, each=log_one
        )
        m = pages.metrics()
        assert m["syncer_points_written_total"] == 0 and m["syncer_runs_locked_total"] >= 2, m
        assert m["syncer_run_errors_total"] == 0 and m['syncer_rounds_total{result="error"}'] == 0
        # another writer's run is not the syncer's failure: still ready
        assert pages.get("/readyz") == (200, "ok\n") and pages.get("/healthz") == (200, "ok\n")

        holder.stdin.close()  # the notebook lets go: the next round writes what was waiting
        assert holder.stdout.readline().strip() == "released"
        log_one()
        wait_for(
            "caught up",
            lambda: (m := pages.metrics())["syncer_lag_seconds"] == 0 and m["syncer_points_written_total"] == step - 1,
            d,
        )
        log_one()  # and it stays caught up while the training goes on
        wait_for("the next point", lambda: pages.metrics()["syncer_points_written_total"] == step - 1, d)
        assert pages.metrics()["syncer_lag_seconds"] == 0
        assert later > first >= 3
        steps = read_aim(repo)[run]["metrics"][("loss", ())]["steps"]
        assert steps == list(range(step))
    finally:
        holder.kill()
        holder.wait()
        if d is not None:
            d.kill()


def test_a_metrics_port_in_use_is_a_one_line_error_and_nothing_is_written(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = run_syncer(
            "sync",
            "--mlflow-tracking-uri",
            str(tmp_path / "mlruns"),
            "--aim-repo",
            str(tmp_path / "aim"),
            env={"SYNCER_METRICS_PORT": str(port)},
            timeout=120,
        )
    assert p.returncode == 2, p.stderr
    (line,) = [ln for ln in p.stderr.splitlines() if "metrics" in ln]
    assert f"cannot serve metrics on 127.0.0.1:{port}" in line and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "aim").exists()


def test_backfill_prints_only_its_summary_and_takes_no_metrics_port(tmp_path):
    uri, repo = str(tmp_path / "mlruns"), tmp_path / "aim"
    c = client_for(uri)
    log_points(c, c.create_run(c.create_experiment("b")).info.run_id, "loss", [(0, 1.0, T0)])
    # the variable a container sets for `sync` does not reach backfill
    p = run_syncer(
        "backfill", "--mlflow-tracking-uri", uri, "--aim-repo", str(repo), env={"SYNCER_METRICS_PORT": "1"}, check=True
    )
    (line,) = p.stdout.splitlines()  # its summary, as before
    assert re.fullmatch(r"backfill: 1 experiments, 1 runs \(1 updated\), 1 points, 0 artifacts in [\d.]+ s", line), line
    p = run_syncer("backfill", "--mlflow-tracking-uri", uri, "--aim-repo", str(repo), "--metrics-port", "9108")
    assert p.returncode == 2 and "No such option '--metrics-port'" in p.stderr, p.stderr
