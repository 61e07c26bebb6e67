"""The bulk paths of a backfill give exactly what the one-at-a-time paths give: metric lines parsed
a block at a time, the later point per step chosen with numpy, a RocksDB write batch built with
numpy, a run indexed from its chunk's items in one batch; and the default number of processes."""

from __future__ import annotations

import math
import random
import struct

import aimrocks
import numpy as np
import pytest
from syncer.aim import encoding as enc
from syncer.sink import winner_index, winners
from syncer.sources.cursors import FileCursor
from syncer.sources.file_meta import read_whole
from syncer.sources.file_metrics import BULK_MIN_LINES, parse_lines, parse_metric_line, read_metric_file


def _one_by_one(data: bytes) -> list[tuple[int, float, int]]:
    out = []
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            ts, value, step, _ = parse_metric_line(line)
        except ValueError:
            continue
        out.append((ts, value, step))
    return out


def _bits(points):
    return [(ts, struct.pack("<d", v), s) for ts, v, s in points]


def _lines(n: int, rng: random.Random) -> list[bytes]:
    vals = [rng.random(), -0.0, math.nan, math.inf, -math.inf, 5e-324, 1.7976931348623157e308, 1e-300]
    return [
        b"%d %r %d" % (1_700_000_000_000 + i, vals[i % len(vals)] if i % 3 else rng.gauss(0, 1e6), i - 5)
        for i in range(n)
    ]


@pytest.mark.parametrize(
    "odd",
    [
        None,
        b"",  # a blank line
        b"1 2",  # MLflow 1.x: no step
        b"1 0.5 2 ds digest",  # MLflow 3: a dataset
        b"1  0.5 2",  # two spaces
        b"1\t0.5\t2",  # tabs
        b"1 0.5 2\r",  # a carriage return
        b" 1 0.5 2",  # a leading space
        b"1 0.5 2 ",  # a trailing space
        b"1 x 2",  # not a number
        b"1 0.5 9e2",  # a step float() reads and int() does not
        b"1 1_000.5 2",  # what float() reads
        b"1 0.5 99999999999999999999999",  # beyond int64
        b"1 2",  # then "3 4 5 6": two and four fields that add up to two lines of three
    ],
)
def test_a_block_parses_as_its_lines_do_one_by_one(odd):
    rng = random.Random(7)
    lines = _lines(BULK_MIN_LINES + 50, rng)
    if odd is not None:
        lines.insert(17, odd)
        if odd == b"1 2":
            lines.insert(18, b"3 4 5 6")
    data = b"\n".join(lines) + b"\n"
    bulk = parse_lines(data)
    if odd is not None:
        assert bulk is None or len(bulk[0]) == len(_one_by_one(data))
    if bulk is not None:
        ts, values, steps, ends = bulk
        assert _bits(zip(ts.tolist(), values.tolist(), steps.tolist())) == _bits(_one_by_one(data))
        assert ends[-1] == len(data)


@pytest.mark.parametrize("odd", [None, b"", b"1 2", b"1 0.5 2 ds digest", b"1\t0.5\t2", b"1 x 2", b"1 0.5 9e2"])
def test_a_short_file_reads_as_its_lines_do_one_by_one(tmp_path, odd):
    """Fewer lines than the bulk path takes: plain lines a column at a time, anything else line by line."""
    lines = _lines(20, random.Random(5))
    if odd is not None:
        lines.insert(7, odd)
    data = b"\n".join(lines) + b"\n"
    (tmp_path / "acc").write_bytes(data)
    chunks = list(read_metric_file(tmp_path / "acc", "acc", FileCursor()))
    got = [(ts, v, s) for c, _ in chunks for ts, v, s in zip(c.timestamps, c.values, c.steps)]
    assert _bits(got) == _bits(_one_by_one(data))
    assert chunks[-1][1].offset == len(data) and chunks[-1][1].points == len(got)
    assert chunks[-1][1].bad == (odd in (b"1 x 2", b"1 0.5 9e2"))
    names = [n for c, _ in chunks for n in (c.dataset_names or [None] * len(c))]
    assert names == [("ds" if odd == b"1 0.5 2 ds digest" and i == 7 else None) for i in range(len(got))]


def test_a_file_reads_the_same_in_bulk_and_line_by_line(tmp_path):
    rng = random.Random(3)
    lines = _lines(25_000, rng)  # more than a chunk and a read block's worth
    lines[12_345] = b"garbage"
    data = b"\n".join(lines) + b"\n1 0.5"  # and a line being written
    path = tmp_path / "loss"
    path.write_bytes(data)
    chunks = list(read_metric_file(path, "loss", FileCursor()))
    got = [(ts, v, s) for c, _ in chunks for ts, v, s in zip(c.timestamps, c.values, c.steps)]
    assert _bits(got) == _bits(_one_by_one(data[: data.rfind(b"\n")]))
    last = chunks[-1][1]
    assert last.offset == data.rfind(b"\n") + 1 and last.tail == len(b"1 0.5") and last.bad == 1
    assert last.points == len(got) and last.first_bad == "garbage"
    # a cursor taken mid-file resumes where it says
    mid = chunks[1][1]
    rest = list(read_metric_file(path, "loss", mid))
    again = [(ts, v, s) for c, _ in chunks[:2] for ts, v, s in zip(c.timestamps, c.values, c.steps)]
    again += [(ts, v, s) for c, _ in rest for ts, v, s in zip(c.timestamps, c.values, c.steps)]
    assert _bits(again) == _bits(got)


@pytest.mark.parametrize("size", [100, 5000, 1 << 20, 1_500_000])
def test_a_metric_file_is_read_to_its_end_without_a_read_past_it(tmp_path, monkeypatch, size):
    """A metric file reads in as many `pread`s as its size takes, none more to see its end (a
    short read is the end); what it gives is what the lines give."""
    import syncer.sources.file_metrics as fm

    lines, n = [], 0
    while n < size:
        lines.append(f"{1_700_000_000_000 + len(lines)} 0.5 {len(lines)}".encode())
        n += len(lines[-1]) + 1
    data = b"\n".join(lines) + b"\n"
    (tmp_path / "m").write_bytes(data)
    reads = []
    real = fm.os.pread
    monkeypatch.setattr(fm.os, "pread", lambda fd, k, at: reads.append(k) or real(fd, k, at))
    chunks = list(read_metric_file(tmp_path / "m", "m", FileCursor()))
    got = [(ts, v, s) for c, _ in chunks for ts, v, s in zip(c.timestamps, c.values, c.steps)]
    assert _bits(got) == _bits(_one_by_one(data))
    assert len(reads) == len(data) // fm._READ_BYTES + 1
    assert chunks[-1][1].offset == len(data) and chunks[-1][1].tail == 0


def test_a_metric_file_read_in_short_answers_is_read_whole(tmp_path, monkeypatch):
    """A filesystem that answers part of each read (FUSE, some network mounts): the file is
    still read to the size it had, every point of it."""
    import syncer.sources.file_metrics as fm

    data = b"".join(f"{1_700_000_000_000 + i} 0.25 {i}\n".encode() for i in range(2_000))
    (tmp_path / "m").write_bytes(data)
    real = fm.os.pread
    monkeypatch.setattr(fm.os, "pread", lambda fd, k, at: real(fd, min(k, 1000), at))
    chunks = list(read_metric_file(tmp_path / "m", "m", FileCursor()))
    got = [(ts, v, s) for c, _ in chunks for ts, v, s in zip(c.timestamps, c.values, c.steps)]
    assert _bits(got) == _bits(_one_by_one(data))
    assert chunks[-1][1].offset == len(data) and chunks[-1][1].points == 2_000


@pytest.mark.parametrize("size", [0, 1, 4095, 65_535, 65_536, 65_537, 1 << 20, 3_000_001])
def test_a_whole_file_reads_as_open_read_reads_it(tmp_path, size):
    """`read_whole` (os.open and os.read: the param and tag files) gives what open().read() gives,
    however the file's size falls against its reads; a folder or a missing file raise as open() does."""
    import syncer.sources.file_meta as fmeta

    data = random.Random(size).randbytes(size)
    (tmp_path / "f").write_bytes(data)
    reads = []
    real = fmeta.os.read
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fmeta.os, "read", lambda fd, k: reads.append(k) or real(fd, k))
        assert read_whole(str(tmp_path / "f")) == data
    assert len(reads) == -(-size // 65_536) + 1  # to an empty read, 64 kB at a time
    assert max(reads) == 65_536  # no 1 MB buffer (for a 6-byte param file)
    with pytest.raises(IsADirectoryError):
        read_whole(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        read_whole(str(tmp_path / "missing"))


def test_winner_index_keeps_what_winners_keeps():
    rng = random.Random(5)
    for _ in range(300):
        n = rng.randint(0, 40)
        steps = [rng.randint(0, 8) for _ in range(n)]
        ts = [rng.randint(0, 5) for _ in range(n)]
        vals = [float(i) for i in range(n)]
        want = winners(steps, vals, ts)
        idx = winner_index(np.array(steps, dtype=np.int64), np.array(ts, dtype=np.int64))
        got = (steps, vals, ts) if idx is None else tuple([col[i] for i in idx] for col in (steps, vals, ts))
        assert got == want


def test_a_numpy_built_write_batch_is_byte_for_byte_the_put_built_one():
    steps = [3, 1, 2, 1, 10**12, -5, 2**53]
    vals = np.array([0.5, np.nan, -np.inf, 2.0, 1e-300, -0.0, 1.0])
    times = np.arange(len(steps), dtype=np.float64) + 1.79e9
    path = ("seqs", "v2", "chunks", "h" * 24, 12345, "loss" * 40)  # a long key: a two-byte length
    cols = [enc.column_prefix(path, c) for c in ("val", "step", "epoch", "time")]
    none = np.frombuffer(enc.NONE_ENC, dtype=np.uint8).reshape(1, -1)
    keys = enc.step_key_array(steps)
    rep = enc.batch_rep(
        [(c, enc.ARRAY_FLAG) for c in cols],
        [
            (cols[0], keys, enc.encode_column_array(enc.FLOAT_TAG, vals)),
            (cols[1], keys, enc.encode_column_array(enc.INT_TAG, np.asarray(steps, dtype=np.int64))),
            (cols[2], keys, np.broadcast_to(none, (len(steps), none.shape[1]))),
            (cols[3], keys, enc.encode_column_array(enc.FLOAT_TAG, times)),
        ],
    )
    b = aimrocks.WriteBatch()
    for c in cols:
        b.put(c, enc.ARRAY_FLAG)
    encoded = [
        enc.encode_column(enc.FLOAT_TAG, vals),
        enc.encode_column(enc.INT_TAG, np.asarray(steps, dtype=np.int64)),
        [enc.NONE_ENC] * len(steps),
        enc.encode_column(enc.FLOAT_TAG, times),
    ]
    for c, col in zip(cols, encoded):
        for k, v in zip(enc.step_keys(steps), col):
            b.put(c + k, v)
    assert rep == b.data() and aimrocks.WriteBatch(rep).count() == b.count()


def _works(runs: int, points_each: int) -> list:
    from syncer.plan import RunWork
    from syncer.sources import Experiment, KeyMark, RunRecord

    exp = Experiment("1", "e")
    out = []
    for i in range(runs):
        rec = RunRecord(
            run_id=f"r{i}",
            experiment_id="1",
            name=f"r{i}",
            status="FINISHED",
            start_time=0,
            end_time=1,
            lifecycle_stage="active",
            user=None,
            artifact_uri=None,
            params={},
            tags={},
            datasets=[],
            metric_marks={"loss": KeyMark(size=points_each * 25)},
        )
        out.append(RunWork(exp, rec, meta_changed=True, changed_keys=["loss"]))
    return out


@pytest.mark.parametrize(
    ("runs", "points_each", "cpus", "want"),
    [
        (40, 4_900, 2, 1),  # bench/out/store: 40 runs, 196,000 points: a helper would not pay
        (1_000, 650, 2, 2),  # 1,000 short runs: one helper on 2 CPUs
        (1_000, 650, 16, 4),  # ... at most 4 processes
        (5, 10_000_000, 8, 1),  # a few runs: never helpers (the rule counts work, the pool runs)
        (1_000, 650, 1, 1),  # one CPU: one process
    ],
)
def test_default_workers_rule(runs, points_each, cpus, want):
    from syncer.workers import WorkerPool, default_workers

    works = _works(runs, points_each)
    got = default_workers(works, cpus=cpus)
    if runs < WorkerPool(None, None, None).min_runs:  # type: ignore[arg-type]
        got = 1
    assert got == want
