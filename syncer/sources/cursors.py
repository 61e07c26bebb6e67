"""How far a metric of a run has been read: one typed cursor per kind of store, stored as JSON.

- `FileCursor`: a byte offset into the metric file, up to the last complete line. Exact: a
  file only grows (a file that shrank is read again from the start), and a point logged late,
  whatever its step and timestamp, is a line after the offset.
- `OrderCursor` (SQL databases, MLflow servers): the last point read in MLflow's own order of a
  history, (timestamp, step, value), and the largest step read. New points are those after
  that point in that order (logged later, at any step: a run resumed from a checkpoint logs
  its steps again) plus those at a step beyond the largest one (a writer whose clock is
  behind); each point is read once, so counts are exact. A point logged later with both an
  earlier timestamp and an earlier step than everything read (a client replaying a buffer
  with its own timestamps) lies *before* the cursor: only the key's point count shows it
  (`hidden`), and it is found by reading the key's history once more (`syncer.sources.sql`,
  `syncer.sources.http_history`).

Both carry `points`: how many MLflow points lie before the cursor (what `syncer status`
shows; stored as a number, never summed, so concurrent or repeated syncs cannot inflate it),
and `mark`: what the store's listing said about the key when it was read (a file size, the
latest (timestamp, step, value)), so an unchanged key is not read at all. An `OrderCursor`
also keeps `seen`, the key's point count the listing gave when it was read (SQL stores; None
where the store gives none, and in cursors stored before it existed): a count that moved while
the latest point did not is a late point below the last step (`stale`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import ClassVar

OrderKey = tuple[int, int, float]  # (timestamp ms, step, value as MLflow's database orders it)

# MLflow's SQL stores keep NaN as 0 with is_nan set, and +-inf as +-max float: the value a
# server orders by
_FLOAT_MAX = 1.7976931348623157e308


def order_value(v: float) -> float:
    """A float as MLflow's database orders it (NaN as 0, +-inf as +-max float)."""
    if math.isnan(v):
        return 0.0
    if math.isinf(v):
        return _FLOAT_MAX if v > 0 else -_FLOAT_MAX
    return v


@dataclass(frozen=True)
class FileCursor:
    offset: int = 0  # bytes of the metric file consumed (complete lines only)
    points: int = 0
    mark: int | None = None  # the file size the listing saw
    tail: int = 0  # bytes after the last complete line when it was read (a line being written)
    bad: int = 0  # malformed lines before the offset (skipped; the run reports them while they are there)
    first_bad: str | None = None

    kind: ClassVar[str] = "file"

    @property
    def error(self) -> str | None:
        if not self.bad:
            return None
        return f"skipped {self.bad} malformed line(s), first: {self.first_bad!r}"


@dataclass(frozen=True)
class OrderCursor:
    ts: int = -(2**63)  # the last point read, in (timestamp, step, value) order
    step: int = -(2**63)
    value: float = -math.inf
    max_step: int = -(2**63)  # the largest step read
    points: int = 0
    mark: OrderKey | None = None  # the latest (timestamp, step, value) the listing saw
    seen: int | None = None  # the key's point count the listing saw (None: the store gives none)
    # read while its run was resumed, on a store that counts no points: read again from MLflow's
    # order when the run ends (the steps it logged again below the last one moved no mark)
    resumed: bool = False

    kind: ClassVar[str] = "order"

    @property
    def error(self) -> str | None:
        return None

    @property
    def last(self) -> OrderKey:
        return (self.ts, self.step, self.value)

    def after(self, points: list[OrderKey]) -> OrderCursor:
        """The cursor once `points` (timestamp, step, order value), all new, are read too."""
        if not points:
            return self
        last = max([self.last, *points])
        return replace(
            self,
            ts=last[0],
            step=last[1],
            value=last[2],
            max_step=max(self.max_step, *(p[1] for p in points)),
            points=self.points + len(points),
        )

    def after_sorted(self, ts: Sequence[int], step: Sequence[int], value: Sequence[float]) -> OrderCursor:
        """`after` for points given by column, in MLflow's (timestamp, step, value) order (a
        query's): the last is the greatest, without a comparison per point."""
        if not ts:
            return self
        last = max(self.last, (ts[-1], step[-1], value[-1]))
        return replace(
            self,
            ts=last[0],
            step=last[1],
            value=last[2],
            max_step=max(self.max_step, max(step)),
            points=self.points + len(ts),
        )

    def is_new(self, ts: int, step: int, value: float) -> bool:
        """Whether a point (value in order form) was not read before this cursor."""
        return (ts, step, value) > self.last or step > self.max_step

    def is_after(self, ts: int, step: int, value: float) -> bool:
        """Whether a point (value in order form) lies after the last point read in MLflow's
        order: the first point of a page from offset `points` must, unless points were
        inserted before the cursor (`hidden`)."""
        return (ts, step, value) > self.last

    def stale(self, latest: OrderKey | None, count: int | None) -> bool:
        """Whether a key the listing describes by its latest point and its point count (None:
        not given) may hold points this cursor has not read: the latest point moved, the count
        differs from the one seen when it was read (from the points read, for a cursor that saw
        none: what a cursor stored before counts were kept missed shows so), or the count is
        above the points read (a read again from the start that stopped halfway: it goes on)."""
        if latest != self.mark:
            return True
        if count is None:
            return False
        return count != (self.seen if self.seen is not None else self.points) or self.hidden(count) > 0

    def hidden(self, count: int | None) -> int:
        """How many points a key of `count` points holds before this cursor without it having
        read them: logged late with an earlier timestamp at a step already read (0 when the
        count is not known or not larger: points the listing did not count yet are read by
        the next round)."""
        return max(count - self.points, 0) if count is not None else 0


Cursor = FileCursor | OrderCursor
_KINDS: dict[str, type[FileCursor] | type[OrderCursor]] = {"file": FileCursor, "order": OrderCursor}


def dumps(cursor: Cursor) -> str:
    """As `asdict` would give it (its fields hold numbers, strings and tuples of them), without
    asdict's deep copy (2-3 % of a backfill of short runs, cProfile)."""
    doc = {"kind": cursor.kind, **{f.name: getattr(cursor, f.name) for f in fields(cursor)}}
    return json.dumps(doc, allow_nan=True)


def loads(text: str) -> Cursor | None:
    """A stored cursor; None for one this version does not know (the metric is read again:
    writes are idempotent)."""
    try:
        doc = json.loads(text)
        cls = _KINDS[doc.pop("kind")]
        if isinstance(doc.get("mark"), list):
            doc["mark"] = tuple(doc["mark"])
        cursor: Cursor = cls(**doc)
    except (ValueError, KeyError, TypeError):
        return None
    return cursor
