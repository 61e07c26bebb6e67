"""The probes' verdicts and the lag (syncer.service_health), on a clock the test moves; the metrics
endpoint's pages (syncer.service_metrics), asked through its WSGI app with prometheus_client's
own parser. The daemon that feeds them: tests/test_service_metrics.py."""

from __future__ import annotations

import pytest
from syncer.round_stats import RoundStats
from syncer.service_health import IDLE_S, STALLED_S, LagTracker, RoundWatch
from syncer.sources.base import ReadStats


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def watch(interval: float = 10.0, running: list[bool] | None = None) -> tuple[RoundWatch, Clock]:
    clock = Clock()
    flag = running if running is not None else [True]
    return RoundWatch(interval, loop_running=lambda: flag[0], clock=clock, wall=clock), clock


def stats(listed_at: float, behind: dict[str, bool] | None = None, running=(), full: bool = False) -> RoundStats:
    return RoundStats(listed_at=listed_at, behind=behind or {}, running=set(running), read=ReadStats(full=full))


def test_ready_once_a_round_ended_and_while_rounds_keep_ending():
    w, clock = watch()
    ok, why = w.readiness()
    assert not ok and why == "no round has ended yet"
    w.round_started()
    assert w.readiness() == (False, "no round has ended yet; the first round is running")
    clock.t += 5
    w.round_ended(stats(clock.t - 5))
    assert w.readiness() == (True, "ok") and w.last_good_timestamp() == clock.t
    clock.t += 29  # the window: three intervals, at least 30 s
    assert w.readiness() == (True, "ok")
    clock.t += 2
    assert w.readiness() == (False, "no round has ended for 31 s")


def test_a_long_round_in_flight_keeps_it_ready_its_failure_does_not():
    w, clock = watch(interval=1.0)
    w.round_started()
    w.round_ended(stats(clock.t))
    clock.t += 1
    w.round_started()  # a full listing of a large server: minutes
    clock.t += 600
    assert w.readiness() == (True, "ok")
    w.round_failed("RuntimeError: boom")
    assert w.readiness() == (False, "no round has ended for 601 s (the last failed: RuntimeError: boom)")
    assert w.liveness() == (True, "ok")  # the loop goes on


def test_an_unreachable_source_is_not_ready_at_once_with_why():
    w, clock = watch()
    w.round_ended(stats(clock.t))
    assert w.source_up()
    w.round_failed("MLflow at http://u:***@h:5000 is unreachable (connection refused)\nmore", source=True)
    ok, why = w.readiness()
    assert not ok and not w.source_up()
    assert (
        why
        == "the MLflow store does not answer: MLflow at http://u:***@h:5000 is unreachable (connection refused) more"
    )
    w.round_ended(stats(clock.t))
    assert w.readiness() == (True, "ok") and w.source_up()
    w.source_failed("waiting for the MLflow store folder /x to appear")
    assert not w.readiness()[0]
    w.round_started()
    w.beat()  # a run of the round in flight done: MLflow answered its listing
    assert w.readiness()[0] and w.source_up()


def test_a_problem_and_a_stop_make_it_not_ready():
    w, clock = watch()
    w.round_ended(stats(clock.t))
    w.problem("disk", "the disk of /data is full")
    assert w.readiness() == (False, "the disk of /data is full")
    w.problem("disk", None)
    assert w.readiness() == (True, "ok")
    w.stopping("received SIGTERM")
    assert w.readiness() == (False, "stopping: received SIGTERM")
    assert w.liveness() == (False, "stopping: received SIGTERM")


def test_liveness_fails_when_the_loop_stops_or_stalls():
    running = [False]  # starting: the scheduler starts with the first round
    w, clock = watch(interval=10.0, running=running)
    assert w.liveness() == (True, "ok")
    running[0] = True
    clock.t += IDLE_S - 1  # back-off between failed rounds, a slow start: still alive
    assert w.liveness() == (True, "ok")
    clock.t += 2
    assert w.liveness() == (False, f"no round has started for {IDLE_S + 1:.0f} s")
    w.round_started()
    for _ in range(5):  # a first round over a large server: long, and making progress
        clock.t += STALLED_S - 1
        w.beat()
        assert w.liveness() == (True, "ok")
    clock.t += STALLED_S + 1
    assert w.liveness() == (False, f"the round in flight has made no progress for {STALLED_S + 1:.0f} s")
    w.round_ended(stats(clock.t))
    assert w.liveness() == (True, "ok")
    running[0] = False
    assert w.liveness() == (False, "the round scheduler is not running")


def test_lag_counts_from_the_first_listing_that_found_a_run_behind():
    lag = LagTracker()
    assert lag.lag(100.0) == 0.0
    lag.update(stats(100.0, {"a": True, "b": False}, running={"a", "b"}))
    assert lag.lag(103.0) == 3.0  # rises between rounds
    lag.update(stats(110.0, {"a": True, "c": True}, running={"a", "c"}))  # still held; c behind too
    assert lag.lag(120.0) == 20.0  # from the first listing, not the last one
    lag.update(stats(121.0, {"a": False}, running={"a", "c"}))  # a written; c listed with nothing to do
    assert lag.lag(130.0) == 0.0


def test_lag_forgets_runs_that_ended_or_left_the_listing():
    lag = LagTracker()
    lag.update(stats(100.0, {"a": True, "b": True}, running={"a", "b"}))
    lag.update(stats(105.0, {}, running=set()))  # a quick listing that did not list them: kept
    assert lag.lag(110.0) == 10.0
    lag.update(stats(106.0, {"a": False}, running=set()))  # a ended (listed, not RUNNING)
    assert lag.since == {"b": 100.0}
    lag.update(stats(107.0, {}, running=set(), full=True))  # b not RUNNING in a full listing
    assert lag.lag(110.0) == 0.0


def test_the_watch_takes_the_lag_at_the_time_it_is_asked():
    w, clock = watch()
    w.round_ended(stats(clock.t, {"a": True}, running={"a"}))
    clock.t += 42
    assert w.lag() == 42.0  # no round since: it still rises


# ---------------------------------------------------------------------------------------------
# the pages, through the endpoint's WSGI app


@pytest.fixture
def endpoint():
    from syncer.service_metrics import ServiceMetrics

    return ServiceMetrics(10.0, "127.0.0.1", 1, loop_running=lambda: True)


def get(app, path: str) -> tuple[str, dict[str, str], str]:
    got = {}

    def start_response(status, headers):
        got.update(status=status, headers=dict(headers))

    body = b"".join(app({"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": ""}, start_response))
    return got["status"], got["headers"], body.decode()


def samples(text: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        s.name + "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items())): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_metrics_follow_the_rounds(endpoint):
    app = endpoint.app()
    status, headers, text = get(app, "/metrics")
    assert status == "200 OK" and headers["Content-Type"].startswith("text/plain")
    m = samples(text)
    assert m["syncer_rounds_total{result=ok}"] == m["syncer_rounds_total{result=error}"] == 0
    assert m["syncer_source_up"] == 0 and m["syncer_lag_seconds"] == 0
    assert not [n for n in m if n.endswith("_created")]
    s = stats(0.0, {"h": False}, running={"h"}, full=True)
    s.runs_written, s.points, s.artifacts, s.seconds = 2, 300, 1, 0.2
    s.errors, s.locked = ["run x: bad"], ["run y: held", "run z: held"]
    s.read.count(runs_listed=5, runs_read=2, histories=3, points=310, requests=7)
    endpoint.round_ended(s)
    endpoint.round_ended(stats(0.0))
    endpoint.round_failed("boom")
    endpoint.round_skipped()
    m = samples(get(app, "/metrics")[2])
    assert m["syncer_rounds_total{result=ok}"] == 2 and m["syncer_rounds_total{result=error}"] == 1
    assert m["syncer_rounds_total{result=skipped}"] == 1 and m["syncer_round_duration_seconds_count"] == 2
    assert m["syncer_round_duration_seconds_bucket{le=0.25}"] == 2 and m["syncer_full_listings_total"] == 1
    assert (m["syncer_runs_written_total"], m["syncer_points_written_total"], m["syncer_artifacts_written_total"]) == (
        2,
        300,
        1,
    )
    assert m["syncer_run_errors_total"] == 1 and m["syncer_runs_locked_total"] == 2
    read = [m[f"syncer_read_{k}_total"] for k in ("runs_listed", "runs_read", "histories", "points", "requests")]
    assert read == [5, 2, 3, 310, 7]
    assert m["syncer_source_up"] == 1 and m["syncer_last_good_round_timestamp_seconds"] > 0
    assert m["process_cpu_seconds_total"] >= 0


def test_probes_answer_one_line_without_credentials(endpoint):
    app = endpoint.app()
    assert get(app, "/healthz")[0::2] == ("200 OK", "ok\n")
    status, _, body = get(app, "/readyz")
    assert status == "503 Service Unavailable" and body == "no round has ended yet\n"
    endpoint.round_ended(stats(0.0))
    assert get(app, "/readyz")[0::2] == ("200 OK", "ok\n")
    endpoint.round_failed("cannot reach http://alice:hunter2@mlflow:5000/api?token=abc\n  Traceback ...", source=True)
    status, _, body = get(app, "/readyz")
    assert status == "503 Service Unavailable" and body.count("\n") == 1
    assert "hunter2" not in body and "abc" not in body and "alice:***@mlflow:5000" in body, body
    assert get(app, "/nope")[0] == "404 Not Found"


def test_watchdogs_own_stop_race_is_not_logged_as_an_error(caplog):
    """watchdog's emitter may read once more after the observer's stop and log an ERROR for it
    (benign: it returns as if no event came); the daemon drops that one line, and only it."""
    import logging

    from syncer.daemon import _stop_race

    logger = logging.getLogger("watchdog.observers.inotify")
    logger.addFilter(_stop_race)
    try:
        with caplog.at_level(logging.DEBUG, logger="watchdog.observers.inotify"):
            logger.error("InotifyEmitter.queue_events() called when the thread is inactive")
            logger.error("some other error")
    finally:
        logger.removeFilter(_stop_race)
    assert [r.getMessage() for r in caplog.records] == ["some other error"]
