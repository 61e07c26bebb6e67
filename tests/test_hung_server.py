"""A hung MLflow server (it accepts connections and reads requests, never answers): `syncer sync`
exits 0 within the 10 s deploy/README.md promises after SIGTERM, whatever request is in flight
(it took 72 s: MLflow's timeout and retries), and nothing is lost: restarted against the server,
it ends with exactly what was logged."""

from __future__ import annotations

import signal
import socket
import threading

import pytest

from conftest import T0, client_for, log_points, read_aim
from test_sync_daemon import Daemon, wait_for

pytestmark = pytest.mark.slow


class HangingProxy:
    """A TCP proxy to a real server on 127.0.0.1 that can be told to hang: from then on it still
    accepts connections and reads what is sent, and answers nothing."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.hang = threading.Event()
        self.held = 0  # reads swallowed since the hang: a request is waiting for its answer
        self._socks: list[socket.socket] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.uri = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._socks.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        up: socket.socket | None = None
        try:
            while data := conn.recv(65536):
                if self.hang.is_set():
                    self.held += 1
                    continue
                if up is None:
                    up = socket.create_connection(("127.0.0.1", self.upstream_port))
                    self._socks.append(up)
                    threading.Thread(target=self._answer, args=(up, conn), daemon=True).start()
                up.sendall(data)
        except OSError:
            pass

    def _answer(self, up: socket.socket, conn: socket.socket) -> None:
        try:
            while data := up.recv(65536):
                if not self.hang.is_set():
                    conn.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        for s in [self.sock, *self._socks]:
            try:
                s.close()
            except OSError:
                pass


def _points(aim: dict, run_id: str) -> list[tuple[int, float, float]] | None:
    run = aim.get(run_id)
    if run is None or not run["metrics"]:
        return None
    (m,) = run["metrics"].values()
    return list(zip(m["steps"], m["values"], m["timestamps"]))


def test_sigterm_during_a_request_a_server_never_answers(mlflow_server, tmp_path):
    client = client_for(mlflow_server.uri)
    name = f"hung-{tmp_path.name}"
    exp = client.create_experiment(name)
    run = client.create_run(exp, run_name="live", start_time=T0).info.run_id
    logged = [(s, float(s), T0 + s) for s in range(20)]
    log_points(client, run, "loss", logged)
    want = lambda: [(s, v, ts / 1000) for s, v, ts in logged]  # noqa: E731

    proxy = HangingProxy(int(mlflow_server.uri.rsplit(":", 1)[1]))
    repo = tmp_path / "aim"
    d = Daemon(proxy.uri, repo, "--experiment", name, interval=1).start()
    try:
        wait_for(lambda: _points(read_aim(repo), run) == want(), 120)
        more = [(s, float(s), T0 + s) for s in range(20, 30)]
        log_points(client, run, "loss", more)
        logged += more
        proxy.hang.set()
        wait_for(lambda: proxy.held > 0, 60)  # the next round's request, never to be answered
        rc, took = d.stop(signal.SIGTERM, timeout=120)
        assert rc == 0 and took < 10, (rc, took, d.text())
    finally:
        d.kill()
        proxy.close()

    d = Daemon(mlflow_server.uri, repo, "--experiment", name, interval=1).start()
    try:
        wait_for(lambda: _points(read_aim(repo), run) == want(), 120)
        rc, _ = d.stop(signal.SIGTERM)
        assert rc == 0, d.text()
    finally:
        d.kill()
