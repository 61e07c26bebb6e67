"""The MLflow internals the sources use, in one place, behind a guard.

MLflow's public API has no way to (a) read one run folder of a file store without listing the
whole experiment, (b) get each latest metric's step and timestamp from `search_runs` (only
values in `RunData.metrics`), (c) say which SQL schema revisions it reads, (d) send one request
to one workspace while another thread reads another (`mlflow.set_workspace` is process-wide),
nor (e) ask a server for its version or a history from a start step. Every use of
such an internal goes through this module; `check_mlflow_compatibility()` verifies they exist
(called when a source opens, and by tests/test_mlflow_compat.py) and fails loudly, naming what
changed, when MLflow moves them.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import InternalsChanged

# (module, dotted attribute) pairs this package relies on; see also _instance_internals()
INTERNALS: tuple[tuple[str, str], ...] = (
    ("mlflow.store.tracking.file_store", "FileStore._get_run_info_from_dir"),
    ("mlflow.store.tracking.file_store", "FileStore._get_all_params"),
    ("mlflow.store.tracking.file_store", "FileStore._get_all_tags"),
    ("mlflow.store.tracking.file_store", "FileStore._get_all_inputs"),
    ("mlflow.utils.file_utils", "local_file_uri_to_path"),
    ("mlflow.utils.validation", "_validate_param_name"),
    ("mlflow.utils.validation", "_validate_tag_name"),
    ("mlflow.store.tracking.file_store", "FileStore._get_run_dir"),
    ("mlflow.tracking._tracking_service.client", "TrackingServiceClient.store"),
    ("mlflow.store.tracking.rest_store", "RestStore.get_metric_history"),
    ("mlflow.utils.rest_utils", "http_request"),
    ("mlflow.store.db.utils", "_get_latest_schema_revision"),
    ("mlflow.store.db.utils", "_get_alembic_config"),
    ("mlflow.utils.rest_utils", "verify_rest_response"),
    ("mlflow.utils.workspace_context", "ServerWorkspaceContext"),
    ("mlflow.utils.workspace_context", "get_request_workspace"),
    ("mlflow.store.artifact.artifact_repo", "ArtifactRepository.download_artifacts"),
)


class MlflowInternalsChanged(InternalsChanged):
    """The installed MLflow lacks an internal the sources rely on."""


_checked = False  # every internal checked
_checked_kinds: set[str] = set()  # the kinds of store whose internals were checked

# what reading a file store uses: the rest (the REST client, the SQL schema's tools) is imported
# only by the stores that use it (half a second of a file-store backfill's start-up)
FILE_STORE_MODULES = ("mlflow.store.tracking.file_store", "mlflow.utils.file_utils", "mlflow.utils.validation")


def check_mlflow_compatibility(kind: str | None = None) -> None:
    """Raise MlflowInternalsChanged listing every internal in INTERNALS that is missing; with
    `kind="file"`, only those a file store's reading uses."""
    global _checked
    if _checked or kind in _checked_kinds:
        return
    problems = []
    for modname, dotted in INTERNALS:
        if kind == "file" and modname not in FILE_STORE_MODULES:
            continue
        try:
            obj: Any = importlib.import_module(modname)
        except Exception as e:
            problems.append(f"module {modname} cannot be imported ({e})")
            continue
        for part in dotted.split("."):
            if not hasattr(obj, part):
                problems.append(f"{modname}.{dotted} is missing")
                break
            obj = getattr(obj, part)
    if kind != "file":
        problems.extend(_instance_internals())
    if problems:
        import mlflow

        raise MlflowInternalsChanged(
            f"the installed MLflow {mlflow.__version__} lacks internals syncer/sources relies on: "
            + "; ".join(problems)
            + " (see syncer/sources/mlflow_compat.py)"
        )
    if kind is None:
        _checked = True
    else:
        _checked_kinds.add(kind)


def _instance_internals() -> list[str]:
    """Internals that are instance attributes, checked on a made-up instance."""
    try:
        from mlflow.entities import Metric, RunData

        objs = RunData(metrics=[Metric("k", 1.0, 2, 3)])._metric_objs
        if [(m.key, m.value, m.timestamp, m.step) for m in objs] != [("k", 1.0, 2, 3)]:
            return ["mlflow.entities.RunData()._metric_objs no longer holds Metric objects"]
    except Exception as e:
        return [f"mlflow.entities.RunData()._metric_objs cannot be read ({e!r})"]
    try:  # no request is made: a client for a port nothing listens on
        from mlflow.tracking import MlflowClient

        store = MlflowClient("http://127.0.0.1:9")._tracking_client.store
        if not callable(store.get_host_creds) or not callable(store.get_metric_history):
            return ["MlflowClient()._tracking_client.store is no longer a RestStore with get_host_creds"]
    except Exception as e:
        return [f"MlflowClient()._tracking_client.store cannot be read ({e!r})"]
    try:  # what workspace_bound sets is what MLflow's requests send
        from mlflow.utils.workspace_context import ServerWorkspaceContext, get_request_workspace

        with ServerWorkspaceContext("syncer-check"):
            if get_request_workspace() != "syncer-check":
                return ["mlflow.utils.workspace_context.ServerWorkspaceContext no longer sets the request's workspace"]
    except Exception as e:
        return [f"mlflow.utils.workspace_context cannot bind a workspace ({e!r})"]
    try:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        repo = get_artifact_repository("file:///nonexistent/syncer-check")
        if not isinstance(repo.thread_pool, Executor) or not isinstance(repo.max_workers, int):
            return ["an MLflow artifact repository no longer downloads through its `thread_pool`"]
    except Exception as e:
        return [f"an MLflow artifact repository's thread_pool cannot be read ({e!r})"]
    return []


def metric_objs(run_data: Any) -> list[Any]:
    """The latest `Metric` objects (key, value, timestamp, step) of an `mlflow.entities.RunData`."""
    return list(run_data._metric_objs)


def latest_schema_revision() -> str:
    """The newest SQL schema revision (alembic) the installed MLflow writes."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    return str(_get_latest_schema_revision())


def schema_revisions() -> set[str]:
    """Every SQL schema revision the installed MLflow's migrations know."""
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    return {r.revision for r in ScriptDirectory.from_config(_get_alembic_config("")).walk_revisions()}


def file_store(root: Path) -> Any:
    """MLflow's own FileStore for a store folder (imports MLflow; it creates `.trash` if missing):
    what `file_meta.FileStoreInternals` asks for whatever is not plain."""
    # MLflow 3 refuses file stores unless told; reading one is exactly what we are for
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    check_mlflow_compatibility("file")
    from mlflow.store.tracking.file_store import FileStore

    return FileStore(str(root))


def run_info_from_dir(store: Any, run_dir: Path) -> Any:
    """A run folder's `meta.yaml` as MLflow reads it (`mlflow.entities.RunInfo`)."""
    return store._get_run_info_from_dir(str(run_dir))


def run_inputs(store: Any, info: Any) -> Any:
    """A run's `mlflow.entities.RunInputs` as MLflow reads them."""
    return store._get_all_inputs(info)


def validate_name(kind: str, name: str) -> None:
    """MLflow's check of a param (`kind="param"`) or tag name: its error for a name it refuses."""
    from mlflow.utils import validation

    check: Any = validation._validate_param_name if kind == "param" else validation._validate_tag_name
    check(name)


@contextmanager
def workspace_bound(workspace: str | None) -> Iterator[None]:
    """MLflow's requests made by this thread meanwhile carry `workspace` (the X-MLFLOW-WORKSPACE
    header); None: whatever MLflow sends by itself (nothing, unless MLFLOW_WORKSPACE is set).
    Only this thread's context: not `mlflow.set_workspace`, which also sets the environment."""
    if workspace is None:
        yield
        return
    from mlflow.utils.workspace_context import ServerWorkspaceContext

    with ServerWorkspaceContext(workspace):
        yield


def artifact_repository(artifact_uri: str, tracking_uri: str | None, executor: Executor) -> Any:
    """MLflow's artifact repository for a URI, downloading through `executor` (one that carries
    the caller's workspace into its threads) instead of its own thread pool."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repo = get_artifact_repository(artifact_uri, tracking_uri=tracking_uri)
    repo.thread_pool = executor
    return repo


class EndpointMissing(Exception):
    """The server does not have a REST endpoint (an older MLflow): it answered a 404 that is not
    MLflow's JSON (Flask's own page; MLflow's client calls it ENDPOINT_NOT_FOUND). A JSON 404
    (RESOURCE_DOES_NOT_EXIST: a run, an experiment, a workspace not there) is not this."""


def endpoint_missing(e: BaseException) -> bool:
    """Whether an MLflow client call failed because the server lacks the endpoint."""
    from mlflow.exceptions import MlflowException, RestException

    return (
        isinstance(e, EndpointMissing)
        or isinstance(e, MlflowException)
        and not isinstance(e, RestException)
        and e.error_code == "ENDPOINT_NOT_FOUND"
    )


_VERSION = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?")
Requester = Any  # http_calls.Calls, or anything with its `run(fn, *args, workspace=..)`


class RestInternals:
    """The parts of MLflow's REST client (`RestStore`, `http_request`) that MlflowClient does not
    expose: one page of a metric history, the bulk-interval endpoint with a start step, a key's
    histories of many runs, the server's version and info. `calls` makes each request (see
    `http_calls.Calls`: a stop does not wait for it), bound to the workspace `workspace_of`
    gives for the run asked about."""

    BULK_INTERVAL = "/api/2.0/mlflow/metrics/get-history-bulk-interval"
    # what MLflow's UI charts read: one key's histories of up to 100 runs in one request
    BULK_RUNS = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
    VERSION = "/version"  # plain text, MLflow >= 2.1
    SERVER_INFO = "/api/3.0/mlflow/server-info"  # JSON, MLflow 3.x (workspaces_enabled from 3.10)

    def __init__(self, client: Any, calls: Requester | None = None, workspace_of: Any = None):
        self.store = client._tracking_client.store
        self.calls = calls
        self.workspace_of = workspace_of or (lambda _run_id: None)

    def _run(self, run_id: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self.calls is None:
            with workspace_bound(self.workspace_of(run_id)):
                return fn(*args, **kwargs)
        return self.calls.run(fn, *args, workspace=self.workspace_of(run_id), **kwargs)

    def history_page(self, run_id: str, key: str, max_results: int, page_token: str | None) -> Any:
        """A PagedList of Metric (in MLflow's (timestamp, step, value) order) with `.token`."""
        get = self.store.get_metric_history
        return self._run(run_id, get, run_id, key, max_results=max_results, page_token=page_token)

    @staticmethod
    def offset_token(offset: int) -> str:
        """The page token of a get-history page that starts `offset` points into the history
        (in MLflow's (timestamp, step, value) order): what the server's own tokens hold
        (`SearchUtils.create_page_token`, a format MLflow calls unstable; a server that refuses
        it answers INVALID_PARAMETER_VALUE, and the caller reads the whole history instead)."""
        from mlflow.utils.search_utils import SearchUtils

        token = SearchUtils.create_page_token(offset)
        return token.decode("ascii") if isinstance(token, bytes) else str(token)

    def history_of_runs(self, run_ids: list[str], key: str, max_results: int) -> list[tuple[str, int, int, float]]:
        """(run id, timestamp, step, value) of every point of `key` in these runs (all of one
        workspace; at most as many as the server takes), the first `max_results` of them in
        (run id, timestamp, step, value) order."""
        params = {"run_id": run_ids, "metric_key": key, "max_results": max_results}
        resp = self._run(run_ids[0], self._get, self.BULK_RUNS, params)
        return [
            (m["run_id"], int(m["timestamp"]), int(m.get("step", 0)), float(m["value"]))
            for m in resp.json().get("metrics", [])
        ]

    def _get(self, endpoint: str, params: dict[str, Any]) -> Any:
        """A GET through MLflow's own HTTP client (its credentials, retries and TLS settings) and
        its check of the answer: EndpointMissing on a 404 that is not MLflow's (a server without
        the endpoint); MLflow's RestException for an error MLflow answered."""
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        resp = http_request(self.store.get_host_creds(), endpoint, "GET", raise_on_status=False, params=params)
        try:
            return verify_rest_response(resp, endpoint)
        except Exception as e:
            if endpoint_missing(e):
                raise EndpointMissing(endpoint) from None
            raise

    def bulk_interval(
        self, run_id: str, key: str, start_step: int, end_step: int, max_results: int
    ) -> list[tuple[int, int, float]]:
        """(timestamp, step, value) of the points with start_step <= step <= end_step; the
        server samples them when there are more than max_results."""
        params = {"run_ids": run_id, "metric_key": key, "start_step": start_step, "end_step": end_step}
        resp = self._run(run_id, self._get, self.BULK_INTERVAL, {**params, "max_results": max_results})
        return [(int(m["timestamp"]), int(m.get("step", 0)), float(m["value"])) for m in resp.json().get("metrics", [])]

    def has(self, endpoint: str, params: dict[str, Any]) -> bool:
        """Whether the server has a GET endpoint: any answer but a 404 page that is not MLflow's
        (a JSON error about the parameters or the run says it is there)."""
        from mlflow.exceptions import MlflowException

        try:
            self._get(endpoint, params)
        except EndpointMissing:
            return False
        except MlflowException:
            return True
        return True

    def version(self) -> tuple[int, ...] | None:
        """The server's MLflow version (`GET /version`, MLflow >= 2.1); None when it does not say
        (MLflow 2.0, or something in front of it that does not pass /version on)."""
        from mlflow.utils.rest_utils import http_request

        # a server answering 5xx fails as every other request does (retried, then raised)
        resp = http_request(self.store.get_host_creds(), self.VERSION, "GET")
        found = _VERSION.match(resp.text.strip()) if resp.status_code == 200 else None
        return tuple(int(x) for x in found.groups() if x is not None) if found else None

    def server_info(self) -> dict[str, Any]:
        """`GET /api/3.0/mlflow/server-info` (MLflow 3: store type, workspaces_enabled); {} where
        the server lacks it."""
        try:
            info = self._get(self.SERVER_INFO, {}).json()
        except EndpointMissing:
            return {}
        return info if isinstance(info, dict) else {}
