"""MLflow tracking servers (http, https, databricks), through MLflow's own REST client.

A quick round lists only what can have changed, with two searches side by side: the RUNNING
runs (less those that have gone quiet) and the runs ended since the previous listing (a run
started since then is one or the other); they are sent by `start_listing`, before the
experiments are listed (a round's time is mostly requests waited for in turn). A run seen
RUNNING that neither returns was ended without an end time (`MlflowClient.update_run`) and is
read by id. A full listing catches edits, deletions, restores and the rest (a run left
SCHEDULED, one imported with old times). Histories: `http_history`.

What the server offers (`server_features`: logged models, bulk endpoints, filters, workspaces)
is asked once, at the first listing; only that is used. A server in workspace mode (MLflow >=
3.10, `--enable-workspaces`) is read workspace by workspace (every one, or `Source.workspaces`):
each request carries the workspace of what it asks about (`http_calls`), each experiment its
workspace (`team-a/xnli` in Aim). Every request is made so that a stop does not wait for it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from ..errors import REFUSED, Stopped
from . import mlflow_compat
from .base import Changes, ListingAsk, ReadStats, Source
from .cursors import Cursor, order_value
from .entities import artifact_repo_fetch, artifact_repo_list, datasets_from_inputs, experiment_from
from .http_calls import Calls, DaemonExecutor
from .http_history import BULK_RUNS, ServerHistories
from .http_workspaces import WorkspaceMap
from .location import StoreLocation
from .logged_models import Flavors, client_logged_models
from .records import (
    AnyRun,
    ArtifactFile,
    Experiment,
    KeyMark,
    LoggedModel,
    MetricChunk,
    RunRecord,
    fingerprint,
)
from .server_features import ServerFeatures, discover, requests_made
from .uri import is_local_store

log = logging.getLogger(__name__)

PAGE_RUNS = 1000
PAGE_MODELS = 100  # MLflow's most for search_logged_models
_CLOCK_MARGIN_MS = 5 * 60 * 1000  # start/end times are stamped by the clients' clocks
_DORMANT_FILTER_MAX = 200  # at most this many quiet runs are named in a NOT IN filter

# a quick listing sent early: (the quiet runs its RUNNING search left out, the two searches)
_Early = tuple[list[str], list["Future[dict[str, Any]]"]]


class HttpSource(Source):
    kind = "http"
    prefetch_runs = BULK_RUNS
    recheck_on_status = True  # its listing counts no points (see Source.recheck)

    def __init__(
        self,
        location: StoreLocation,
        reads: ReadStats,
        *,
        must_exist: bool = True,
        stop: threading.Event | None = None,
        workspaces: tuple[str, ...] = (),
    ):
        from mlflow.tracking import MlflowClient

        super().__init__(location, reads, stop, workspaces)
        mlflow_compat.check_mlflow_compatibility()
        # keep MLflow's HTTP retries short: the daemon has its own back-off
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
        except Exception as e:  # a bad URI, a missing driver
            raise self.failure(e) from None
        self.calls = Calls(stop)
        self.ws = WorkspaceMap(location.display, workspaces, strict=must_exist)  # which workspace is whose
        self._executor = DaemonExecutor(4)  # artifact downloads, in the caller's workspace
        self.rest = mlflow_compat.RestInternals(self.client, self.calls, self.ws.of_run)
        self.histories = ServerHistories(self.rest, reads, self._call, self._failure_or_stop, location.display)
        self.flavors = Flavors(self.uri, self._executor)
        self._features: ServerFeatures | None = None  # asked at the first listing
        self._models: dict[str, str] = {}  # run id -> digest of its logged models, as of the last full listing
        self._models_ok = True  # said once when the server cannot list logged models
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="search")  # quick rounds' searches
        self._early: _Early | None = None  # this round's quick searches, sent by start_listing
        if must_exist:  # asked now, as the listing that follows would; else at the first listing
            _ = self.features

    def _call(self, fn: Any, *args: Any, workspace: str | None = None, optional: bool = False, **kwargs: Any) -> Any:
        """A counted request in `workspace`, failures as our errors; `optional`: an endpoint the
        server may lack (EndpointMissing, not an error)."""
        self.reads.count(requests=1)  # some calls are made side by side
        try:
            return self.calls.run(fn, *args, workspace=workspace, **kwargs)
        except Stopped:
            raise
        except Exception as e:
            if optional and mlflow_compat.endpoint_missing(e):
                raise mlflow_compat.EndpointMissing(str(e)) from None
            raise self.failure(e) from None

    def _failure_or_stop(self, e: BaseException) -> Exception:
        return e if isinstance(e, Stopped) else self.failure(e)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- what the server offers ----------------------------------------------------------------
    @property
    def features(self) -> ServerFeatures:
        """Asked once (two requests at most), at the first listing; said in one line."""
        if self._features is None:
            try:
                found = discover(self.rest, self.calls, self.client)
            except Stopped:
                raise
            except Exception as e:
                raise self.failure(e) from None
            self.reads.count(requests=requests_made(found))
            self.histories.use(bulk_runs=found.bulk_runs, bulk_interval=found.bulk_interval)
            lvl, line = found.summary(self.describe())
            # a backfill's worker processes ask again: said by the parent only
            log.log(logging.DEBUG if multiprocessing.parent_process() is not None else lvl, "%s", line)
            self._features = found
        return self._features

    def _learn(self, run: RunRecord) -> str | None:
        """The workspace of a run handed in (a worker's source has not listed it): its
        experiment's, listed again once if this source has not seen it."""
        self.ws.experiment_of[run.run_id] = run.experiment_id
        if self.features.workspaces and run.experiment_id not in self.ws.of_experiment:
            self.list_experiments()
        return self.ws.of_experiment.get(run.experiment_id)

    # -- experiments and runs ----------------------------------------------------------------
    def start_listing(self, ask: ListingAsk) -> None:
        """A quick round's searches need only the last round's experiments: sent now, side by
        side with listing the experiments. One new since is in `ask.moved` (all its runs searched).
        Not on a server with workspaces: a search is sent to the experiment's workspace, which
        only this round's listing says (a workspace deleted since moves its experiments)."""
        self._early = None
        if self._features is not None and self._features.workspaces:
            return
        if not ask.full and ask.since_ms is not None and ask.last_experiments:
            self._early = self._send_quick_searches(list(ask.last_experiments), ask)

    def list_experiments(self) -> list[Experiment]:
        out: list[Experiment] = []
        names = lambda: [w.name for w in self._call(self.client.list_workspaces)]  # noqa: E731
        for ws in self.ws.to_list(self.features.workspaces, names):
            out.extend(self._experiments_in(ws))
        self.ws.of_experiment = {e.id: e.workspace for e in out}
        return out

    def _experiments_in(self, workspace: str | None) -> list[Experiment]:
        from mlflow.entities import ViewType

        exps: list[Any] = []
        token = None
        while True:
            page = self._call(
                self.client.search_experiments,
                view_type=ViewType.ALL,
                max_results=PAGE_RUNS,
                page_token=token,
                workspace=workspace,
            )
            exps.extend(page)
            token = page.token
            if not token:
                return [replace(experiment_from(e), workspace=workspace) for e in exps]

    def changes(self, experiments: list[Experiment], ask: ListingAsk) -> Changes:
        from mlflow.entities import ViewType

        by_id = {e.id: e for e in experiments}
        early, self._early = self._early, None
        if not by_id:
            return Changes([])
        gone: set[str] = set()
        if ask.full or ask.since_ms is None:
            runs = self._search(list(by_id), "", ViewType.ALL)
            self._models = self._model_marks(list(by_id))
        else:
            quiet, searches = early if early is not None else self._send_quick_searches(list(by_id), ask)
            runs = {}
            for search in searches:
                runs.update(search.result())
            for run_id in sorted((ask.lively | set(ask.quiet)) - set(quiet) - runs.keys()):
                ended = self._ended_without_end_time(run_id)
                if ended is not None:
                    runs[run_id] = ended
                else:
                    gone.add(run_id)
            if ask.moved:  # new, renamed, deleted or restored experiments: all their runs
                runs.update(self._search(sorted(ask.moved), "", ViewType.ALL))
        self.reads.count(runs_listed=len(runs))
        out: list[AnyRun] = [
            self._record(by_id[r.info.experiment_id], r) for r in runs.values() if r.info.experiment_id in by_id
        ]
        return Changes(out, gone=gone)

    def _send_quick_searches(self, exp_ids: list[str], ask: ListingAsk) -> _Early:
        """The runs RUNNING (less the quiet ones) and those ended since the previous listing, side
        by side (MLflow's search has no OR). A search costs the server ~15 ms at 1,000 runs: none
        for start times (a run started since is RUNNING or has ended)."""
        from mlflow.entities import ViewType

        assert ask.since_ms is not None
        since = ask.since_ms - _CLOCK_MARGIN_MS
        running = "attributes.status = 'RUNNING'"
        if not self.features.not_in:  # MLflow < 2.3: left out of what the search returns
            quiet = list(ask.quiet)
            searches = [self._pool.submit(self._search, exp_ids, running, ViewType.ALL, set(quiet))]
        else:
            quiet = list(ask.quiet[:_DORMANT_FILTER_MAX])
            if quiet:
                running += " AND attributes.run_id NOT IN (" + ", ".join(f"'{r}'" for r in quiet) + ")"
            searches = [self._pool.submit(self._search, exp_ids, running, ViewType.ALL)]
        searches.append(self._pool.submit(self._search, exp_ids, f"attributes.end_time >= {since}", ViewType.ALL))
        return quiet, searches

    def _ended_without_end_time(self, run_id: str) -> Any | None:
        """A run last seen RUNNING that the searches no longer return: its status changed without
        an end time. None where it cannot be read (deleted for good: the full listing says so)."""
        try:
            return self._call(self.client.get_run, run_id, workspace=self.ws.of_run(run_id))
        except REFUSED as e:  # not StoreUnavailable: an unreachable server fails the round
            log.debug("run %s, last seen RUNNING, cannot be read: %s", run_id, e)
            return None

    def _search(self, exp_ids: list[str], flt: str, view: Any, leave_out: set[str] | None = None) -> dict[str, Any]:
        """The runs of these experiments the filter matches (a search per workspace), less
        `leave_out`."""
        found: dict[str, Any] = {}
        for ws, ids in self.ws.by_workspace(exp_ids).items():
            token = None
            while True:
                page = self._call(
                    self.client.search_runs,
                    ids,
                    flt,
                    run_view_type=view,
                    max_results=PAGE_RUNS,
                    page_token=token,
                    workspace=ws,
                )
                found.update((r.info.run_id, r) for r in page if not leave_out or r.info.run_id not in leave_out)
                self.check_stop()
                token = page.token
                if not token:
                    break
        return found

    def _model_marks(self, exp_ids: list[str]) -> dict[str, str]:
        """run id -> a digest of the MLflow 3 logged models it produced (a score another run logs
        to one later changes the model, not this run): every model of these experiments, paged.
        None asked for where the server has none (MLflow 2.x); when it cannot say now, what it
        said last time."""
        parts: dict[str, list[Any]] = {}
        for ws, ids in self.ws.by_workspace(exp_ids).items() if self.features.logged_models else ():
            token = None
            while True:
                try:
                    page = self._call(
                        self.client.search_logged_models,
                        experiment_ids=ids,
                        max_results=PAGE_MODELS,
                        page_token=token,
                        workspace=ws,
                        optional=True,
                    )
                except mlflow_compat.EndpointMissing:  # a server that did not say its version
                    log.info("%s has no logged models (MLflow >= 3.0): none are read", self.describe())
                    self.features.logged_models = False
                    return {}
                except REFUSED as e:
                    lvl = logging.INFO if self._models_ok else logging.DEBUG
                    log.log(lvl, "no logged models from %s: %s", self.describe(), e)
                    self._models_ok = False
                    return self._models
                for m in page:
                    if m.source_run_id:
                        parts.setdefault(m.source_run_id, []).append(m.to_dictionary())
                self.reads.count(rows=len(page))
                token = page.token
                if not token:
                    break
        self._models_ok = True
        return {run_id: fingerprint(models) for run_id, models in parts.items()}

    def _record(self, experiment: Experiment, r: Any) -> RunRecord:
        info, data = r.info, r.data
        self.ws.experiment_of[info.run_id] = info.experiment_id
        latest = mlflow_compat.metric_objs(data)
        marks = {m.key: KeyMark(latest=(m.timestamp, m.step, order_value(m.value))) for m in latest}
        if any(getattr(m, "dataset_name", None) for m in latest):
            self.histories.dataset_runs.add(info.run_id)
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
        if not self.features.logged_models:  # MLflow 2.x: nothing to ask for, in any process
            rec.models_listed = False
        else:
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
            experiment.aim_name,  # its workspace too: a workspace deleted moves it to the default one
            experiment.lifecycle_stage,
        )
        return rec

    # -- metrics (http_history) ------------------------------------------------------------------
    def prefetch(self, items: list[tuple[RunRecord, list[str], dict[str, Cursor]]]) -> None:
        for run, _keys, _cursors in items:
            self._learn(run)
        self.histories.prefetch(items)

    def prepare(self, run: RunRecord, keys: list[str], cursors: dict[str, Cursor]) -> None:
        self._learn(run)
        self.histories.prepare(run, keys, cursors)

    def read_metric(self, run: RunRecord, key: str, cursor: Cursor | None) -> Iterator[tuple[MetricChunk, Cursor]]:
        self._learn(run)
        return self.histories.read_metric(run, key, cursor)

    def logged_models(self, run: RunRecord) -> list[LoggedModel]:
        """The run's models: none asked for when the listing says it has none (no model outputs,
        and no model of the last full listing names it as its source run; a 2.x server)."""
        if run.model_outputs == {} and run.models_listed is False:
            return []
        ws = self._learn(run)
        if not self.features.logged_models:
            return []
        try:
            models: list[LoggedModel] = self._call(
                client_logged_models, self.client, run, self.flavors, run.model_outputs, workspace=ws, optional=True
            )
        except mlflow_compat.EndpointMissing:
            log.info("%s has no logged models (MLflow >= 3.0): none are read", self.describe())
            self.features.logged_models = False
            return []
        return models

    # -- artifacts ---------------------------------------------------------------------------
    def list_artifacts(self, run: RunRecord) -> list[ArtifactFile]:
        ws = self._learn(run)
        if self.ws.artifacts_left_behind(run.artifact_uri, ws):
            return []
        self.reads.count(requests=1)
        files: list[ArtifactFile] = self.calls.run(artifact_repo_list, run, tracking_uri=self.uri, workspace=ws)
        return files

    def fetch_artifact(self, run: RunRecord, path: str, dst_dir: str) -> str:
        if not run.artifact_uri or is_local_store(run.artifact_uri):
            return artifact_repo_fetch(run, path, dst_dir, tracking_uri=self.uri)
        uri = run.artifact_uri

        def fetch() -> str:  # MLflow downloads in threads of its own: ours carry the workspace
            repo = mlflow_compat.artifact_repository(uri, self.uri, self._executor)
            return str(repo.download_artifacts(path, dst_dir))

        got: str = self.calls.run(fetch, workspace=self._learn(run))
        return got
