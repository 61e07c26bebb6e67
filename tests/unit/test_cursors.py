"""Cursors, table by table: what is new after an OrderCursor, what it becomes, and that stored
cursors round-trip (and unknown ones are dropped, not trusted)."""

from __future__ import annotations

import math

import pytest
from syncer.sources.cursors import FileCursor, OrderCursor, dumps, loads, order_value

START = OrderCursor()
AFTER = OrderCursor(ts=100, step=5, value=0.5, max_step=5, points=6)


@pytest.mark.parametrize(
    ("cursor", "point", "new"),
    [
        (START, (0, 0, 0.0), True),  # a fresh cursor: everything is new
        (AFTER, (100, 5, 0.5), False),  # the last point read
        (AFTER, (100, 5, 0.4), False),  # same time and step, lower value: before it in MLflow's order
        (AFTER, (100, 5, 0.6), True),  # same time and step, higher value: after it
        (AFTER, (101, 0, 0.0), True),  # logged later at a lower step
        (AFTER, (99, 6, 0.0), True),  # an earlier clock, but a step beyond every step read
        (AFTER, (99, 5, 0.0), False),  # earlier, at a step read: cannot be told from history
    ],
)
def test_what_is_new_after_an_order_cursor(cursor, point, new):
    assert cursor.is_new(*point) is new


def test_an_order_cursor_moves_to_the_last_point_in_mlflows_order_and_counts():
    cur = AFTER.after([(101, 0, 1.0), (99, 9, 2.0), (101, 0, 0.5)])
    assert cur.last == (101, 0, 1.0)
    assert cur.max_step == 9 and cur.points == 9
    assert AFTER.after([]) is AFTER


@pytest.mark.parametrize(
    ("value", "ordered"),
    [(math.nan, 0.0), (math.inf, 1.7976931348623157e308), (-math.inf, -1.7976931348623157e308), (0.25, 0.25)],
)
def test_values_are_ordered_as_mlflows_database_keeps_them(value, ordered):
    assert order_value(value) == ordered


@pytest.mark.parametrize(
    "cursor",
    [
        FileCursor(offset=120, points=10, mark=120),
        FileCursor(offset=30, points=2, mark=40, tail=10, bad=1, first_bad="garbage"),
        OrderCursor(ts=1, step=2, value=3.0, max_step=2, points=3, mark=(1, 2, 3.0)),
        OrderCursor(),
    ],
)
def test_stored_cursors_round_trip(cursor):
    assert loads(dumps(cursor)) == cursor


@pytest.mark.parametrize("text", ["", "{}", '{"kind": "tape"}', '{"kind": "file", "wheel": 1}', "not json"])
def test_a_cursor_this_version_does_not_know_is_dropped(text):
    assert loads(text) is None


def test_a_file_cursor_says_which_lines_it_skipped():
    assert FileCursor().error is None and OrderCursor().error is None
    assert FileCursor(bad=2, first_bad="x y").error == "skipped 2 malformed line(s), first: 'x y'"


def test_after_sorted_is_after_for_points_in_mlflows_order():
    """A query's page (points in (timestamp, step, value) order) moves a cursor as `after` does."""
    import random

    rng = random.Random(11)
    for _ in range(200):
        points = sorted(
            (rng.randint(0, 5), rng.randint(-3, 9), rng.choice([0.0, -1.5, 2.5, 1e308]))
            for _ in range(rng.randint(0, 9))
        )
        start = rng.choice([OrderCursor(), OrderCursor(ts=2, step=4, value=0.0, max_step=7, points=3)])
        ts, step, value = (list(c) for c in zip(*points)) if points else ([], [], [])
        assert start.after_sorted(ts, step, value) == start.after(points)
