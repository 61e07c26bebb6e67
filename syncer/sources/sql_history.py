"""Metric histories from an MLflow database, for `sql.SqlSource`: what the listing says of each
key, and the points of a key a cursor has not read.

- what may have changed: each key's latest point (`latest_metrics`) and its point count. The
  latest point is the greatest (step, timestamp, value) and does not move for a point logged
  below the last step (a run resumed from a checkpoint logs its steps again; a client replaying
  a buffer with its own timestamps); the count does. The count is an index-only scan of the
  listed runs' points (MLflow 3's (run_uuid, key, step) index; older databases: their run_uuid
  index), done for the runs a round lists, not a read of their histories;
- new points of a key: keyset pages after the key's `OrderCursor`, served by the metrics
  primary key (key, timestamp, step, ...) for points logged later at any step, and by the index
  on (run_uuid, key, step) for points beyond the largest step read (a writer with a clock
  behind); when the count still says more (a point with an earlier timestamp at a step read),
  the key once more from its start: once, since the count then matches;
- a run read for the first time: all its keys in one query.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any, NamedTuple

from .base import PREFETCH_MAX_POINTS, ReadStats, first_reads
from .cursors import Cursor, OrderCursor
from .records import CHUNK_POINTS, KeyMark, MetricChunk, RunRecord

log = logging.getLogger(__name__)


class SqlHistories:
    """The histories part of a SQL source: `t` MLflow's tables, `rows(query)` a counted query
    with the source's error mapping."""

    def __init__(self, t: Any, rows: Callable[..., list[Any]], reads: ReadStats):
        self.t = t
        self._rows = rows
        self.reads = reads
        self._prefetched: dict[tuple[str, str], _Columns] = {}

    def key_marks(self, ids: list[str]) -> dict[str, dict[str, KeyMark]]:
        """run id -> key -> its latest point and how many points it has. Two queries."""
        from sqlalchemy import func, select

        lm, m = self.t.latest_metrics, self.t.metrics
        latest: dict[str, dict[str, tuple[int, int, float]]] = {i: {} for i in ids}
        for run_id, key, step, ts, value in self._rows(
            select(lm.c.run_uuid, lm.c.key, lm.c.step, lm.c.timestamp, lm.c.value).where(lm.c.run_uuid.in_(ids))
        ):
            latest[run_id][key] = (ts, step, value)
        counts: dict[str, dict[str, int]] = {i: {} for i in ids}
        for run_id, key, n in self._rows(
            select(m.c.run_uuid, m.c.key, func.count()).where(m.c.run_uuid.in_(ids)).group_by(m.c.run_uuid, m.c.key)
        ):
            counts[run_id][key] = n
        marks: dict[str, dict[str, KeyMark]] = {}
        for i in ids:
            keys = latest[i].keys() | counts[i].keys()
            marks[i] = {k: KeyMark(latest=latest[i].get(k), count=counts[i].get(k)) for k in keys}
        return marks

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
            .limit(PREFETCH_MAX_POINTS + 1),
            raw=True,
        )
        if len(rows) > PREFETCH_MAX_POINTS:
            return  # more than the latest steps said: key by key
        # by column (a transpose in C), each key a slice of them: rows come in key order
        cols = list(zip(*rows)) if rows else [(), (), (), (), ()]
        key_col = cols[0]
        self._prefetched = {(run.run_id, k): _Columns((), (), (), ()) for k in fresh}
        start = 0
        while start < len(key_col):
            key = key_col[start]
            end = start + 1
            while end < len(key_col) and key_col[end] == key:
                end += 1
            self._prefetched[(run.run_id, key)] = _Columns(*(c[start:end] for c in cols[1:]))
            start = end

    def read_metric(self, run: RunRecord, key: str, cursor: Cursor | None) -> Iterator[tuple[MetricChunk, Cursor]]:
        mark = run.metric_marks.get(key, KeyMark())
        start = cursor if isinstance(cursor, OrderCursor) else OrderCursor()
        start = replace(start, mark=mark.latest, seen=mark.count)
        self.reads.count(histories=1)
        fetched = self._prefetched.pop((run.run_id, key), None) if cursor is None else None
        if fetched is not None:  # the whole history, fetched with the run's other keys
            cur = start
            for i in range(0, max(len(fetched.ts), 1), CHUNK_POINTS):
                part = fetched.part(i, i + CHUNK_POINTS)
                cur = cur.after_sorted(part.ts, part.step, part.value)
                yield part.chunk(key), cur
            self.reads.count(points=cur.points)
            return
        read = 0
        cur = start
        for page, cur in self._after(run.run_id, key, start):  # logged after the cursor, at any step
            read += len(page)
            yield _chunk(key, page), cur
        if start.points or start.ts != OrderCursor().ts:  # not a first read: points may lie before it
            late = self._rows(self.late_points(run.run_id, key, start))
            if late:
                read += len(late)
                cur = cur.after([(ts, step, value) for ts, step, value, _nan in late])
                yield _chunk(key, late), cur
            if cur.hidden(mark.count):
                # logged late with an earlier timestamp at a step already read: no order reaches
                # it, the count shows it. The key once more from its start (the sink keeps the
                # later timestamp at each step); the count then matches, so this happens once
                log.debug("run %s, key %r: %d point(s) lie before the cursor", run.run_id, key, cur.hidden(mark.count))
                for page, cur in self._after(run.run_id, key, OrderCursor(mark=mark.latest, seen=mark.count)):
                    read += len(page)
                    yield _chunk(key, page), cur
        self.reads.count(points=read)

    def _after(self, run_id: str, key: str, cur: OrderCursor) -> Iterator[tuple[list[Any], OrderCursor]]:
        """The points after `cur` in MLflow's order, a page at a time (keyset pages on the
        primary key (key, timestamp, step, ...)), each with the cursor after it; at least one."""
        from sqlalchemy import select, tuple_

        m = self.t.metrics
        while True:
            page = self._rows(
                select(m.c.timestamp, m.c.step, m.c.value, m.c.is_nan)
                .where(
                    m.c.key == key,
                    m.c.run_uuid == run_id,
                    m.c.timestamp >= cur.ts,
                    tuple_(m.c.timestamp, m.c.step, m.c.value) > tuple_(cur.ts, cur.step, cur.value),
                )
                .order_by(m.c.timestamp, m.c.step, m.c.value)
                .limit(CHUNK_POINTS),
                raw=True,
            )
            cur = cur.after([(ts, step, value) for ts, step, value, _nan in page])
            yield page, cur
            if len(page) < CHUNK_POINTS:
                return

    def late_points(self, run_id: str, key: str, cursor: OrderCursor) -> Any:
        """The query for the points at a step beyond every step read but logged with an earlier
        timestamp (a writer whose clock is behind), through the (run_uuid, key, step) index:
        `timestamp + 0` keeps planners off the primary key (key, timestamp, ...), which sqlite
        picks otherwise and which scans the key's points of every run in the store. Databases
        without that index (MLflow 2.x): `key || ''` too, so that the run's points are read
        through metrics(run_uuid) (2,000 runs of 3,000 points: 1-9 ms a query, not 130-500 ms)."""
        from sqlalchemy import select

        m = self.t.metrics
        key_of = m.c.key if self.t.has_run_key_step_index else m.c.key + ""
        return select(m.c.timestamp, m.c.step, m.c.value, m.c.is_nan).where(
            m.c.run_uuid == run_id, key_of == key, m.c.step > cursor.max_step, m.c.timestamp + 0 < cursor.ts
        )


class _Columns(NamedTuple):
    """Points of one key in MLflow's order (timestamp, step, value), by column."""

    ts: Sequence[int]
    step: Sequence[int]
    value: Sequence[float]
    is_nan: Sequence[Any]

    def part(self, i: int, j: int) -> _Columns:
        return _Columns(self.ts[i:j], self.step[i:j], self.value[i:j], self.is_nan[i:j])

    def chunk(self, key: str) -> MetricChunk:
        values = list(self.value)
        if any(self.is_nan):  # MLflow keeps NaN as 0 with is_nan set
            values = [float("nan") if n else v for v, n in zip(values, self.is_nan)]
        return MetricChunk(key, list(self.step), values, list(self.ts))


def _chunk(key: str, rows: list[Any]) -> MetricChunk:
    return MetricChunk(key, [r[1] for r in rows], [float("nan") if r[3] else r[2] for r in rows], [r[0] for r in rows])
