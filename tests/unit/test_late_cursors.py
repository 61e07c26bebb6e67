"""Late lower steps, table by table: when a key whose listing says (latest point, point count) is
read again, how many points lie before a cursor unread, which points lie after it in MLflow's
order, when a server's key is read from its offset, when a run's keys are looked at again
although no mark moved, and that cursors stored before these fields existed still load."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from syncer.sources import (
    ArtifactFile,
    Changes,
    Experiment,
    ListingAsk,
    MetricChunk,
    ReadStats,
    RunRecord,
    Source,
    StoreLocation,
)
from syncer.sources.cursors import Cursor, FileCursor, OrderCursor, dumps, loads
from syncer.sources.http_history import relogged
from syncer.state import State

LATEST = (1_000, 30, 3.0)  # (timestamp, step, value) of the key's latest point
READ = OrderCursor(ts=1_000, step=30, value=3.0, max_step=30, points=3, mark=LATEST, seen=3)
BEFORE_COUNTS = OrderCursor(ts=1_000, step=30, value=3.0, max_step=30, points=3, mark=LATEST)  # seen None


@pytest.mark.parametrize(
    ("cursor", "latest", "count", "stale"),
    [
        (READ, LATEST, 3, False),  # nothing moved
        (READ, (1_100, 31, 1.0), 4, True),  # a new last step: the latest point moved
        (READ, (1_100, 30, 9.0), 4, True),  # its last step logged again, later: the latest point moved
        (READ, LATEST, 4, True),  # a point below the last step, any timestamp: only the count moved
        (READ, LATEST, 2, True),  # fewer points than seen (rows deleted): read once, then seen again
        (READ, LATEST, None, False),  # a store that counts nothing (a server): the latest point alone
        (BEFORE_COUNTS, LATEST, 3, False),  # stored before counts: the points it read match, not read
        (BEFORE_COUNTS, LATEST, 4, True),  # ... and a point it missed is read (what it never could)
        (replace_seen := OrderCursor(points=5, mark=LATEST, seen=4), LATEST, 4, False),  # more read than counted
        (replace_seen, LATEST, 5, True),  # the count caught up with points read after the listing: once
        (OrderCursor(points=2, mark=LATEST, seen=4), LATEST, 4, True),  # a read from the start cut short: on
    ],
)
def test_when_a_key_is_read_again(cursor, latest, count, stale):
    assert cursor.stale(latest, count) is stale


@pytest.mark.parametrize(
    ("points", "count", "hidden"),
    [(3, 3, 0), (3, 4, 1), (3, 10, 7), (3, 2, 0), (3, None, 0), (0, 0, 0)],
)
def test_points_before_the_cursor_it_never_read(points, count, hidden):
    assert OrderCursor(points=points).hidden(count) == hidden


@pytest.mark.parametrize(
    ("point", "after", "new"),
    [
        ((1_000, 30, 3.0), False, False),  # the last point read
        ((1_001, 15, 0.0), True, True),  # a lower step logged again, later: after it, and new
        ((1_000, 30, 3.5), True, True),  # same time and step, higher value
        ((999, 31, 0.0), False, True),  # a new step with a clock behind: new, but before it in the order
        ((500, 15, 0.0), False, False),  # a lower step with an older clock: before it, and not new
    ],
)
def test_which_points_lie_after_the_cursor_in_mlflows_order(point, after, new):
    assert READ.is_after(*point) is after
    assert READ.is_new(*point) is new


def _run(status="RUNNING", recheck=False) -> RunRecord:
    return RunRecord("r", "0", "r", status, 0, None, "active", None, None, {}, {}, [], {}, recheck=recheck)


@pytest.mark.parametrize(
    ("run", "latest", "offset"),
    [
        (_run(), (1_100, 31, 1.0), False),  # a new last step: from the last step read (bulk interval)
        (_run(), (1_100, 30, 9.0), True),  # its last step logged again: the steps below may be too
        (_run(), (1_100, 12, 9.0), True),  # the latest point below the last step read (cannot be, but safe)
        (_run(), LATEST, True),  # asked for with the mark unmoved: a recheck
        (_run(recheck=True), (1_100, 31, 1.0), True),  # its run was resumed or ends after a resume
        (_run(), None, False),  # a key the listing does not describe: from its last step
    ],
)
def test_when_a_server_key_is_read_from_its_offset(run, latest, offset):
    assert relogged(run, READ, latest) is offset


class _Counting(Source):
    """A store whose listing counts no points (as a server's)."""

    kind = "http"
    recheck_on_status = True

    def __init__(self) -> None:
        super().__init__(StoreLocation.parse("http://127.0.0.1:1"), ReadStats())

    def list_experiments(self) -> list[Experiment]:
        return []

    def changes(self, experiments: list[Experiment], ask: ListingAsk) -> Changes:
        return Changes([])

    def read_metric(self, run: RunRecord, key: str, cursor: Cursor | None) -> Iterator[tuple[MetricChunk, Cursor]]:
        raise AssertionError

    def list_artifacts(self, run: RunRecord) -> list[ArtifactFile]:
        return []

    def fetch_artifact(self, run: RunRecord, path: str, dst_dir: str) -> str:
        raise AssertionError


RESUMED = OrderCursor(points=3, mark=LATEST, resumed=True)


@pytest.mark.parametrize(
    ("prev", "status", "cursor", "recheck"),
    [
        ("FINISHED", "RUNNING", READ, True),  # resumed: start_run(run_id=...) on an ended run
        ("FAILED", "RUNNING", READ, True),
        ("KILLED", "SCHEDULED", READ, True),
        ("RUNNING", "FINISHED", READ, False),  # an ordinary end: nothing logged below its steps
        ("RUNNING", "KILLED", READ, False),  # (update_run without an end time too)
        ("RUNNING", "FINISHED", RESUMED, True),  # the end of a resumed run: what it logged again
        ("RUNNING", "RUNNING", RESUMED, False),  # still going: the marks say
        (None, "RUNNING", READ, False),  # never synced: every key is read anyway
        ("FINISHED", "FINISHED", RESUMED, False),
        ("FINISHED", "RUNNING", None, False),  # a key never read is read anyway
        ("FINISHED", "RUNNING", FileCursor(), False),
    ],
)
def test_when_a_servers_run_has_its_keys_looked_at_again(prev, status, cursor, recheck):
    assert _Counting().recheck(_run(status), prev, cursor) is recheck


def test_a_store_that_counts_points_never_rechecks_by_status():
    src = _Counting()
    src.recheck_on_status = False
    assert src.recheck(_run("RUNNING"), "FINISHED", READ) is False


@pytest.mark.parametrize(
    "text",
    [
        # what the previous version stored: no `seen`, no `resumed`
        '{"kind": "order", "ts": 1000, "step": 30, "value": 3.0, "max_step": 30, "points": 3, "mark": [1000, 30, 3.0]}',
        '{"kind": "order", "ts": 1000, "step": 30, "value": 3.0, "max_step": 30, "points": 3, "mark": null}',
    ],
)
def test_cursors_stored_before_counts_load_and_keep_their_place(text, tmp_path):
    cur = loads(text)
    assert isinstance(cur, OrderCursor) and cur.seen is None and cur.resumed is False
    assert (cur.last, cur.max_step, cur.points) == ((1_000, 30, 3.0), 30, 3)
    st = State(tmp_path / "state.sqlite", "sqlite:///x.db")  # and through the state, as stored there
    try:
        st.db.execute(
            "INSERT INTO metrics (source, run_id, key, cursor, points) VALUES (?, 'r', 'loss', ?, 3)", (st.source, text)
        )
        assert st.cursors("r") == {"loss": cur}
    finally:
        st.close()


def test_new_cursor_fields_round_trip_and_move_along():
    cur = OrderCursor(ts=1, step=2, value=3.0, max_step=2, points=3, mark=(1, 2, 3.0), seen=3, resumed=True)
    assert loads(dumps(cur)) == cur
    moved = cur.after([(5, 1, 0.0)])  # reading more keeps what the listing said and the resume
    assert (moved.seen, moved.resumed, moved.points, moved.last, moved.max_step) == (3, True, 4, (5, 1, 0.0), 2)
