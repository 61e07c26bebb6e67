"""Metric histories from an MLflow server, for `http.HttpSource`: new points of a key from
where its cursor stands, and the histories of runs read for the first time, many at once.

- new points: `get-history-bulk-interval` from the largest step read. Chosen over paging
  `get-history` from an offset (measured in bench/RESULTS.md, "history options"): the server
  orders a `get-history` page by timestamp over the key's whole history (and the offset would
  be a page token MLflow documents as unstable), while the bulk-interval endpoint reads only
  the index range of the new steps. What it cannot return: points re-logged at a step below
  the largest one read (a training resumed from an earlier checkpoint): read the database
  directly (`postgresql://`, `sqlite:///`) where those matter;
- a first read, a range the server had to sample (more than 2,500 new points), a step beyond
  what the endpoint accepts (int32), or a server without the endpoint: the whole history, in
  pages of `get-history`;
- runs read for the first time (a backfill, a first round): each key's histories of up to 100
  runs of one workspace in one request (`get-history-bulk`, what MLflow's own UI charts read;
  20 runs up to MLflow 2.10, which refuses more).

What a server lacks (`server_features`) is said by `use` before the first read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from . import mlflow_compat
from .base import PREFETCH_MAX_POINTS, ReadStats, first_reads, history_estimate
from .cursors import Cursor, OrderCursor, OrderKey, order_value
from .records import CHUNK_POINTS, MetricChunk, RunRecord

log = logging.getLogger(__name__)

PAGE_POINTS = 25_000  # MLflow's MAX_RESULTS_GET_METRIC_HISTORY
PARALLEL_HISTORIES = 4  # a first read asks for this many histories at once
BULK_MAX = 2500  # MLflow's MAX_RESULTS_PER_RUN for get-history-bulk-interval
BULK_RUNS = 100  # MLflow's most run ids for get-history-bulk (from 2.11; 20 before: `use`)
BULK_POINTS = 25_000  # and its most points
# get-history-bulk is a GET with every run id in its query: MLflow 2.x servers run gunicorn, which
# answers a request line over 4,094 bytes with a 400 (100 run ids alone are 4,000 bytes), so a
# request takes no more run ids than keep its query under this
QUERY_BUDGET = 3_800
PREFETCH_WINDOW_POINTS = 500_000  # points held at once for the runs of one prefetch
_INT32_MAX = 2**31 - 1


class ServerHistories:
    """The histories part of a server source. `call(fn, *args)` makes a counted request with
    the source's error mapping; `failure(e)` maps an exception the same way."""

    def __init__(
        self,
        rest: mlflow_compat.RestInternals,
        reads: ReadStats,
        call: Callable[..., Any],
        failure: Callable[[BaseException], Exception],
        display: str,
    ):
        self.rest = rest
        self.reads = reads
        self._call = call
        self._failure = failure
        self._display = display
        self._prefetched: dict[tuple[str, str], list[Any]] = {}  # (run, key) -> pages of its history
        self._bulk_ok = True
        self._bulk_runs_ok = True
        self.bulk_runs = BULK_RUNS  # run ids the server takes in one get-history-bulk request
        self.dataset_runs: set[str] = set()  # runs whose latest points name MLflow 3 datasets

    def use(self, *, bulk_runs: int, bulk_interval: bool) -> None:
        """What the server offers: run ids a get-history-bulk request takes (0: no such
        endpoint), and whether it has get-history-bulk-interval."""
        self.bulk_runs = bulk_runs
        self._bulk_runs_ok = self._bulk_runs_ok and bulk_runs > 0
        self._bulk_ok = self._bulk_ok and bulk_interval

    def prefetch(self, items: list[tuple[RunRecord, list[str], dict[str, Cursor]]]) -> None:
        """Runs about to be read for the first time: each key's histories of up to BULK_RUNS runs
        in one request instead of one request per run and key: on a server the requests, not
        the points, are the cost. A batch the server cut short (more than BULK_POINTS points)
        is split; what is not fetched here is read run by run as before."""
        self._prefetched = {}
        if not self._bulk_runs_ok:
            return
        by_key: dict[tuple[str | None, str], list[str]] = {}  # (workspace, key) -> runs
        for run, keys, cursors in items:
            fresh = [k for k in keys if k not in cursors]
            estimate = history_estimate(run, fresh)
            if not fresh or estimate is None or estimate > PREFETCH_MAX_POINTS or run.run_id in self.dataset_runs:
                continue  # long histories page as before; MLflow 3 datasets come with get-history only
            for k in fresh:
                by_key.setdefault((self.rest.workspace_of(run.run_id), k), []).append(run.run_id)
        held = 0  # points fetched: the window's histories are held until their runs are written
        try:
            for (_ws, key), run_ids in by_key.items():
                for batch in id_batches(run_ids, key, self.bulk_runs):
                    if held >= PREFETCH_WINDOW_POINTS:
                        return  # the rest, run by run
                    held += self._fetch_together(key, batch)
        except mlflow_compat.EndpointMissing:
            log.info("MLflow at %s has no get-history-bulk endpoint: histories are read run by run", self._display)
            self._bulk_runs_ok = False
        except Exception as e:
            raise self._failure(e) from None

    def _fetch_together(self, key: str, run_ids: list[str]) -> int:
        """Fetch `key` of these runs at once (halves when the server cuts the answer short);
        returns how many points are now held."""
        from mlflow.entities import Metric
        from mlflow.store.entities.paged_list import PagedList

        self.reads.count(requests=1)
        got = self.rest.history_of_runs(run_ids, key, BULK_POINTS)
        self.reads.count(rows=len(got))
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
            raise self._failure(e) from None
        self.reads.count(requests=sum(len(p) for p in got))
        self._prefetched.update({(run.run_id, k): p for k, p in zip(fresh, got)})

    def read_metric(self, run: RunRecord, key: str, cursor: Cursor | None) -> Iterator[tuple[MetricChunk, Cursor]]:
        cur = cursor if isinstance(cursor, OrderCursor) else None
        resumed = cur is not None and run.running and (cur.resumed or run.recheck)  # read again at its end
        for chunk, done in self._read(run, key, cur):
            yield chunk, replace(done, resumed=resumed)

    def _read(self, run: RunRecord, key: str, cur: OrderCursor | None) -> Iterator[tuple[MetricChunk, OrderCursor]]:
        mark = run.metric_marks.get(key)
        latest = mark.latest if mark is not None else None
        self.reads.count(histories=1)
        before = cur.points if cur is not None else 0
        if cur is not None and relogged(run, cur, latest):
            yield from self._from_offset(run, key, replace(cur, mark=latest))
            return
        points = None
        if cur is not None and self._bulk_ok and cur.max_step <= _INT32_MAX:
            points = self._bulk_since(run.run_id, key, max(cur.max_step, -_INT32_MAX - 1))
        if cur is None or points is None:  # the whole history, page by page
            yield from self._whole_history(run, key, cur or OrderCursor(), latest)
            return
        start = replace(cur, mark=latest)
        new = sorted((p for p in points if start.is_new(p[0], p[1], order_value(p[2]))), key=lambda p: p[:2])
        done = start.after([(ts, step, order_value(v)) for ts, step, v in new])
        yield MetricChunk(key, [p[1] for p in new], [p[2] for p in new], [p[0] for p in new]), done
        self.reads.count(points=done.points - before)

    def _from_offset(self, run: RunRecord, key: str, start: OrderCursor) -> Iterator[tuple[MetricChunk, OrderCursor]]:
        """The points after the cursor in MLflow's order, whatever their step: `get-history`
        from offset `start.points` (where the cursor's last point lies in that order unless
        points were inserted before it), one point first. That point lying before the cursor
        means points were logged late with an earlier timestamp at a step read: the whole
        history, once. A server that pages no history (MLflow 2.x) sends the whole history."""
        from mlflow.exceptions import MlflowException

        self.reads.count(requests=1)
        try:
            page = self.rest.history_page(run.run_id, key, 1, self.rest.offset_token(start.points))
        except MlflowException as e:
            if e.error_code != "INVALID_PARAMETER_VALUE":
                raise self._failure(e) from None
            log.info("MLflow at %s takes no history offsets: reading the whole history", self._display)
            page = None
        except Exception as e:
            raise self._failure(e) from None
        if page is None or len(page) > 1:  # no page from an offset: what came is the whole history
            if page is not None:
                self._prefetched[(run.run_id, key)] = [page]
            yield from self._whole_history(run, key, start, start.mark)
            return
        self.reads.count(rows=len(page))
        if page and not start.is_after(page[0].timestamp, page[0].step, order_value(page[0].value)):
            yield from self._whole_history(run, key, start, start.mark, everything=True)
            return
        pages = [page]
        token = page.token
        while token:  # the rest of the tail
            pages.append(self._call(self.rest.history_page, run.run_id, key, PAGE_POINTS, token))
            self.reads.count(rows=len(pages[-1]))
            token = pages[-1].token
        new = sorted((m for p in pages for m in p), key=lambda m: (m.timestamp, m.step))
        done = start.after([(m.timestamp, m.step, order_value(m.value)) for m in new])
        yield _metric_chunk(key, new), done
        self.reads.count(points=len(new))

    def _bulk_since(self, run_id: str, key: str, start_step: int) -> list[tuple[int, int, float]] | None:
        """The points at steps >= start_step, or None when the server sampled them (too many)
        or lacks the endpoint."""
        self.reads.count(requests=1)
        try:
            got = self.rest.bulk_interval(run_id, key, start_step, _INT32_MAX, BULK_MAX)
        except mlflow_compat.EndpointMissing:
            log.info("MLflow at %s has no get-history-bulk-interval endpoint: reading whole histories", self._display)
            self._bulk_ok = False
            return None
        except Exception as e:
            raise self._failure(e) from None
        self.reads.count(rows=len(got))
        return None if len(got) >= BULK_MAX else got

    def _whole_history(
        self, run: RunRecord, key: str, cur: OrderCursor, latest: OrderKey | None, *, everything: bool = False
    ) -> Iterator[tuple[MetricChunk, OrderCursor]]:
        """The points of the whole history the cursor has not read (`everything`: all of them,
        the cursor built again). Points before the cursor it did not read (more of them than it
        counts) were logged late with an earlier timestamp at a step read: a second pass with
        `everything`."""
        start = OrderCursor(mark=latest, seen=cur.seen) if everything else replace(cur, mark=latest)
        fetched = self._prefetched.pop((run.run_id, key), None)
        pages = iter(fetched) if fetched is not None else None
        token = None
        done = start
        yielded = False
        before = 0  # points of the history that lie before the cursor
        while True:
            page = (
                next(pages)
                if pages is not None
                else self._call(self.rest.history_page, run.run_id, key, PAGE_POINTS, token)
            )
            self.reads.count(rows=len(page))
            new = [m for m in page if start.is_new(m.timestamp, m.step, order_value(m.value))]
            before += len(page) - len(new)
            new.sort(key=lambda m: (m.timestamp, m.step))
            for i in range(0, len(new), CHUNK_POINTS):
                part = new[i : i + CHUNK_POINTS]
                done = done.after([(m.timestamp, m.step, order_value(m.value)) for m in part])
                yield _metric_chunk(key, part), done
                yielded = True
            token = page.token
            if not token:
                break
        if not yielded:
            yield MetricChunk(key, [], [], []), done
        self.reads.count(points=done.points - start.points)
        if before > cur.points and not everything:
            if fetched is not None:  # the history came whole (a server that pages none): used again
                self._prefetched[(run.run_id, key)] = fetched
            yield from self._whole_history(run, key, cur, latest, everything=True)


def relogged(run: RunRecord, cur: OrderCursor, latest: OrderKey | None) -> bool:
    """Whether a key must be read from where MLflow's order of its history says rather than from
    its last step read: its run was resumed or ended (`RunRecord.recheck`), it was asked for
    with its latest point unmoved (the planner's recheck), or that point moved without going
    beyond the last step read (a step logged again: a resumed run logs its steps again, and
    the ones below the last step move nothing)."""
    if run.recheck or latest == cur.mark:
        return True
    return latest is not None and latest[1] <= cur.max_step


def _metric_chunk(key: str, metrics: list[Any]) -> MetricChunk:
    """MLflow Metric entities (with their MLflow 3 dataset names) as one chunk."""
    names = [getattr(m, "dataset_name", None) or None for m in metrics]
    return MetricChunk(
        key,
        [m.step for m in metrics],
        [m.value for m in metrics],
        [m.timestamp for m in metrics],
        names if any(names) else None,
    )


def id_batches(run_ids: list[str], key: str, most: int) -> Iterator[list[str]]:
    """The run ids in batches of at most `most`, each as few as keep a get-history-bulk query
    (`run_id=...&` each, the key, max_results) within QUERY_BUDGET bytes."""
    from urllib.parse import quote_plus

    fixed = len("metric_key=&max_results=25000") + len(quote_plus(key))
    batch: list[str] = []
    size = fixed
    for run_id in run_ids:
        cost = len("run_id=&") + len(quote_plus(run_id))
        if batch and (len(batch) >= most or size + cost > QUERY_BUDGET):
            yield batch
            batch, size = [], fixed
        batch.append(run_id)
        size += cost
    if batch:
        yield batch
