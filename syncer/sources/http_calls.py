"""Requests to an MLflow server that a stop can leave behind, each bound to its workspace.

A request in flight cannot be interrupted: a server that accepts the connection and never
answers holds the thread that sent it for MLflow's whole timeout and retries (72 s measured),
and a daemon told to stop would wait as long. So every request of a server source is made in a
daemon thread of its own while the thread that needs the answer waits for it, watching the
source's stop event: on a stop it raises `Stopped` at once (a safe point: nothing of that
request is written yet), and the abandoned thread dies with the process.

The same thread carries the request's MLflow workspace (`mlflow_compat.workspace_bound`): MLflow
sends the header from a context variable of the thread making the request, so each request sets
its own and two workspaces can be read side by side. `DaemonExecutor` gives MLflow's artifact
repositories, which download in threads of their own, the same context and the same
daemon threads.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

from ..errors import Stopped
from . import mlflow_compat

P = ParamSpec("P")
T = TypeVar("T")

STOP_POLL_S = 0.1  # how often a waiting thread looks at the stop event
_local = threading.local()  # `inside`: this thread is making a request already


class Calls:
    """Makes a source's requests: `run(fn, *args, workspace=...)` returns what `fn` returns, or
    raises what it raised, or `Stopped` as soon as `stop` is set while it waits."""

    def __init__(self, stop: threading.Event | None):
        self.stop = stop

    def run(self, fn: Callable[..., T], *args: Any, workspace: str | None = None, **kwargs: Any) -> T:
        if getattr(_local, "inside", False) or self.stop is None:  # nested, or nothing to watch
            with mlflow_compat.workspace_bound(workspace):
                return fn(*args, **kwargs)
        if self.stop.is_set():
            raise Stopped()
        done = threading.Event()
        box: dict[str, Any] = {}

        def work() -> None:
            _local.inside = True
            try:
                with mlflow_compat.workspace_bound(workspace):
                    box["result"] = fn(*args, **kwargs)
            except BaseException as e:  # handed to the waiting thread
                box["error"] = e
            finally:
                done.set()

        threading.Thread(target=work, name="mlflow-request", daemon=True).start()
        while not done.wait(STOP_POLL_S):
            if self.stop.is_set():
                raise Stopped()
        if "error" in box:
            raise box["error"]
        result: T = box["result"]
        return result


class DaemonExecutor(Executor):
    """An executor for MLflow's artifact repositories (their `thread_pool`): each task in a
    daemon thread that carries the submitting thread's context (its workspace), at most
    `max_workers` at once. ThreadPoolExecutor's threads would be waited for at exit."""

    def __init__(self, max_workers: int):
        self._slots = threading.BoundedSemaphore(max(1, max_workers))

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        fut: Future[T] = Future()
        ctx = contextvars.copy_context()

        def work() -> None:
            with self._slots:
                if not fut.set_running_or_notify_cancel():
                    return
                try:
                    fut.set_result(ctx.run(fn, *args, **kwargs))
                except BaseException as e:
                    fut.set_exception(e)

        threading.Thread(target=work, name="mlflow-artifacts", daemon=True).start()
        return fut
