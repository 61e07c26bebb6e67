"""MLflow tracking servers (http, https, databricks), through MLflow's own REST client.

A round lists only what can have changed, with two searches side by side: the RUNNING runs
(less those that have gone quiet) and the runs ended since the last round (a run started since
then is one or the other); a run seen RUNNING that neither returns was ended without an end time
(`MlflowClient.update_run`) and is read by id. Every `full_every_s` a full listing catches edits,
deletions, restores and the rest (a run left SCHEDULED, one imported with old times). A key
whose latest point moved is read from where its cursor stands:

- new points: `get-history-bulk-interval` from the largest step read. Chosen over paging
  `get-history` from an offset (measured in bench/RESULTS.md, "history options"): the server
  orders a `get-history` page by timestamp over the key's whole history (and the offset would
  be a page token MLflow documents as unstable), while the bulk-interval endpoint reads only
  the index range of the new steps. What it cannot return: points re-logged at a step below
  the largest one read (a training resumed from an earlier checkpoint): read the database
  directly (`postgresql://`, `sqlite:///`) where those matter;
- a first read, a range the server had to sample (more than 2,500 new points), a step beyond
  what the endpoint accepts (int32), or a server without the endpoint: the whole history, in
  pages of `get-history`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import StoreError
from . import mlflow_compat
from .base import (
    CHUNK_POINTS,
    PREFETCH_MAX_POINTS,
    ArtifactFile,
    BrokenRun,
    Experiment,
    LoggedModel,
    MetricChunk,
    RunRecord,
    Source,
    fingerprint,
    first_reads,
    history_estimate,
)
from .cursors import Cursor, OrderCursor, order_value
from .entities import artifact_repo_fetch, artifact_repo_list, datasets_from_inputs, experiment_from
from .listing import Listing
from .mlflow_errors import mlflow_error
from .models import Flavors, client_logged_models

log = logging.getLogger(__name__)

PAGE_RUNS = 1000
PAGE_MODELS = 100  # MLflow's most for search_logged_models
PAGE_POINTS = 25_000  # MLflow's MAX_RESULTS_GET_METRIC_HISTORY
PARALLEL_HISTORIES = 4  # a first read asks for this many histories at once
BULK_MAX = 2500  # MLflow's MAX_RESULTS_PER_RUN for get-history-bulk-interval
BULK_RUNS = 100  # MLflow's most run ids for get-history-bulk
BULK_POINTS = 25_000  # and its most points
PREFETCH_WINDOW_POINTS = 500_000  # points held at once for the runs of one prefetch
_INT32_MAX = 2**31 - 1
_CLOCK_MARGIN_MS = 5 * 60 * 1000  # start/end times are stamped by the clients' clocks
_DORMANT_FILTER_MAX = 200  # at most this many quiet runs are named in a NOT IN filter


class HttpSource(Source):
    kind = "http"
    prefetch_runs = BULK_RUNS

    def __init__(self, uri: str, *, full_every_s: float = 60.0):
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
        except Exception as e:  # a bad URI, a missing driver
            raise mlflow_error(uri, e) from None
        self.rest = mlflow_compat.RestInternals(self.client)
        self.listing = Listing(full_every_s)
        self._since_ms: int | None = None
        self._bulk_ok = True
        self.flavors = Flavors(uri)
        self._counting = threading.Lock()
        self._prefetched: dict[tuple[str, str], list[Any]] = {}  # (run, key) -> pages of its history
        self._bulk_runs_ok = True
        self._dataset_runs: set[str] = set()  # runs whose latest points name MLflow 3 datasets
        self._models: dict[str, str] = {}  # run id -> digest of its logged models, as of the last full listing
        self._models_ok = True  # said once when the server cannot list logged models
        self._last_ids: list[str] = []  # the experiments the last round listed runs of
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="search")  # quick rounds' searches
        self._early: tuple[int, list[str], list[Any]] | None = None  # (started, quiet, searches) sent early

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        with self._counting:  # some calls are made side by side
            self.listing.stats.requests += 1
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise mlflow_error(self.uri, e) from None

    # -- experiments and runs ----------------------------------------------------------------
    def experiments(self) -> list[Experiment]:
        from mlflow.entities import ViewType

        self._search_early()
        exps: list[Any] = []
        token = None
        while True:
            page = self._call(
                self.client.search_experiments, view_type=ViewType.ALL, max_results=PAGE_RUNS, page_token=token
            )
            exps.extend(page)
            token = page.token
            if not token:
                return [experiment_from(e) for e in exps]

    def changes(self, experiments: list[Experiment], *, full: bool = False) -> list[RunRecord | BrokenRun]:
        from mlflow.entities import ViewType

        by_id = {e.id: e for e in experiments}
        if not by_id:
            return []
        started = int(time.time() * 1000)
        moved = self.listing.moved_experiments(experiments)
        early, self._early = self._early, None
        self._last_ids = list(by_id)
        if full or self._since_ms is None:
            runs = self._search(list(by_id), "", ViewType.ALL)
            self._models = self._model_marks(list(by_id))
        else:
            if early is None:
                early = self._send_quick_searches(list(by_id), started)
            started, quiet, searches = early
            runs = {}
            for search in searches:
                runs.update(search.result())
            for run_id in sorted(self.listing.running_ids() - set(quiet) - runs.keys()):
                ended = self._ended_without_end_time(run_id)
                if ended is not None:
                    runs[run_id] = ended
            if moved:  # new, renamed, deleted or restored experiments: all their runs
                runs.update(self._search(sorted(moved), "", ViewType.ALL))
        self._since_ms = started
        self.listing.stats.runs_listed += len(runs)
        out: list[RunRecord | BrokenRun] = [
            self._record(by_id[r.info.experiment_id], r) for r in runs.values() if r.info.experiment_id in by_id
        ]
        return self.listing.note(out)

    def _search_early(self) -> None:
        """A quick round's searches need only the last round's experiments: sent before the
        experiments are listed, side by side with that (a round's time is mostly requests waited
        for in turn). One new since is in `moved_experiments` (all its runs searched)."""
        self._early = None
        if not self.listing.stats.full and self._since_ms is not None and self._last_ids:
            self._early = self._send_quick_searches(self._last_ids, int(time.time() * 1000))

    def _send_quick_searches(self, exp_ids: list[str], started: int) -> tuple[int, list[str], list[Any]]:
        """The runs RUNNING (less the quiet ones) and those ended since the last round, side by
        side (MLflow's search has no OR). A search costs the server ~15 ms at 1,000 runs: none
        for start times (a run started since is RUNNING or has ended). -> (started, quiet, futures)"""
        from mlflow.entities import ViewType

        assert self._since_ms is not None
        since = self._since_ms - _CLOCK_MARGIN_MS
        quiet = self.listing.dormant_ids()[:_DORMANT_FILTER_MAX]
        running = "attributes.status = 'RUNNING'"
        if quiet:
            running += " AND attributes.run_id NOT IN (" + ", ".join(f"'{r}'" for r in quiet) + ")"
        searches = [
            self._pool.submit(self._search, exp_ids, flt, ViewType.ALL)
            for flt in (running, f"attributes.end_time >= {since}")
        ]
        return started, quiet, searches

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _ended_without_end_time(self, run_id: str) -> Any | None:
        """A run last seen RUNNING that the searches no longer return: its status changed without
        an end time. None where it cannot be read (deleted for good: the full listing says so)."""
        try:
            return self._call(self.client.get_run, run_id)
        except StoreError as e:  # not StoreUnavailable: an unreachable server fails the round
            log.debug("run %s, last seen RUNNING, cannot be read: %s", run_id, e)
            self.listing.forget_running(run_id)
            return None

    def _search(self, exp_ids: list[str], flt: str, view: Any) -> dict[str, Any]:
        found: dict[str, Any] = {}
        token = None
        while True:
            page = self._call(
                self.client.search_runs, exp_ids, flt, run_view_type=view, max_results=PAGE_RUNS, page_token=token
            )
            for r in page:
                found[r.info.run_id] = r
            self.check_stop()
            token = page.token
            if not token:
                return found

    def _model_marks(self, exp_ids: list[str]) -> dict[str, str]:
        """run id -> a digest of the MLflow 3 logged models it produced (a score another run logs
        to one later changes the model, not this run): every model of these experiments, paged.
        When the server cannot say (one older than MLflow 3), what it said last time."""
        parts: dict[str, list[Any]] = {}
        token = None
        while True:
            try:
                page = self._call(
                    self.client.search_logged_models, experiment_ids=exp_ids, max_results=PAGE_MODELS, page_token=token
                )
            except StoreError as e:
                log.log(
                    logging.INFO if self._models_ok else logging.DEBUG,
                    "no logged models from %s: %s",
                    self.describe(),
                    e,
                )
                self._models_ok = False
                return self._models
            for m in page:
                if m.source_run_id:
                    parts.setdefault(m.source_run_id, []).append(m.to_dictionary())
            self.listing.stats.rows += len(page)
            token = page.token
            if not token:
                return {run_id: fingerprint(models) for run_id, models in parts.items()}

    def _record(self, experiment: Experiment, r: Any) -> RunRecord:
        info, data = r.info, r.data
        latest = mlflow_compat.metric_objs(data)
        marks = {m.key: (m.timestamp, m.step, order_value(m.value)) for m in latest}
        if any(getattr(m, "dataset_name", None) for m in latest):
            self._dataset_runs.add(info.run_id)
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
        model_outputs = getattr(getattr(r, "outputs", None), "model_outputs", None) or []
        rec.model_outputs = {o.model_id: o.step for o in model_outputs}
        rec.models_listed = (info.run_id in self._models) if self._models_ok else None
        rec.fingerprint = fingerprint(
            sorted(rec.model_outputs),
            rec.name,
            rec.status,
            rec.start_time,
            rec.end_time,
            rec.lifecycle_stage,
            rec.params,
            rec.tags,
            rec.datasets,
            self._models.get(info.run_id),
            experiment.name,
            experiment.lifecycle_stage,
        )
        return rec

    def load_details(self, run: RunRecord) -> None:
        pass  # a search result carries params, tags and inputs already

    # -- metrics -----------------------------------------------------------------------------
    def metric_changed(self, run: RunRecord, key: str, cursor: Cursor | None) -> bool:
        return not isinstance(cursor, OrderCursor) or cursor.mark != run.metric_marks.get(key)

    def prefetch(self, items: list[tuple[RunRecord, list[str], dict[str, Cursor]]]) -> None:
        """Runs about to be read for the first time (a backfill, a first round): each key's
        histories of up to BULK_RUNS runs in one request to the endpoint MLflow's own UI charts
        read (`get-history-bulk`), instead of one request per run and key: on a server the
        requests, not the points, are the cost. A batch the server cut short (more than
        BULK_POINTS points) is split; what is not fetched here is read run by run as before."""
        self._prefetched = {}
        if not self._bulk_runs_ok:
            return
        by_key: dict[str, list[str]] = {}
        for run, keys, cursors in items:
            fresh = [k for k in keys if k not in cursors]
            estimate = history_estimate(run, fresh)
            if not fresh or estimate is None or estimate > PREFETCH_MAX_POINTS or run.run_id in self._dataset_runs:
                continue  # long histories page as before; MLflow 3 datasets come with get-history only
            for k in fresh:
                by_key.setdefault(k, []).append(run.run_id)
        held = 0  # points fetched: the window's histories are held until their runs are written
        try:
            for key, run_ids in by_key.items():
                for i in range(0, len(run_ids), BULK_RUNS):
                    if held >= PREFETCH_WINDOW_POINTS:
                        return  # the rest, run by run
                    held += self._fetch_together(key, run_ids[i : i + BULK_RUNS])
        except mlflow_compat.EndpointMissing:
            log.info("MLflow at %s has no get-history-bulk endpoint: histories are read run by run", self.describe())
            self._bulk_runs_ok = False
        except Exception as e:
            raise mlflow_error(self.uri, e) from None

    def _fetch_together(self, key: str, run_ids: list[str]) -> int:
        """Fetch `key` of these runs at once (halves when the server cuts the answer short);
        returns how many points are now held."""
        from mlflow.entities import Metric
        from mlflow.store.entities.paged_list import PagedList

        self.listing.stats.requests += 1
        got = self.rest.history_of_runs(run_ids, key, BULK_POINTS)
        self.listing.stats.rows += len(got)
        if len(got) >= BULK_POINTS:  # cut short: halves, down to one run per request
            if len(run_ids) == 1:
                return 0
            half = len(run_ids) // 2
            return self._fetch_together(key, run_ids[:half]) + self._fetch_together(key, run_ids[half:])
        points: dict[str, list[Any]] = {r: [] for r in run_ids}
        for run_id, ts, step, value in got:
            points[run_id].append(Metric(key, value, ts, step))
        for run_id, metrics in points.items():
            self._prefetched[(run_id, key)] = [PagedList(metrics, None)]
        return len(got)

    def prepare(self, run: RunRecord, keys: list[str], cursors: dict[str, Cursor]) -> None:
        """A run read for the first time: its keys' histories not prefetched with other runs'
        fetched side by side (one request per key and page is all the REST API offers for one
        run; the server answers several at once)."""
        fresh = [k for k in first_reads(run, keys, cursors) if (run.run_id, k) not in self._prefetched]
        if not fresh:
            return

        def fetch(key: str) -> list[Any]:
            pages, token = [], None
            while True:
                page = self.rest.history_page(run.run_id, key, PAGE_POINTS, token)
                pages.append(page)
                token = page.token
                if not token:
                    return pages

        try:
            with ThreadPoolExecutor(PARALLEL_HISTORIES, thread_name_prefix="history") as pool:
                got = list(pool.map(fetch, fresh))
        except Exception as e:
            raise mlflow_error(self.uri, e) from None
        self.listing.stats.requests += sum(len(p) for p in got)
        self._prefetched.update({(run.run_id, k): p for k, p in zip(fresh, got)})

    def read_metric(self, run: RunRecord, key: str, cursor: Cursor | None) -> Iterator[tuple[MetricChunk, Cursor]]:
        mark = run.metric_marks.get(key)
        cur = cursor if isinstance(cursor, OrderCursor) else None
        self.listing.stats.histories += 1
        before = cur.points if cur is not None else 0
        points = None
        if cur is not None and self._bulk_ok and cur.max_step <= _INT32_MAX:
            points = self._bulk_since(run.run_id, key, max(cur.max_step, -_INT32_MAX - 1))
        if points is None:  # the whole history, page by page
            yield from self._whole_history(run, key, cur or OrderCursor(), mark)
            return
        start = OrderCursor(cur.ts, cur.step, cur.value, cur.max_step, cur.points, mark)  # type: ignore[union-attr]
        new = sorted((p for p in points if start.is_new(p[0], p[1], order_value(p[2]))), key=lambda p: p[:2])
        done = start.after([(ts, step, order_value(v)) for ts, step, v in new])
        yield MetricChunk(key, [p[1] for p in new], [p[2] for p in new], [p[0] for p in new]), done
        self.listing.stats.points += done.points - before

    def _bulk_since(self, run_id: str, key: str, start_step: int) -> list[tuple[int, int, float]] | None:
        """The points at steps >= start_step, or None when the server sampled them (too many)
        or lacks the endpoint."""
        self.listing.stats.requests += 1
        try:
            got = self.rest.bulk_interval(run_id, key, start_step, _INT32_MAX, BULK_MAX)
        except mlflow_compat.EndpointMissing:
            log.info("MLflow at %s has no get-history-bulk-interval endpoint: reading whole histories", self.describe())
            self._bulk_ok = False
            return None
        except Exception as e:
            raise mlflow_error(self.uri, e) from None
        self.listing.stats.rows += len(got)
        return None if len(got) >= BULK_MAX else got

    def _whole_history(
        self, run: RunRecord, key: str, cur: OrderCursor, mark: Any
    ) -> Iterator[tuple[MetricChunk, OrderCursor]]:
        start = OrderCursor(cur.ts, cur.step, cur.value, cur.max_step, cur.points, mark)
        fetched = self._prefetched.pop((run.run_id, key), None)
        pages = iter(fetched) if fetched is not None else None
        token = None
        done = start
        yielded = False
        while True:
            page = (
                next(pages)
                if pages is not None
                else self._call(self.rest.history_page, run.run_id, key, PAGE_POINTS, token)
            )
            self.listing.stats.rows += len(page)
            new = [m for m in page if start.is_new(m.timestamp, m.step, order_value(m.value))]
            new.sort(key=lambda m: (m.timestamp, m.step))
            for i in range(0, len(new), CHUNK_POINTS):
                part = new[i : i + CHUNK_POINTS]
                done = done.after([(m.timestamp, m.step, order_value(m.value)) for m in part])
                names = [getattr(m, "dataset_name", None) or None for m in part]
                yield (
                    MetricChunk(
                        key,
                        [m.step for m in part],
                        [m.value for m in part],
                        [m.timestamp for m in part],
                        names if any(names) else None,
                    ),
                    done,
                )
                yielded = True
            token = page.token
            if not token:
                break
        if not yielded:
            yield MetricChunk(key, [], [], []), done
        self.listing.stats.points += done.points - cur.points

    def logged_models(self, run: RunRecord) -> list[LoggedModel]:
        """The run's models: none asked for when the listing says it has none (no model outputs,
        and no model of the last full listing names it as its source run)."""
        if run.model_outputs == {} and run.models_listed is False:
            return []
        return self._call(client_logged_models, self.client, run, self.flavors, run.model_outputs)

    # -- artifacts ---------------------------------------------------------------------------
    def list_artifacts(self, run: RunRecord) -> list[ArtifactFile]:
        self.listing.stats.requests += 1
        return artifact_repo_list(run, tracking_uri=self.uri)

    def fetch_artifact(self, run: RunRecord, path: str, dst_dir: str) -> str:
        return artifact_repo_fetch(run, path, dst_dir, tracking_uri=self.uri)
