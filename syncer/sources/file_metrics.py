"""Tailing one metric file of a file store: `timestamp value [step [dataset_name dataset_digest]]`
per line, read from a byte offset up to the last complete line, in bounded chunks."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from ..errors import RunUnreadable
from .cursors import FileCursor
from .records import CHUNK_POINTS, MetricChunk

log = logging.getLogger(__name__)

_READ_BYTES = 1 << 20
# fewer lines than this are read one by one: numpy's fixed costs outweigh the lines' own
BULK_MIN_LINES = 200


def parse_metric_line(line: bytes) -> tuple[int, float, int, str | None]:
    """One line of an MLflow metric file (MLflow 1.x files may lack the step). Raises ValueError
    on anything else."""
    parts = line.split()
    n = len(parts)
    if n not in (2, 3, 5):
        raise ValueError(f"{n} fields")
    ts = int(parts[0])
    value = float(parts[1])
    step = int(parts[2]) if n >= 3 else 0
    ds = parts[3].decode("utf-8", "replace") if n == 5 else None
    return ts, value, step, ds


def parse_lines(data: bytes) -> tuple[Any, Any, Any, Any] | None:
    """Complete lines (``data`` ends with a newline), each exactly ``timestamp value step`` (what
    MLflow writes), parsed at once: numpy arrays of timestamps, values, steps and each line's end
    offset; None when a line is anything else (blank, two or five fields, other whitespace, not a
    number, a number beyond int64), or there are few lines (`BULK_MIN_LINES`): then the lines are
    parsed one by one. The numbers are read by
    ``int`` and ``float``, as :func:`parse_metric_line` reads them."""
    import numpy as np

    if data.count(b"\n") < BULK_MIN_LINES:
        return None
    b = np.frombuffer(data, dtype=np.uint8)
    nl = np.flatnonzero(b == 10)
    sp = np.flatnonzero(b == 32)
    n = len(nl)
    if n == 0 or len(sp) != 2 * n or nl[-1] != len(data) - 1:
        return None
    starts = np.empty(n, dtype=np.int64)
    starts[0] = 0
    starts[1:] = nl[:-1] + 1
    first, second = sp[0::2], sp[1::2]
    # every line: a token, one space, a token, one space, a token (the 2n spaces, two per line)
    if not (np.all(starts < first) and np.all(first + 1 < second) and np.all(second + 1 < nl)):
        return None
    tokens = data.split()
    if len(tokens) != 3 * n:  # other whitespace inside a line
        return None
    try:
        ts = np.array(list(map(int, tokens[0::3])), dtype=np.int64)
        values = np.array(list(map(float, tokens[1::3])), dtype=np.float64)
        steps = np.array(list(map(int, tokens[2::3])), dtype=np.int64)
    except (ValueError, OverflowError):
        return None
    return ts, values, steps, nl + 1


def read_metric_file(path: Path, key: str, start: FileCursor) -> Iterator[tuple[MetricChunk, FileCursor]]:
    """Chunks of the points after `start`, each with the cursor after it (the last one also
    when nothing is new). Malformed lines are skipped and counted in the cursor; the bytes
    after the last newline are a line MLflow is still writing: left for later. The cursor's
    mark is the file size seen here. Lines are parsed a block at a time (`parse_lines`: numpy
    columns), one by one where a block holds anything but plain three-field lines."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise RunUnreadable(f"metric {key!r}: {e.strerror}") from None
    try:  # os.pread: no Python file object (its open alone asks fstat, isatty and lseek)
        mark = os.fstat(fd).st_size
        cur = start  # (its mark: the new one, `mark`, goes into every cursor made from here)
        if mark < cur.offset:  # truncated or replaced: start again, writes are idempotent
            log.warning("metric file %s shrank; reading it again", path)
            cur = FileCursor(mark=mark)
        pos = cur.offset
        reader = _Lines(key, cur, mark)
        tail = b""
        while True:
            # what the file holds, at most a block (a 1 MB read buffer for a 1 kB file costs more
            # than reading it)
            want = min(_READ_BYTES, max(mark - pos, 0) + 4096)
            block = os.pread(fd, want, pos)
            if not block:
                break
            pos += len(block)
            # a short read at or past the size fstat gave: the end (no read to see it); short of
            # that size (a filesystem that answers part of a read) the loop reads on
            end = len(block) < want and pos >= mark
            data = tail + block
            cut = data.rfind(b"\n")
            if cut < 0:
                tail = data
            else:
                tail = data[cut + 1 :]
                yield from reader.block(data[: cut + 1])
            if end:
                break
        yield reader.last(len(tail))
    finally:
        os.close(fd)


class _Lines:
    """The chunks of one read of a metric file, block after block: numpy columns where a block
    parses in bulk, lists where its lines are read one by one."""

    def __init__(self, key: str, cur: FileCursor, mark: int):
        self.key, self.mark = key, mark
        self.pos, self.points, self.bad, self.first_bad = cur.offset, cur.points, cur.bad, cur.first_bad
        self.chunk = MetricChunk(key, [], [], [])  # lines read one by one, not yielded yet
        self.names: list[str | None] = []

    def block(self, data: bytes) -> Iterator[tuple[MetricChunk, FileCursor]]:
        bulk = parse_lines(data)
        if bulk is None:
            yield from self._one_by_one(data)
            return
        if len(self.chunk):  # a chunk holds one kind of column: the lists go first
            yield self._flush()
        ts, values, steps, ends = bulk
        base = self.pos
        for i in range(0, len(ts), CHUNK_POINTS):
            j = min(i + CHUNK_POINTS, len(ts))
            self.pos = base + int(ends[j - 1])
            self.points += j - i
            chunk = MetricChunk(self.key, steps[i:j], values[i:j], ts[i:j])
            yield chunk, FileCursor(self.pos, self.points, self.mark, 0, self.bad, self.first_bad)

    def _one_by_one(self, data: bytes) -> Iterator[tuple[MetricChunk, FileCursor]]:
        chunk = self.chunk
        rows = [line.split() for line in data[:-1].split(b"\n")]
        if len(chunk) + len(rows) < CHUNK_POINTS and all(len(r) == 3 for r in rows):
            try:  # plain `timestamp value step` lines (what MLflow writes): a column at a time
                col_ts = [int(r[0]) for r in rows]
                col_values = [float(r[1]) for r in rows]
                col_steps = [int(r[2]) for r in rows]
            except ValueError:
                pass  # a line that is not numbers: line by line, to count it
            else:
                cast(list[int], chunk.timestamps).extend(col_ts)
                cast(list[float], chunk.values).extend(col_values)
                cast(list[int], chunk.steps).extend(col_steps)
                self.names.extend([None] * len(rows))
                self.points += len(rows)
                self.pos += len(data)
                return
        for line in data[:-1].split(b"\n"):
            self.pos += len(line) + 1
            if not line.strip():
                continue
            try:
                ts, value, step, ds = parse_metric_line(line)
            except ValueError:
                self.bad += 1
                self.first_bad = self.first_bad or line[:60].decode("utf-8", "replace")
                continue
            cast(list[int], chunk.timestamps).append(ts)
            cast(list[float], chunk.values).append(value)
            cast(list[int], chunk.steps).append(step)
            self.names.append(ds)
            self.points += 1
            if len(chunk) >= CHUNK_POINTS:
                yield self._flush()
                chunk = self.chunk

    def _flush(self) -> tuple[MetricChunk, FileCursor]:
        chunk, names = self.chunk, self.names
        chunk.dataset_names = names if any(names) else None
        self.chunk, self.names = MetricChunk(self.key, [], [], []), []
        return chunk, FileCursor(self.pos, self.points, self.mark, 0, self.bad, self.first_bad)

    def last(self, tail: int) -> tuple[MetricChunk, FileCursor]:
        """The chunk of lines read one by one (maybe empty), with the cursor after everything read."""
        chunk, _ = self._flush()
        return chunk, FileCursor(self.pos, self.points, self.mark, tail, self.bad, self.first_bad)
