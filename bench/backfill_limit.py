#!/usr/bin/env python
"""The floor of a backfill: the same points parsed and put into RocksDB, with no Aim bookkeeping.

ONE timed pass, printed as JSON (bench/backfill.py runs it as a child, like the tools): every
point of the store read (a file store's metric files parsed a block at a time, as the syncer
parses them; a SQL store's `metrics` table in one query), encoded as Aim encodes a point (a
blake2b step key per point, four columns of 9-byte values) and written with numpy-built RocksDB
write batches into ONE RocksDB database -- no run chunks, no sequence metadata, no structured DB,
no index, no cursors. What a backfill does beyond this is Aim's and the syncer's bookkeeping, so
`our time / this time` is the distance to the floor.

    .venv/bin/python bench/backfill_limit.py --store bench/out/store --db /tmp/limit-db
    .venv/bin/python bench/backfill_limit.py --store sqlite:///bench/out/store.db --db /tmp/limit-db

Imports only numpy, aimrocks and `syncer.sources.file_metrics` (no MLflow, no Aim SDK).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import sys
import time
from pathlib import Path

import aimrocks
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from syncer.sources.file_metrics import parse_lines, parse_metric_line  # noqa: E402

SALT = b"aim-limit"  # the hash's cost is what counts: Aim salts blake2b the same way
SENTINEL = b"\xfe"
_blake2b = hashlib.blake2b


def step_keys(steps: np.ndarray) -> np.ndarray:
    """One blake2b per step, as Aim keys a point: (n, 10) uint8."""
    raw = steps.astype("<i8").tobytes()
    keys = b"".join(
        SENTINEL + _blake2b(raw[i : i + 8], digest_size=8, salt=SALT).digest() + SENTINEL for i in range(0, len(raw), 8)
    )
    return np.frombuffer(keys, dtype=np.uint8).reshape(len(steps), 10)


def put_series(db: aimrocks.DB, prefix: bytes, steps: np.ndarray, values: np.ndarray, ts_ms: np.ndarray) -> int:
    """One write batch for the four columns of a series' points (RocksDB's write-batch format)."""
    n = len(steps)
    if not n:
        return 0
    keys = step_keys(steps)
    cols = {
        b"val": np.concatenate([np.full((n, 1), 3, np.uint8), values.astype("<f8").view(np.uint8).reshape(n, 8)], 1),
        b"step": np.concatenate([np.full((n, 1), 2, np.uint8), steps.astype("<i8").view(np.uint8).reshape(n, 8)], 1),
        b"epoch": np.zeros((n, 1), np.uint8),
        b"time": np.concatenate(
            [np.full((n, 1), 3, np.uint8), (ts_ms / 1000.0).astype("<f8").view(np.uint8).reshape(n, 8)], 1
        ),
    }
    parts = []
    for name, vals in cols.items():
        head = prefix + name + SENTINEL
        klen = len(head) + 10
        assert klen < 128
        rec = np.empty((n, 2 + klen + 1 + vals.shape[1]), np.uint8)
        rec[:, 0] = 1  # kTypeValue
        rec[:, 1] = klen
        rec[:, 2 : 2 + len(head)] = np.frombuffer(head, np.uint8)
        rec[:, 2 + len(head) : 2 + klen] = keys
        rec[:, 2 + klen] = vals.shape[1]
        rec[:, 3 + klen :] = vals
        parts.append(rec.tobytes())
    db.write(aimrocks.WriteBatch((0).to_bytes(8, "little") + (4 * n).to_bytes(4, "little") + b"".join(parts)))
    return n


def parse_file(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        data = f.read()
    data = data[: data.rfind(b"\n") + 1]
    bulk = parse_lines(data)
    if bulk is not None:
        return bulk[2], bulk[1], bulk[0]
    rows = []
    for line in data.split(b"\n"):
        if line.strip():
            try:
                rows.append(parse_metric_line(line)[:3])
            except ValueError:
                continue
    ts, vals, steps = (list(c) for c in zip(*rows)) if rows else ([], [], [])
    return np.array(steps, np.int64), np.array(vals, np.float64), np.array(ts, np.int64)


def file_store(root: Path, db: aimrocks.DB) -> int:
    points = 0
    for exp in sorted(os.scandir(root), key=lambda e: e.name):
        if not exp.is_dir() or exp.name.startswith("."):
            continue
        for run in sorted(os.scandir(exp.path), key=lambda e: e.name):
            metrics = os.path.join(run.path, "metrics")
            if not os.path.isdir(metrics):
                continue
            for dirpath, _dirs, files in os.walk(metrics):
                for name in sorted(files):
                    key = os.path.relpath(os.path.join(dirpath, name), metrics)
                    steps, vals, ts = parse_file(os.path.join(dirpath, name))
                    points += put_series(db, f"{run.name}/{key}/".encode(), steps, vals, ts)
    return points


def sql_store(path: str, db: aimrocks.DB) -> int:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    rows = con.execute("SELECT run_uuid, key, step, value, timestamp FROM metrics ORDER BY run_uuid, key")
    points = 0
    cur: tuple[str, str] | None = None
    steps: list[int] = []
    vals: list[float] = []
    ts: list[int] = []
    for run, key, step, value, t in rows:
        if (run, key) != cur:
            if cur is not None:
                points += put_series(db, f"{cur[0]}/{cur[1]}/".encode(), np.array(steps), np.array(vals), np.array(ts))
            cur, steps, vals, ts = (run, key), [], [], []
        steps.append(step)
        vals.append(value)
        ts.append(t)
    if cur is not None:
        points += put_series(db, f"{cur[0]}/{cur[1]}/".encode(), np.array(steps), np.array(vals), np.array(ts))
    con.close()
    return points


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", required=True, help="a file store's folder or sqlite:///PATH")
    ap.add_argument("--db", required=True, help="the RocksDB folder to write (must not exist)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    db = aimrocks.DB(args.db, aimrocks.Options(create_if_missing=True, error_if_exists=True), read_only=False)
    if args.store.startswith("sqlite:///"):
        points = sql_store(args.store[len("sqlite:///") :], db)
    else:
        points = file_store(Path(args.store), db)
    db.flush()
    db.flush_wal(True)
    del db
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": round(seconds, 3), "points": points, "points_per_s": round(points / seconds, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
