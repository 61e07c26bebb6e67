"""Any tracking URI through `MlflowClient`: sqlite and other SQLAlchemy databases, http(s)
servers (MLflow's usual auth variables apply). Changed metric keys are found from the
latest-metric values `search_runs` returns; only those keys' histories are fetched."""

from __future__ import annotations

import os
from typing import Any, Iterator

from . import mlflow_compat
from .base import CHUNK_POINTS, ArtifactFile, BrokenRun, Experiment, MetricChunk, RunRecord, Source, fingerprint
from .entities import client_fetch_artifact, client_list_artifacts, datasets_from_inputs, experiment_from, json_number
from .mlflow_errors import mlflow_error


class ClientSource(Source):
    """Any tracking URI, through MlflowClient."""

    PAGE = 1000

    def __init__(self, uri: str):
        from mlflow.tracking import MlflowClient

        self.uri = uri
        mlflow_compat.check_mlflow_compatibility()
        # keep MLflow's HTTP retries short: the daemon has its own back-off
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        try:
            self.client = MlflowClient(tracking_uri=uri)
        except Exception as e:  # bad URI, out-of-date database schema, missing driver
            raise mlflow_error(uri, e) from None

    def experiments(self) -> list[Experiment]:
        from mlflow.entities import ViewType

        try:
            exps, token = [], None
            while True:
                page = self.client.search_experiments(view_type=ViewType.ALL, max_results=self.PAGE, page_token=token)
                exps.extend(page)
                token = page.token
                if not token:
                    break
        except Exception as e:
            raise mlflow_error(self.uri, e) from None
        return [experiment_from(e) for e in exps]

    def runs(self, experiment: Experiment) -> Iterator[RunRecord | BrokenRun]:
        from mlflow.entities import ViewType

        token = None
        while True:
            try:
                page = self.client.search_runs(
                    [experiment.id], run_view_type=ViewType.ALL, max_results=self.PAGE, page_token=token
                )
            except Exception as e:
                raise mlflow_error(self.uri, e) from None
            for r in page:
                yield self._record(experiment, r)
            token = page.token
            if not token:
                return

    @staticmethod
    def _record(experiment: Experiment, r: Any) -> RunRecord:
        info, data = r.info, r.data
        marks = {m.key: [m.timestamp, m.step, json_number(m.value)] for m in mlflow_compat.metric_objs(data)}
        rec = RunRecord(
            run_id=info.run_id,
            experiment_id=info.experiment_id,
            name=info.run_name or data.tags.get("mlflow.runName") or info.run_id,
            status=info.status,
            start_time=info.start_time,
            end_time=info.end_time,
            lifecycle_stage=info.lifecycle_stage,
            user=info.user_id or data.tags.get("mlflow.user"),
            artifact_uri=info.artifact_uri,
            params=dict(data.params),
            tags=dict(data.tags),
            datasets=datasets_from_inputs(r.inputs),
            metric_marks=marks,
        )
        rec.fingerprint = fingerprint(
            rec.name, rec.status, rec.start_time, rec.end_time, rec.lifecycle_stage,
            rec.params, rec.tags, rec.datasets, experiment.name, experiment.lifecycle_stage,
        )
        return rec

    def read_metric(self, run: RunRecord, key: str,
                    cursor: dict[str, Any] | None) -> Iterator[tuple[MetricChunk, dict[str, Any]]]:
        """MlflowClient can only return a key's whole history: fetch it, hand on the points at
        or after the cursor's timestamp. Re-sent boundary points land on the same step, so
        they overwrite rather than double."""
        try:
            history = self.client.get_metric_history(run.run_id, key)
        except Exception as e:
            raise mlflow_error(self.uri, e) from None
        since = (cursor or {}).get("ts", -1)
        pts = sorted((m for m in history if m.timestamp >= since), key=lambda m: (m.timestamp, m.step))
        new_cursor = {"ts": max([since] + [m.timestamp for m in pts]), "mark": run.metric_marks.get(key)}
        if not pts:
            yield MetricChunk(key, [], [], []), new_cursor
            return
        for i in range(0, len(pts), CHUNK_POINTS):
            part = pts[i:i + CHUNK_POINTS]
            names = [getattr(m, "dataset_name", None) for m in part]
            chunk = MetricChunk(
                key, [m.step for m in part], [m.value for m in part], [m.timestamp for m in part],
                names if any(names) else None,
            )
            last = i + CHUNK_POINTS >= len(pts)
            yield chunk, (new_cursor if last else {"ts": part[-1].timestamp})

    def metric_changed(self, run: RunRecord, key: str, cursor: dict[str, Any] | None) -> bool:
        return cursor is None or cursor.get("mark") != run.metric_marks.get(key)

    def list_artifacts(self, run: RunRecord) -> list[ArtifactFile]:
        return client_list_artifacts(self.client, run)

    def fetch_artifact(self, run: RunRecord, path: str, dst_dir: str) -> str:
        return client_fetch_artifact(self.client, run, path, dst_dir)
