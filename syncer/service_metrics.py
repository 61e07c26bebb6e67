"""`syncer sync --metrics-port`: Prometheus metrics and the two probes, over HTTP.

prometheus_client keeps the metrics and writes the exposition format; the pages are one small
WSGI app served by the standard library's WSGI server with prometheus_client's threading server
class (a thread per request, daemon threads). It answers:

    /metrics  Prometheus' text format (prometheus_client's own WSGI app)
    /healthz  liveness: 200 "ok", or 503 and a one-line reason
    /readyz   readiness: 200 "ok", or 503 and a one-line reason

The verdicts and the lag come from a `service_health.RoundWatch`, evaluated when asked; the
counters move when a round ends. No label carries a run id or a name; reasons pass the one
credential scrubber (`redact`), and nothing else on a page comes from the store.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from .errors import BadInput
from .redact import redact
from .round_stats import RoundStats
from .service_health import RoundObserver, RoundWatch

RESULTS = ("ok", "error", "skipped")
# rounds last from milliseconds (nothing new) to hours (a first round over a large server)
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
# what a round read (ReadStats' counters) -> the metric that adds it up
READ_COUNTERS = {
    "runs_listed": (
        "syncer_read_runs_listed_total",
        "Runs whose cheap facts (a stat, a row, a listing entry) were read",
    ),
    "runs_read": ("syncer_read_runs_read_total", "Runs whose metadata (params, tags, meta.yaml) was read"),
    "histories": ("syncer_read_histories_total", "Metric histories read from MLflow (tailed, queried, fetched)"),
    "points": ("syncer_read_points_total", "Points read from MLflow"),
    "requests": ("syncer_read_requests_total", "Queries, HTTP requests or files opened to read MLflow"),
}

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds: not logged."""


class ServiceMetrics(RoundObserver):
    """The metrics, the watch they and the probes read, and the HTTP server (started by `start`)."""

    def __init__(self, interval: float, host: str, port: int, *, loop_running: Callable[[], bool]):
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            ProcessCollector,
            disable_created_metrics,
        )

        disable_created_metrics()  # no `_created` series: one series per counter
        self.host, self.port = host, port
        self.watch = RoundWatch(interval, loop_running=loop_running)
        self.registry = reg = CollectorRegistry()
        ProcessCollector(registry=reg)  # the process's CPU, memory, open files
        self.rounds = Counter(
            "syncer_rounds_total",
            "Rounds by how they ended: ok (it ended; runs in error are counted apart), error (it failed: "
            "MLflow unreachable, a failure of the syncer's), skipped (due while one still ran, or cut by a stop)",
            ["result"],
            registry=reg,
        )
        for result in RESULTS:
            self.rounds.labels(result)
        self.duration = Histogram(
            "syncer_round_duration_seconds", "How long a round took", buckets=DURATION_BUCKETS, registry=reg
        )

        def counter(name: str, doc: str) -> Any:
            return Counter(name, doc, registry=reg)

        self.full = counter("syncer_full_listings_total", "Rounds that listed every run of the store")
        self.runs = counter("syncer_runs_written_total", "Runs written into Aim (one per run and round)")
        self.points = counter("syncer_points_written_total", "Points written into Aim")
        self.artifacts = counter("syncer_artifacts_written_total", "Artifacts written into Aim")
        self.errors = counter("syncer_run_errors_total", "Runs a round could not convert (each logged once)")
        self.locked = counter("syncer_runs_locked_total", "Runs skipped by a round: another writer held them")
        self.read = {k: counter(name, doc) for k, (name, doc) in READ_COUNTERS.items()}
        w = self.watch
        Gauge(
            "syncer_last_good_round_timestamp_seconds",
            "When the last round ended without failing (unix time; 0: none yet)",
            registry=reg,
        ).set_function(w.last_good_timestamp)
        Gauge(
            "syncer_lag_seconds",
            "For RUNNING runs: how long points MLflow listed have waited for Aim, since the first listing "
            "that found them missing (the oldest such run); 0 when caught up",
            registry=reg,
        ).set_function(w.lag)
        Gauge(
            "syncer_source_up", "1 while the MLflow store answered the last time it was asked, else 0", registry=reg
        ).set_function(lambda: 1.0 if w.source_up() else 0.0)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # -- the daemon's news ---------------------------------------------------------------------
    def round_started(self) -> None:
        self.watch.round_started()

    def beat(self) -> None:
        self.watch.beat()

    def round_ended(self, stats: RoundStats) -> None:
        self.rounds.labels("ok").inc()
        self.duration.observe(stats.seconds)
        if stats.read.full:
            self.full.inc()
        self.runs.inc(stats.runs_written)
        self.points.inc(stats.points)
        self.artifacts.inc(stats.artifacts)
        self.errors.inc(len(stats.errors))
        self.locked.inc(len(stats.locked))
        for key, c in self.read.items():
            c.inc(stats.read[key])
        self.watch.round_ended(stats)

    def round_failed(self, reason: str, *, source: bool = False) -> None:
        self.rounds.labels("error").inc()
        self.watch.round_failed(reason, source=source)

    def round_skipped(self, *, cut: bool = False) -> None:
        self.rounds.labels("skipped").inc()
        self.watch.round_skipped(cut=cut)

    def source_failed(self, reason: str) -> None:
        self.watch.source_failed(reason)

    def stopping(self, reason: str) -> None:
        self.watch.stopping(reason)

    def problem(self, name: str, reason: str | None) -> None:
        self.watch.problem(name, reason)

    # -- HTTP ----------------------------------------------------------------------------------
    def app(self) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
        from prometheus_client import make_wsgi_app

        metrics = make_wsgi_app(self.registry)
        probes = {"/healthz": self.watch.liveness, "/readyz": self.watch.readiness}

        def serve(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
            path = environ.get("PATH_INFO") or "/"
            if path == "/metrics":
                page: Iterable[bytes] = metrics(environ, start_response)
                return page
            probe = probes.get(path)
            if probe is None:
                return _text(start_response, "404 Not Found", "not found: /metrics, /healthz or /readyz")
            ok, reason = probe()
            return _text(start_response, "200 OK" if ok else "503 Service Unavailable", "ok" if ok else reason)

        return serve

    def start(self) -> None:
        """Serve on host:port from a thread; a port that cannot be bound is a one-line error."""
        from prometheus_client.exposition import ThreadingWSGIServer

        try:
            family = socket.getaddrinfo(self.host or None, self.port, type=socket.SOCK_STREAM)[0][0]
        except socket.gaierror as e:
            raise BadInput(f"--metrics-host {self.host!r} is not an address of this machine: {e.strerror}") from None

        class Server(ThreadingWSGIServer):
            address_family = family

        try:
            self._server = make_server(self.host, self.port, self.app(), Server, handler_class=_QuietHandler)
        except OSError as e:
            raise BadInput(f"cannot serve metrics on {self.host}:{self.port}: {e.strerror or e}") from None
        # no poll interval: the loop sleeps until a request comes (an idle daemon wakes for none)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(None,), name="metrics-http", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving: ask the loop to stop, then wake it with a connection of our own (it
        waits for requests without a timeout), until it has stopped."""
        server, self._server = self._server, None
        if server is None:
            return
        stopper = threading.Thread(target=server.shutdown, daemon=True)
        stopper.start()
        deadline = time.monotonic() + 5
        while stopper.is_alive() and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                socket.create_connection(server.server_address[:2], timeout=1).close()
            stopper.join(0.05)
        server.server_close()


def _text(start_response: StartResponse, status: str, text: str) -> list[bytes]:
    body = (redact(" ".join(text.split())) + "\n").encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]
