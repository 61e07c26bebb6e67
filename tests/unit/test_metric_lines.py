"""A file store's metric files: one line per point, tailed from a byte offset up to the last
complete line; malformed lines skipped and counted; a file that shrank is read again."""

from __future__ import annotations

import pytest
from syncer.errors import RunUnreadable
from syncer.sources.cursors import FileCursor
from syncer.sources.file_metrics import parse_metric_line, read_metric_file


@pytest.mark.parametrize(
    ("line", "want"),
    [
        (b"1700000000000 0.5 3", (1700000000000, 0.5, 3, None)),
        (b"1700000000000 0.5", (1700000000000, 0.5, 0, None)),  # MLflow 1.x: no step
        (b"1 nan 2", None),  # checked below: NaN is kept
        (b"1 -inf 2", (1, float("-inf"), 2, None)),
        (b"1 0.5 2 xnli-de d1", (1, 0.5, 2, "xnli-de")),  # MLflow 3: a dataset name and digest
    ],
)
def test_metric_lines_parse(line, want):
    got = parse_metric_line(line)
    if want is None:
        assert got[0] == 1 and got[1] != got[1] and got[2] == 2
    else:
        assert got == want


@pytest.mark.parametrize("line", [b"", b"1", b"1 2 3 4", b"x 0.5 1", b"1 y 1", b"1 0.5 z", b"1 2 3 4 5 6"])
def test_malformed_metric_lines_are_refused(line):
    with pytest.raises(ValueError):
        parse_metric_line(line)


def _read(path, cursor=None):
    chunks = list(read_metric_file(path, "loss", cursor or FileCursor()))
    points = [(ts, v, s) for c, _ in chunks for ts, v, s in zip(c.timestamps, c.values, c.steps)]
    return points, chunks[-1][1]


def test_a_metric_file_is_tailed_from_where_the_last_read_stopped(tmp_path):
    path = tmp_path / "loss"
    path.write_bytes(b"10 0.5 0\n20 0.4 1\n30 0.3")  # the last line is still being written
    points, cur = _read(path)
    assert points == [(10, 0.5, 0), (20, 0.4, 1)]
    assert cur.offset == len(b"10 0.5 0\n20 0.4 1\n") and cur.tail == len(b"30 0.3") and cur.points == 2
    assert cur.mark == path.stat().st_size
    with path.open("ab") as f:
        f.write(b" 2\ngarbage line\n40 0.2 3\n")
    points, cur = _read(path, cur)
    assert points == [(30, 0.3, 2), (40, 0.2, 3)]  # the completed line, then the next; none again
    assert cur.points == 4 and cur.bad == 1 and cur.first_bad == "garbage line" and cur.tail == 0
    points, again = _read(path, cur)
    assert points == [] and again == cur


def test_a_metric_file_that_shrank_is_read_again_from_the_start(tmp_path):
    path = tmp_path / "loss"
    path.write_bytes(b"10 0.5 0\n20 0.4 1\n")
    _, cur = _read(path)
    path.write_bytes(b"10 0.5 0\n")
    points, cur = _read(path, cur)
    assert points == [(10, 0.5, 0)] and cur.points == 1


def test_a_missing_metric_file_is_this_runs_problem(tmp_path):
    with pytest.raises(RunUnreadable, match="loss"):
        _read(tmp_path / "gone")
