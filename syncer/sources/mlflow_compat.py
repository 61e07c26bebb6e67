"""The MLflow internals the sources use, in one place, behind a guard.

MLflow's public API has no way to (a) read one run folder of a file store without listing the
whole experiment, (b) get each latest metric's step and timestamp from `search_runs` (only
values in `RunData.metrics`), nor (c) say which SQL schema revisions it reads. Every use of
such an internal goes through this module; `check_mlflow_compatibility()` verifies they exist
(called when a source opens, and by tests/test_mlflow_compat.py) and fails loudly, naming what
changed, when MLflow moves them.
"""

from __future__ import annotations

import importlib
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
    ("mlflow.tracking._tracking_service.client", "TrackingServiceClient.store"),
    ("mlflow.store.tracking.rest_store", "RestStore.get_metric_history"),
    ("mlflow.utils.rest_utils", "http_request"),
    ("mlflow.store.db.utils", "_get_latest_schema_revision"),
    ("mlflow.store.db.utils", "_get_alembic_config"),
)


class MlflowInternalsChanged(InternalsChanged):
    """The installed MLflow lacks an internal the sources rely on."""


_checked = False


def check_mlflow_compatibility() -> None:
    """Raise MlflowInternalsChanged listing every internal in INTERNALS that is missing."""
    global _checked
    if _checked:
        return
    problems = []
    for modname, dotted in INTERNALS:
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
    problems.extend(_instance_internals())
    if problems:
        import mlflow

        raise MlflowInternalsChanged(
            f"the installed MLflow {mlflow.__version__} lacks internals syncer/sources relies on: "
            + "; ".join(problems)
            + " (see syncer/sources/mlflow_compat.py)"
        )
    _checked = True


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


class FileStoreInternals:
    """One run folder of a file store, read with MLflow's own (private) FileStore code."""

    def __init__(self, store: Any):
        self.store = store

    def run_info(self, run_dir: Path) -> Any:
        return self.store._get_run_info_from_dir(str(run_dir))

    def params(self, info: Any) -> dict[str, str]:
        return {p.key: p.value for p in self.store._get_all_params(info)}

    def tags(self, info: Any) -> dict[str, str]:
        return {t.key: t.value for t in self.store._get_all_tags(info)}

    def inputs(self, info: Any) -> Any:
        return self.store._get_all_inputs(info)


class EndpointMissing(Exception):
    """The server does not have a REST endpoint (an older MLflow)."""


class RestInternals:
    """The parts of MLflow's REST client (`RestStore`, `http_request`) that MlflowClient does not
    expose: one page of a metric history, and the bulk-interval endpoint with a start step."""

    BULK_INTERVAL = "/api/2.0/mlflow/metrics/get-history-bulk-interval"
    # what MLflow's UI charts read: one key's histories of up to 100 runs in one request
    BULK_RUNS = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"

    def __init__(self, client: Any):
        self.store = client._tracking_client.store

    def history_page(self, run_id: str, key: str, max_results: int, page_token: str | None) -> Any:
        """A PagedList of Metric (in MLflow's (timestamp, step, value) order) with `.token`."""
        return self.store.get_metric_history(run_id, key, max_results=max_results, page_token=page_token)

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
        """(run id, timestamp, step, value) of every point of `key` in these runs (at most 100),
        the first `max_results` of them in (run id, timestamp, step, value) order."""
        resp = self._get(self.BULK_RUNS, {"run_id": run_ids, "metric_key": key, "max_results": max_results})
        return [
            (m["run_id"], int(m["timestamp"]), int(m.get("step", 0)), float(m["value"]))
            for m in resp.json().get("metrics", [])
        ]

    def _get(self, endpoint: str, params: dict[str, Any]) -> Any:
        """A GET through MLflow's own HTTP client (its credentials, retries and TLS settings);
        EndpointMissing on a 404 (a server without it)."""
        from mlflow.utils.rest_utils import http_request

        resp = http_request(self.store.get_host_creds(), endpoint, "GET", raise_on_status=False, params=params)
        if resp.status_code == 404:
            raise EndpointMissing(endpoint)
        if resp.status_code != 200:
            from mlflow.exceptions import MlflowException

            raise MlflowException(f"{endpoint} answered {resp.status_code}: {resp.text[:200]}")
        return resp

    def bulk_interval(
        self, run_id: str, key: str, start_step: int, end_step: int, max_results: int
    ) -> list[tuple[int, int, float]]:
        """(timestamp, step, value) of the points with start_step <= step <= end_step; the
        server samples them when there are more than max_results."""
        params = {"run_ids": run_id, "metric_key": key, "start_step": start_step, "end_step": end_step}
        resp = self._get(self.BULK_INTERVAL, {**params, "max_results": max_results})
        return [(int(m["timestamp"]), int(m.get("step", 0)), float(m["value"])) for m in resp.json().get("metrics", [])]
