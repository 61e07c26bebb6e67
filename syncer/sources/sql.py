"""SQL tracking stores (sqlite, PostgreSQL, MySQL through SQLAlchemy), read directly and
read-only through MLflow's own table definitions (`sql_schema`), a few queries per round. Any
schema from MLflow 2.0's on: what a database lacks (dataset inputs, logged models, workspaces) is
never queried; experiments carry their workspace where the database has them (MLflow >= 3.10).

What changed is found without reading any history:

- runs: every round, the runs that are RUNNING or started, ended or were deleted since the last
  round (one query on the `runs` table); on a full listing all runs (restores, edits);
- for those runs only: their `latest_metrics` rows and each key's point count (a key whose
  latest point or count moved has new points), their tags, their param and input counts
  (MLflow never changes a logged param);
- new points of a key: `sql_history` (keyset pages after the key's `OrderCursor`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

from ..errors import StoreError, StoreReadFailed, StoreUnavailable
from .base import Changes, ListingAsk, ReadStats, Source
from .cursors import Cursor, OrderCursor
from .entities import artifact_repo_fetch, artifact_repo_list
from .file_stat import local_artifacts_mark
from .location import StoreLocation
from .logged_models import Flavors, model_marks_query, sql_logged_models
from .records import (
    AnyRun,
    ArtifactFile,
    Experiment,
    LoggedModel,
    MetricChunk,
    RunRecord,
    fingerprint,
)
from .sql_history import SqlHistories
from .sql_schema import check_workspaces, experiments_query, open_read_only, read_again_if_upgraded

log = logging.getLogger(__name__)

_BATCH = 500  # run ids per IN (...) query
_LIVELY_MAX = _BATCH  # runs seen RUNNING looked up by id in a quick round (more: the full listing)
# runs started / ended / deleted up to this long before the last round are looked at again: MLflow
# clients stamp those times with their own clocks
_CLOCK_MARGIN_MS = 5 * 60 * 1000
_RUNNING = ("RUNNING", "SCHEDULED")


class SqlSource(Source):
    kind = "sql"

    def __init__(
        self,
        location: StoreLocation,
        reads: ReadStats,
        *,
        must_exist: bool = True,
        stop: threading.Event | None = None,
        workspaces: tuple[str, ...] = (),
    ):
        super().__init__(location, reads, stop, workspaces)
        if location.path is not None and not location.path.exists():
            if must_exist:
                raise StoreError(f"no MLflow database at {location.path} (from {location.display})")
            raise StoreUnavailable(f"waiting for the MLflow database {location.path} to appear")
        self.engine, self.t = open_read_only(location.uri)
        try:
            check_workspaces(self.engine, self.t, workspaces, location.display, strict=must_exist)
        except BaseException:
            self.engine.dispose()
            raise
        self.flavors = Flavors()
        self.histories = SqlHistories(self.t, self._rows, reads)
        self._counts: dict[str, int] = {}  # experiment id -> how many runs it had
        self._ids: set[str] | None = None  # run ids known (None: take them from the next listing)

    def close(self) -> None:
        self.engine.dispose()

    def _rows(self, query: Any, *, raw: bool = False) -> list[Any]:
        """The query's rows. ``raw``: the driver's own tuples (its cursor's ``fetchall``), not a
        SQLAlchemy Row made per row: for a metric history's numbers (hundreds of thousands of
        points a run), which every driver returns as they are (int, float, bool or 0/1)."""
        self.reads.count(requests=1)
        try:
            with self.engine.connect() as con:
                result = con.execute(query)
                rows = result.cursor.fetchall() if raw else list(result)
                result.close()
        except Exception as e:
            raise self.failure(e) from None
        self.reads.count(rows=len(rows))
        return rows

    # -- experiments and runs ----------------------------------------------------------------
    def list_experiments(self) -> list[Experiment]:
        from sqlalchemy import select

        et = self.t.experiment_tags
        tags: dict[str, dict[str, str]] = {}
        for exp_id, key, value in self._rows(select(et.c.experiment_id, et.c.key, et.c.value)):
            tags.setdefault(str(exp_id), {})[key] = value
        out = []
        for exp_id, name, stage, *ws in self._rows(experiments_query(self.t, self.workspaces)):
            t = tags.get(str(exp_id), {})
            out.append(Experiment(str(exp_id), name, stage, t.get("mlflow.note.content"), t, *ws))
        return out

    def changes(self, experiments: list[Experiment], ask: ListingAsk) -> Changes:
        """The runs of these experiments that may have changed since the previous listing (all
        of them on a full listing)."""
        from sqlalchemy import and_, or_, select

        full = ask.full
        if full:
            self._upgraded()
        r = self.t.runs
        by_id = {e.id: e for e in experiments}
        if not by_id:
            return Changes([])
        cols = (
            r.c.run_uuid,
            r.c.experiment_id,
            r.c.name,
            r.c.status,
            r.c.start_time,
            r.c.end_time,
            r.c.lifecycle_stage,
            r.c.user_id,
            r.c.artifact_uri,
        )
        exp_ids = [int(i) for i in by_id]
        query = select(*cols).where(r.c.experiment_id.in_(exp_ids))
        new_ids = self._new_run_ids(exp_ids, full=full)
        moved_exps = ask.moved  # their runs all listed (quiet ones too)
        quiet = set(ask.quiet)
        if not full and ask.since_ms is not None:
            since = ask.since_ms - _CLOCK_MARGIN_MS
            # runs seen RUNNING (not quiet) whatever they are now: `MlflowClient.update_run` ends a
            # run without an end time
            lively = sorted(ask.lively)[:_LIVELY_MAX]
            query = query.where(
                or_(
                    r.c.status.in_(_RUNNING),
                    r.c.run_uuid.in_(lively),
                    r.c.start_time >= since,
                    r.c.end_time >= since,
                    and_(r.c.deleted_time.is_not(None), r.c.deleted_time >= since),
                    r.c.run_uuid.in_(new_ids),
                    r.c.experiment_id.in_([int(i) for i in sorted(moved_exps)]),
                )
            )
        rows = self._rows(query)
        if full:
            self._ids = {row.run_uuid for row in rows} | (self._ids or set())
        wanted = [
            row
            for row in rows
            if full
            or str(row.experiment_id) in moved_exps
            or row.status not in _RUNNING  # a quiet run that ended after all
            or row.run_uuid not in quiet
        ]
        self.reads.count(runs_listed=len(wanted))
        out: list[AnyRun] = []
        for i in range(0, len(wanted), _BATCH):
            self.check_stop()
            out.extend(self._records_for(wanted[i : i + _BATCH], by_id))
        return Changes(out)

    def _upgraded(self) -> None:
        """A full listing checks the schema revision: what an upgraded database has is read."""
        self.reads.count(requests=1)
        try:
            self.t = self.histories.t = read_again_if_upgraded(self.engine, self.t, self.uri)
        except StoreError as e:  # its tables gone mid-upgrade: a glitch once it answered
            raise StoreReadFailed(str(e)) from None
        except Exception as e:
            raise self.failure(e) from None

    def _new_run_ids(self, exp_ids: list[int], *, full: bool) -> list[str]:
        """Runs created since the last round whatever start time their client gave them (an
        import of old runs): found by a count per experiment, then the ids of those that moved."""
        from sqlalchemy import func, select

        r = self.t.runs
        counts = {
            str(e): n
            for e, n in self._rows(
                select(r.c.experiment_id, func.count())
                .where(r.c.experiment_id.in_(exp_ids))
                .group_by(r.c.experiment_id)
            )
        }
        moved = [int(e) for e, n in counts.items() if self._counts.get(e) != n]
        self._counts = counts
        if full or not moved:
            if full:
                self._ids = None
            return []
        ids = {row[0] for row in self._rows(select(r.c.run_uuid).where(r.c.experiment_id.in_(moved)))}
        new = sorted(ids - (self._ids or set())) if self._ids is not None else []
        self._ids = (self._ids or set()) | ids
        return new

    def _records_for(self, rows: list[Any], by_id: dict[str, Experiment]) -> list[RunRecord]:
        from sqlalchemy import func, select

        ids = [row.run_uuid for row in rows]
        tg, pr, inp = self.t.tags, self.t.params, self.t.inputs
        marks = self.histories.key_marks(ids)  # latest point and point count of each key
        tags: dict[str, dict[str, str]] = {i: {} for i in ids}
        for run_id, key, value in self._rows(select(tg.c.run_uuid, tg.c.key, tg.c.value).where(tg.c.run_uuid.in_(ids))):
            tags[run_id][key] = value
        n_params = dict(
            self._rows(select(pr.c.run_uuid, func.count()).where(pr.c.run_uuid.in_(ids)).group_by(pr.c.run_uuid))
        )
        n_inputs: dict[str, int] = {}
        n_outputs: dict[str, int] = {}
        if self.t.has_datasets:  # MLflow >= 2.4
            n_inputs = dict(
                self._rows(
                    select(inp.c.destination_id, func.count())
                    .where(inp.c.destination_type == "RUN", inp.c.destination_id.in_(ids))
                    .group_by(inp.c.destination_id)
                )
            )
        models: dict[str, tuple[Any, ...]] = {}
        if self.t.has_logged_models:  # MLflow >= 3.0
            n_outputs = dict(  # logged models the run produced (a new checkpoint moves it)
                self._rows(
                    select(inp.c.source_id, func.count())
                    .where(inp.c.source_type == "RUN_OUTPUT", inp.c.source_id.in_(ids))
                    .group_by(inp.c.source_id)
                )
            )
            models = {run_id: tuple(rest) for run_id, *rest in self._rows(model_marks_query(self.t, ids))}
        out = []
        for row in rows:
            exp = by_id[str(row.experiment_id)]
            t = tags[row.run_uuid]
            rec = RunRecord(
                run_id=row.run_uuid,
                experiment_id=str(row.experiment_id),
                name=row.name or t.get("mlflow.runName") or row.run_uuid,
                status=row.status,
                start_time=row.start_time,
                end_time=row.end_time,
                lifecycle_stage=row.lifecycle_stage,
                user=row.user_id or t.get("mlflow.user"),
                artifact_uri=row.artifact_uri,
                params={},
                tags=t,
                datasets=[],
                metric_marks=marks[row.run_uuid],
                details_loaded=False,
            )
            rec.fingerprint = fingerprint(
                rec.name,
                rec.status,
                rec.start_time,
                rec.end_time,
                rec.lifecycle_stage,
                t,
                n_params.get(row.run_uuid, 0),
                n_inputs.get(row.run_uuid, 0),
                n_outputs.get(row.run_uuid, 0),
                models.get(row.run_uuid),
                exp.aim_name,  # its workspace too: a run whose experiment moved to another is written again
                exp.lifecycle_stage,
            )
            rec.artifacts_mark = local_artifacts_mark(rec.artifact_uri)
            out.append(rec)
        return out

    def load_details(self, run: RunRecord) -> None:
        """Params and datasets of one run (read only when its metadata changed)."""
        from sqlalchemy import select

        if run.details_loaded:
            return
        pr = self.t.params
        params = {k: v for k, v in self._rows(select(pr.c.key, pr.c.value).where(pr.c.run_uuid == run.run_id))}
        run.datasets = self._datasets(run.run_id) if self.t.has_datasets else []  # MLflow >= 2.4
        run.params = params
        run.details_loaded = True
        self.reads.count(runs_read=1)

    def _datasets(self, run_id: str) -> list[dict[str, Any]]:
        from sqlalchemy import and_, select

        inp, ds, it = self.t.inputs, self.t.datasets, self.t.input_tags
        rows = self._rows(
            select(
                inp.c.input_uuid,
                ds.c.name,
                ds.c.digest,
                ds.c.dataset_source_type,
                ds.c.dataset_source,
                ds.c.dataset_profile,
                it.c.name.label("tag"),
                it.c.value.label("tag_value"),
            )
            .select_from(
                inp.join(ds, inp.c.source_id == ds.c.dataset_uuid).outerjoin(
                    it, and_(it.c.input_uuid == inp.c.input_uuid)
                )
            )
            .where(inp.c.destination_type == "RUN", inp.c.destination_id == run_id)
            .order_by(inp.c.input_uuid)
        )
        datasets: dict[str, dict[str, Any]] = {}
        for row in rows:
            item = datasets.setdefault(
                row.input_uuid,
                {
                    "name": row.name,
                    "digest": row.digest,
                    "source_type": row.dataset_source_type,
                    "source": row.dataset_source,
                },
            )
            if row.dataset_profile:
                item["profile"] = row.dataset_profile
            if row.tag == "mlflow.data.context":
                item["context"] = row.tag_value
        return list(datasets.values())

    # -- metrics (sql_history) ---------------------------------------------------------------
    def prepare(self, run: RunRecord, keys: list[str], cursors: dict[str, Cursor]) -> None:
        self.histories.prepare(run, keys, cursors)

    def read_metric(self, run: RunRecord, key: str, cursor: Cursor | None) -> Iterator[tuple[MetricChunk, Cursor]]:
        return self.histories.read_metric(run, key, cursor)

    def late_points(self, run_id: str, key: str, cursor: OrderCursor) -> Any:
        return self.histories.late_points(run_id, key, cursor)

    def logged_models(self, run: RunRecord) -> list[LoggedModel]:
        if not self.t.has_logged_models:  # MLflow < 3.0: none
            return []
        self.reads.count(requests=1)
        try:
            return sql_logged_models(self.engine, self.t, run, self.flavors)
        except Exception as e:  # whatever the driver raised, classified by type
            raise self.failure(e) from None

    # -- artifacts ---------------------------------------------------------------------------
    def list_artifacts(self, run: RunRecord) -> list[ArtifactFile]:
        return artifact_repo_list(run)

    def fetch_artifact(self, run: RunRecord, path: str, dst_dir: str) -> str:
        return artifact_repo_fetch(run, path, dst_dir)
