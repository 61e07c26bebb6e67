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

import codecs
import importlib
import os
import posixpath
import re
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass
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


# MLflow's file store layout, as its FileStore reads it (`_read_persisted_run_info_dict`,
# `_get_experiment`, `_validate_param_name`/`_validate_tag_name`); tests/test_file_store_reading.py
# compares every reader below with MLflow's own on stores of MLflow 1.x, 2.x and this version
RUN_STATUSES = {1: "RUNNING", 2: "SCHEDULED", 3: "FINISHED", 4: "FAILED", 5: "KILLED"}  # meta.yaml's ints
_NAME_CHARS = re.compile(r"^[/\w.\- :]*$")  # a param, tag or metric name (not on Windows: no colon)
_EXPERIMENT_ID = re.compile(r"^[a-zA-Z0-9][\w\-]{0,63}$")
_TRASH, _REGISTRY = ".trash", "models"  # not experiments: deleted ones' folder, the model registry's


@dataclass(frozen=True)
class RunMeta:
    """A run's `meta.yaml`: the fields of `mlflow.entities.RunInfo` the syncer reads."""

    run_id: str
    experiment_id: str
    user_id: str
    status: str
    start_time: int
    end_time: int | None
    lifecycle_stage: str
    artifact_uri: str | None
    run_name: str | None


@dataclass(frozen=True)
class ExperimentMeta:
    """An experiment's `meta.yaml` and tags: the fields of `mlflow.entities.Experiment` the syncer reads."""

    experiment_id: str
    name: str
    lifecycle_stage: str
    creation_time: int | None
    tags: dict[str, str]


class StoreGone(Exception):
    """The file store's folder is not there (moved, deleted, a mount gone)."""


class _NotPlain(Exception):
    """Something this reader does not read as MLflow would: MLflow's own reader is asked."""


def _yaml(path: str) -> Any:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # what MLflow's read_yaml uses
    with open(path, "rb") as f:
        return yaml.load(codecs.utf_8_decode(f.read(), "strict", True)[0], Loader=loader)


def _plain_name(name: str) -> bool:
    """Whether MLflow's `_validate_param_name` / `_validate_tag_name` accept the name."""
    norm = posixpath.normpath(name)
    unique = norm == name and norm != "." and not norm.startswith("..") and not norm.startswith("/")
    return os.name != "nt" and unique and _NAME_CHARS.match(name) is not None


def _is(value: Any, *types: type) -> bool:
    return type(value) in types  # exact: a YAML bool is not an int here


def _run_meta(meta: Any) -> RunMeta:
    """`_read_persisted_run_info_dict` for the meta.yaml MLflow writes; _NotPlain for anything else."""
    if not isinstance(meta, dict):
        raise _NotPlain
    meta = dict[str, Any](meta)
    status = meta.get("status", 1)
    exp_id, stage = meta.get("experiment_id"), meta.get("lifecycle_stage", "active")
    start, end = meta.get("start_time"), meta.get("end_time")
    artifact_uri, run_name = meta.get("artifact_uri"), meta.get("run_name")
    if not (
        _is(meta.get("run_id"), str)
        and _is(exp_id, str, int)
        and _is(meta.get("user_id"), str)
        and _is(status, int)
        and status in RUN_STATUSES
        and _is(start, int)
        and "end_time" in meta  # RunInfo's argument without a default, None or not
        and (end is None or _is(end, int))
        and _is(stage, str)
        and (artifact_uri is None or _is(artifact_uri, str))
        and (run_name is None or _is(run_name, str))
    ):
        raise _NotPlain
    return RunMeta(
        meta["run_id"], str(exp_id), meta["user_id"], RUN_STATUSES[status], start, end, stage, artifact_uri, run_name
    )


class FileStoreInternals:
    """A file store's experiments and run folders read as MLflow's `FileStore` reads them, without
    importing MLflow (a second of a backfill's start, in each worker process): `meta.yaml` files
    as MLflow writes them, params and tags without MLflow's per-file costs (a path made relative
    and a codecs reader per file: a quarter of a backfill of short runs with 150 params). Whatever
    is not plain (a field missing or of another type, a name MLflow refuses, an odd folder, a run
    with inputs) is read by MLflow's own FileStore, made when first needed, so its answer (or its
    error) is MLflow's."""

    def __init__(self, root: Path):
        self.root = root
        self._store: Any = None

    @property
    def store(self) -> Any:
        """MLflow's FileStore for the folder (imports MLflow; it creates `.trash` if missing)."""
        if self._store is None:
            self._check_root()  # MLflow's FileStore would make a missing folder (and a Default experiment)
            # MLflow 3 refuses file stores unless told; reading one is exactly what we are for
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
            check_mlflow_compatibility("file")
            from mlflow.store.tracking.file_store import FileStore

            self._store = FileStore(str(self.root))
        return self._store

    def _check_root(self) -> None:
        """What MLflow's `FileStore._check_root_dir` raises when the store's folder is gone."""
        if not os.path.isdir(self.root):
            raise StoreGone(
                f"'{self.root}' does not exist."
                if not os.path.exists(self.root)
                else f"'{self.root}' is not a directory."
            )

    # -- experiments -----------------------------------------------------------------------------
    def experiments(self) -> list[ExperimentMeta]:
        """`FileStore.search_experiments(ViewType.ALL)`: live and deleted experiments, newest first."""
        self._check_root()
        try:
            found = self._plain_experiments()
        except _NotPlain:
            from mlflow.entities import ViewType

            found = [
                ExperimentMeta(e.experiment_id, e.name, e.lifecycle_stage, e.creation_time, dict(e.tags))
                for e in self.store.search_experiments(view_type=ViewType.ALL, max_results=50_000)
            ]
        return found

    def _plain_experiments(self) -> list[ExperimentMeta]:
        out: list[ExperimentMeta] = []
        trash = os.path.join(self.root, _TRASH)
        in_root: set[str] = set()  # every name in the store's folder: MLflow looks there first for an id
        for parent in (str(self.root), trash):
            try:
                entries = list(os.scandir(parent))
            except FileNotFoundError:
                if parent == trash:
                    continue
                raise _NotPlain from None
            except OSError:
                raise _NotPlain from None
            if parent != trash:
                in_root = {e.name for e in entries}
            for entry in (e for e in entries if e.is_dir()):
                if parent != trash and (entry.name.endswith(_TRASH) or entry.name == _REGISTRY):
                    continue
                # a deleted id with anything of that name in the root (MLflow reads that instead), or
                # an id MLflow refuses: MLflow's reader says what it makes of it
                if (parent == trash and entry.name in in_root) or not _EXPERIMENT_ID.match(entry.name):
                    raise _NotPlain
                out.append(self._experiment(entry.path, entry.name))
        # MLflow's order: creation time, newest first (none: last), then id
        out.sort(key=lambda e: (e.creation_time is None, -(e.creation_time or 0), e.experiment_id))
        return out

    def _experiment(self, exp_dir: str, exp_id: str) -> ExperimentMeta:
        try:
            meta = _yaml(os.path.join(exp_dir, "meta.yaml"))
        except Exception:
            raise _NotPlain from None  # missing, unreadable: MLflow skips it with a warning, or fails
        if not isinstance(meta, dict):
            raise _NotPlain
        meta = dict[str, Any](meta)
        found, name, stage = meta.get("experiment_id"), meta.get("name"), meta.get("lifecycle_stage")
        created = meta.get("creation_time")
        if not (
            _is(found, str, int)
            and str(found) == exp_id
            and _is(name, str)
            and "artifact_location" in meta
            and _is(stage, str)
            and (created is None or _is(created, int))
        ):
            raise _NotPlain
        tags = self._files(os.path.join(exp_dir, "tags"))
        return ExperimentMeta(exp_id, meta["name"], meta["lifecycle_stage"], created, tags)

    # -- runs --------------------------------------------------------------------------------------
    def run_info(self, run_dir: Path) -> RunMeta:
        """The run's `meta.yaml` (`FileStore._get_run_info_from_dir`)."""
        try:
            return _run_meta(_yaml(os.path.join(run_dir, "meta.yaml")))
        except Exception:  # not plain, unreadable, not YAML: MLflow's reader answers, or raises its error
            pass
        info = self.store._get_run_info_from_dir(str(run_dir))
        return RunMeta(
            info.run_id,
            info.experiment_id,
            info.user_id,
            info.status,
            info.start_time,
            info.end_time,
            info.lifecycle_stage,
            info.artifact_uri,
            info.run_name,
        )

    def params(self, run_dir: Path) -> dict[str, str]:
        """`FileStore._get_all_params` as name -> value."""
        return self._files(os.path.join(run_dir, "params"), "param")

    def tags(self, run_dir: Path) -> dict[str, str]:
        """`FileStore._get_all_tags` as name -> value."""
        return self._files(os.path.join(run_dir, "tags"))

    def _files(self, top: str, kind: str = "tag") -> dict[str, str]:
        """name -> content of every file under `top` (nested names with "/"), in os.walk's order,
        each name checked as MLflow's validator checks it (a name it refuses: its error), each
        content decoded as `codecs.open(path, encoding="utf-8").read()` decodes it."""
        out: dict[str, str] = {}
        for root, _dirs, files in os.walk(top):
            rel = os.path.relpath(root, top)
            for name in files:
                key = name if rel == "." else os.path.join(rel, name).replace(os.sep, "/")
                if not _plain_name(key):
                    from mlflow.utils import validation

                    check: Any = validation._validate_param_name if kind == "param" else validation._validate_tag_name
                    check(key)
                with open(os.path.join(root, name), "rb") as f:
                    out[key] = codecs.utf_8_decode(f.read(), "strict", False)[0]
        return out

    def inputs(self, run_dir: Path, info: RunMeta) -> Any:
        """The run's `mlflow.entities.RunInputs` (MLflow's reader); None when it has none."""
        if not os.path.isdir(os.path.join(run_dir, "inputs")):
            return None
        return self.store._get_all_inputs(info)


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
