"""SQL tracking stores (sqlite, PostgreSQL, MySQL through SQLAlchemy), read directly and
read-only through MLflow's own table definitions (`sql_schema`), a few queries per round.

What changed is found without reading any history:

- runs: every round, the runs that are RUNNING or started, ended or were deleted since the last
  round (one query on the `runs` table); on a full listing all runs (restores, edits);
- for those runs only: their `latest_metrics` rows (a key whose latest point moved has new
  points), their tags, their param and input counts (MLflow never changes a logged param);
- new points of a key: keyset pages after the key's `OrderCursor`, served by the metrics
  primary key (key, timestamp, step, ...) for points logged later, and by the index on
  (run_uuid, key, step) for points beyond the largest step read (a writer with a clock behind).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from ..errors import StoreError, StoreUnavailable
from .base import PREFETCH_MAX_POINTS, Changes, ListingAsk, ReadStats, Source, first_reads
from .cursors import Cursor, OrderCursor
from .entities import artifact_repo_fetch, artifact_repo_list
from .file_stat import local_artifacts_mark
from .location import StoreLocation
from .logged_models import Flavors, sql_logged_models
from .records import (
    CHUNK_POINTS,
    AnyRun,
    ArtifactFile,
    Experiment,
    KeyMark,
    LoggedModel,
    MetricChunk,
    RunRecord,
    fingerprint,
)
from .sql_schema import open_read_only

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
        self.flavors = Flavors()
        self._prefetched: dict[tuple[str, str], list[Any]] = {}
        self._counts: dict[str, int] = {}  # experiment id -> how many runs it had
        self._ids: set[str] | None = None  # run ids known (None: take them from the next listing)

    def close(self) -> None:
        self.engine.dispose()

    def _rows(self, query: Any) -> list[Any]:
        self.reads.count(requests=1)
        try:
            with self.engine.connect() as con:
                rows = list(con.execute(query))
        except Exception as e:
            raise self.failure(e) from None
        self.reads.count(rows=len(rows))
        return rows

    # -- experiments and runs ----------------------------------------------------------------
    def list_experiments(self) -> list[Experiment]:
        from sqlalchemy import select

        e, et = self.t.experiments, self.t.experiment_tags
        tags: dict[str, dict[str, str]] = {}
        for exp_id, key, value in self._rows(select(et.c.experiment_id, et.c.key, et.c.value)):
            tags.setdefault(str(exp_id), {})[key] = value
        out = []
        for exp_id, name, stage in self._rows(
            select(e.c.experiment_id, e.c.name, e.c.lifecycle_stage).order_by(e.c.experiment_id)
        ):
            t = tags.get(str(exp_id), {})
            out.append(Experiment(str(exp_id), name, stage, t.get("mlflow.note.content"), t))
        return out

    def changes(self, experiments: list[Experiment], ask: ListingAsk) -> Changes:
        """The runs of these experiments that may have changed since the previous listing (all
        of them on a full listing)."""
        from sqlalchemy import and_, or_, select

        r = self.t.runs
        full = ask.full
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
        lm, tg, pr, inp = self.t.latest_metrics, self.t.tags, self.t.params, self.t.inputs
        marks: dict[str, dict[str, KeyMark]] = {i: {} for i in ids}
        for run_id, key, step, ts, value in self._rows(
            select(lm.c.run_uuid, lm.c.key, lm.c.step, lm.c.timestamp, lm.c.value).where(lm.c.run_uuid.in_(ids))
        ):
            marks[run_id][key] = KeyMark(latest=(ts, step, value))
        tags: dict[str, dict[str, str]] = {i: {} for i in ids}
        for run_id, key, value in self._rows(select(tg.c.run_uuid, tg.c.key, tg.c.value).where(tg.c.run_uuid.in_(ids))):
            tags[run_id][key] = value
        n_params = dict(
            self._rows(select(pr.c.run_uuid, func.count()).where(pr.c.run_uuid.in_(ids)).group_by(pr.c.run_uuid))
        )
        n_inputs = dict(
            self._rows(
                select(inp.c.destination_id, func.count())
                .where(inp.c.destination_type == "RUN", inp.c.destination_id.in_(ids))
                .group_by(inp.c.destination_id)
            )
        )
        n_outputs = dict(  # MLflow 3 logged models the run produced (a new checkpoint moves it)
            self._rows(
                select(inp.c.source_id, func.count())
                .where(inp.c.source_type == "RUN_OUTPUT", inp.c.source_id.in_(ids))
                .group_by(inp.c.source_id)
            )
        )
        models = self._model_marks(ids)
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
                exp.name,
                exp.lifecycle_stage,
            )
            rec.artifacts_mark = local_artifacts_mark(rec.artifact_uri)
            out.append(rec)
        return out

    def _model_marks(self, ids: list[str]) -> dict[str, tuple[Any, ...]]:
        """run id -> what the MLflow 3 logged models it produced look like: how many, when one
        was last updated, how many metrics and the latest (a score another run logs to one later is in
        the model's rows, not this run's). One query."""
        from sqlalchemy import func, select

        lm, lmm = self.t.logged_models, self.t.logged_model_metrics
        rows = self._rows(
            select(
                lm.c.source_run_id,
                func.count(func.distinct(lm.c.model_id)),
                func.max(lm.c.last_updated_timestamp_ms),  # a status or tag set moves it
                func.count(lmm.c.model_id),
                func.max(lmm.c.metric_timestamp_ms),
            )
            .select_from(lm.outerjoin(lmm, lmm.c.model_id == lm.c.model_id))
            .where(lm.c.source_run_id.in_(ids))
            .group_by(lm.c.source_run_id)
        )
        return {run_id: tuple(rest) for run_id, *rest in rows}

    def load_details(self, run: RunRecord) -> None:
        """Params and datasets of one run (read only when its metadata changed)."""
        from sqlalchemy import and_, select

        if run.details_loaded:
            return
        pr, inp, ds, it = self.t.params, self.t.inputs, self.t.datasets, self.t.input_tags
        run.params = {k: v for k, v in self._rows(select(pr.c.key, pr.c.value).where(pr.c.run_uuid == run.run_id))}
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
            .where(inp.c.destination_type == "RUN", inp.c.destination_id == run.run_id)
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
        run.datasets = list(datasets.values())
        run.details_loaded = True
        self.reads.count(runs_read=1)

    # -- metrics -----------------------------------------------------------------------------
    def prepare(self, run: RunRecord, keys: list[str], cursors: dict[str, Cursor]) -> None:
        """A run read for the first time: its keys' histories in one query, not one per key."""
        from sqlalchemy import select

        self._prefetched = {}
        fresh = first_reads(run, keys, cursors)
        if not fresh:
            return
        m = self.t.metrics
        rows = self._rows(
            select(m.c.key, m.c.timestamp, m.c.step, m.c.value, m.c.is_nan)
            .where(m.c.run_uuid == run.run_id, m.c.key.in_(fresh))
            .order_by(m.c.key, m.c.timestamp, m.c.step, m.c.value)
            .limit(PREFETCH_MAX_POINTS + 1)
        )
        if len(rows) > PREFETCH_MAX_POINTS:
            return  # more than the latest steps said: key by key
        by_key: dict[str, list[Any]] = {k: [] for k in fresh}
        for key, *rest in rows:
            by_key[key].append(tuple(rest))
        self._prefetched = {(run.run_id, k): v for k, v in by_key.items()}

    def read_metric(self, run: RunRecord, key: str, cursor: Cursor | None) -> Iterator[tuple[MetricChunk, Cursor]]:
        from sqlalchemy import select, tuple_

        m = self.t.metrics
        cur = cursor if isinstance(cursor, OrderCursor) else OrderCursor()
        cur = replace(cur, mark=latest_of(run, key))
        self.reads.count(histories=1)
        fetched = self._prefetched.pop((run.run_id, key), None) if cursor is None else None
        if fetched is not None:  # the whole history, fetched with the run's other keys
            for i in range(0, max(len(fetched), 1), CHUNK_POINTS):
                part = fetched[i : i + CHUNK_POINTS]
                cur = cur.after([(ts, step, value) for ts, step, value, _nan in part])
                yield _chunk(key, part), cur
            self.reads.count(points=cur.points)
            return
        cols = (m.c.timestamp, m.c.step, m.c.value, m.c.is_nan)
        start = cur
        yielded = False
        while True:  # points logged after the cursor, in MLflow's order, a page at a time
            page = self._rows(
                select(*cols)
                .where(
                    m.c.key == key,
                    m.c.run_uuid == run.run_id,
                    m.c.timestamp >= cur.ts,
                    tuple_(m.c.timestamp, m.c.step, m.c.value) > tuple_(cur.ts, cur.step, cur.value),
                )
                .order_by(m.c.timestamp, m.c.step, m.c.value)
                .limit(CHUNK_POINTS)
            )
            if page or not yielded:
                cur = cur.after([(ts, step, value) for ts, step, value, _nan in page])
                yield _chunk(key, page), cur
                yielded = True
            if len(page) < CHUNK_POINTS:
                break
        if start.points == 0 and start.ts == OrderCursor().ts:
            self.reads.count(points=cur.points)
            return  # a first read: nothing lies before the cursor
        late = self._rows(self.late_points(run.run_id, key, start))
        if late:
            cur = cur.after([(ts, step, value) for ts, step, value, _nan in late])
            yield _chunk(key, late), cur
        self.reads.count(points=cur.points - (cursor.points if isinstance(cursor, OrderCursor) else 0))

    def late_points(self, run_id: str, key: str, cursor: OrderCursor) -> Any:
        """The query for the points at a step beyond every step read but logged with an earlier
        timestamp (a writer whose clock is behind), through the (run_uuid, key, step) index:
        `timestamp + 0` keeps planners off the primary key (key, timestamp, ...), which sqlite
        picks otherwise and which scans the key's points of every run in the store."""
        from sqlalchemy import select

        m = self.t.metrics
        return select(m.c.timestamp, m.c.step, m.c.value, m.c.is_nan).where(
            m.c.run_uuid == run_id, m.c.key == key, m.c.step > cursor.max_step, m.c.timestamp + 0 < cursor.ts
        )

    def logged_models(self, run: RunRecord) -> list[LoggedModel]:
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


def _chunk(key: str, rows: list[Any]) -> MetricChunk:
    return MetricChunk(key, [r[1] for r in rows], [float("nan") if r[3] else r[2] for r in rows], [r[0] for r in rows])


def latest_of(run: RunRecord, key: str) -> tuple[int, int, float] | None:
    """The latest point the listing saw of a key (what an OrderCursor remembers as its mark)."""
    mark = run.metric_marks.get(key)
    return mark.latest if mark is not None else None
