"""Tailing one metric file of a file store: `timestamp value [step [dataset_name dataset_digest]]`
per line, read from a byte offset up to the last complete line, in bounded chunks."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from ..errors import RunUnreadable
from .cursors import FileCursor
from .records import CHUNK_POINTS, MetricChunk

log = logging.getLogger(__name__)

_READ_BYTES = 1 << 20


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


def read_metric_file(path: Path, key: str, start: FileCursor) -> Iterator[tuple[MetricChunk, FileCursor]]:
    """Chunks of the points after `start`, each with the cursor after it (the last one also
    when nothing is new). Malformed lines are skipped and counted in the cursor; the bytes
    after the last newline are a line MLflow is still writing: left for later. The cursor's
    mark is the file size seen here."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise RunUnreadable(f"metric {key!r}: {e.strerror}") from None
    with f:
        mark = os.fstat(f.fileno()).st_size
        cur = replace(start, mark=mark)
        if mark < cur.offset:  # truncated or replaced: start again, writes are idempotent
            log.warning("metric file %s shrank; reading it again", path)
            cur = FileCursor(mark=mark)
        f.seek(cur.offset)
        chunk, names = MetricChunk(key, [], [], []), []
        tail = b""
        pos, points, bad, first_bad = cur.offset, cur.points, cur.bad, cur.first_bad
        while True:
            block = f.read(_READ_BYTES)
            if not block:
                break
            data = tail + block
            cut = data.rfind(b"\n")
            if cut < 0:
                tail = data
                continue
            tail = data[cut + 1 :]
            for line in data[:cut].split(b"\n"):
                pos += len(line) + 1
                if not line.strip():
                    continue
                try:
                    ts, value, step, ds = parse_metric_line(line)
                except ValueError:
                    bad += 1
                    first_bad = first_bad or line[:60].decode("utf-8", "replace")
                    continue
                chunk.timestamps.append(ts)
                chunk.values.append(value)
                chunk.steps.append(step)
                names.append(ds)
                points += 1
                if len(chunk) >= CHUNK_POINTS:
                    chunk.dataset_names = names if any(names) else None
                    yield chunk, FileCursor(pos, points, mark, 0, bad, first_bad)
                    chunk, names = MetricChunk(key, [], [], []), []
        chunk.dataset_names = names if any(names) else None
        yield chunk, FileCursor(pos, points, mark, len(tail), bad, first_bad)
