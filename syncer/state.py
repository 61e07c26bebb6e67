"""Cursors, in sqlite: MLflow run -> Aim run hash, per metric how far, per artifact what was
copied. Written only after the sink has the data, so a crash at any point re-sends (and the
sink's idempotent writes absorb) at most the last uncommitted piece."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    source TEXT NOT NULL,
    run_id TEXT NOT NULL,
    aim_hash TEXT NOT NULL,
    experiment TEXT,
    fingerprint TEXT,
    status TEXT,
    error TEXT,
    updated_at REAL,
    PRIMARY KEY (source, run_id)
);
CREATE TABLE IF NOT EXISTS metrics (
    source TEXT NOT NULL,
    run_id TEXT NOT NULL,
    key TEXT NOT NULL,
    cursor TEXT NOT NULL,
    points INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (source, run_id, key)
);
CREATE TABLE IF NOT EXISTS artifacts (
    source TEXT NOT NULL,
    run_id TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER,
    kind TEXT,
    PRIMARY KEY (source, run_id, path)
);
CREATE TABLE IF NOT EXISTS rounds (
    source TEXT PRIMARY KEY,
    finished_at REAL,
    ok INTEGER,
    summary TEXT
);
"""


@dataclass
class RunState:
    aim_hash: str
    fingerprint: str | None
    status: str | None
    error: str | None


class State:
    def __init__(self, path: str | Path, source: str, experiments: tuple[str, ...] = ()):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.source = source
        # syncers that split one server by experiment share its cursors but not their rounds
        self.round_key = source + (f" [experiments: {' '.join(experiments)}]" if experiments else "")
        # several syncers (one per experiment set) may share one repo and one state file
        # rounds never overlap, but the daemon's rounds run on a scheduler thread
        self.db = sqlite3.connect(str(self.path), timeout=60, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # -- reads --------------------------------------------------------------------------------
    def run(self, run_id: str) -> RunState | None:
        row = self.db.execute(
            "SELECT aim_hash, fingerprint, status, error FROM runs WHERE source=? AND run_id=?",
            (self.source, run_id),
        ).fetchone()
        return RunState(*row) if row else None

    def cursors(self, run_id: str) -> dict[str, dict]:
        rows = self.db.execute(
            "SELECT key, cursor FROM metrics WHERE source=? AND run_id=?", (self.source, run_id)
        )
        return {k: json.loads(c) for k, c in rows}

    def artifacts(self, run_id: str) -> dict[str, int | None]:
        rows = self.db.execute(
            "SELECT path, size FROM artifacts WHERE source=? AND run_id=?", (self.source, run_id)
        )
        return dict(rows)

    # -- writes (each a transaction of its own) -----------------------------------------------
    def save_run(self, run_id: str, aim_hash: str, experiment: str, fingerprint: str | None,
                 status: str, error: str | None = None) -> None:
        self.db.execute(
            """INSERT INTO runs (source, run_id, aim_hash, experiment, fingerprint, status, error, updated_at)
               VALUES (?,?,?,?,?,?,?,?)
               ON CONFLICT(source, run_id) DO UPDATE SET aim_hash=excluded.aim_hash,
                 experiment=excluded.experiment, fingerprint=excluded.fingerprint,
                 status=excluded.status, error=excluded.error, updated_at=excluded.updated_at""",
            (self.source, run_id, aim_hash, experiment, fingerprint, status, error, time.time()),
        )

    def save_error(self, run_id: str, aim_hash: str, experiment: str, error: str) -> None:
        self.db.execute(
            """INSERT INTO runs (source, run_id, aim_hash, experiment, error, updated_at) VALUES (?,?,?,?,?,?)
               ON CONFLICT(source, run_id) DO UPDATE SET error=excluded.error, updated_at=excluded.updated_at""",
            (self.source, run_id, aim_hash, experiment, error, time.time()),
        )

    def save_cursors(self, run_id: str, cursors: list[tuple[str, dict, int]]) -> None:
        """(key, cursor, points written) for one run, in one transaction."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                """INSERT INTO metrics (source, run_id, key, cursor, points) VALUES (?,?,?,?,?)
                   ON CONFLICT(source, run_id, key) DO UPDATE SET cursor=excluded.cursor,
                     points=metrics.points + excluded.points""",
                [(self.source, run_id, key, json.dumps(cursor), n) for key, cursor, n in cursors],
            )

    def save_artifact(self, run_id: str, path: str, size: int | None, kind: str | None) -> None:
        self.db.execute(
            """INSERT INTO artifacts (source, run_id, path, size, kind) VALUES (?,?,?,?,?)
               ON CONFLICT(source, run_id, path) DO UPDATE SET size=excluded.size, kind=excluded.kind""",
            (self.source, run_id, path, size, kind),
        )

    def save_round(self, ok: bool, summary: dict[str, Any]) -> None:
        self.db.execute(
            """INSERT INTO rounds (source, finished_at, ok, summary) VALUES (?,?,?,?)
               ON CONFLICT(source) DO UPDATE SET finished_at=excluded.finished_at, ok=excluded.ok,
                 summary=excluded.summary""",
            (self.round_key, time.time(), int(ok), json.dumps(summary)),
        )

    # -- status report ------------------------------------------------------------------------
    def report(self) -> Iterator[dict[str, Any]]:
        """Per source and experiment: runs, points, runs in error."""
        rows = self.db.execute(
            """SELECT r.source, r.experiment, COUNT(*), COALESCE(SUM(m.points), 0),
                      GROUP_CONCAT(CASE WHEN r.error IS NOT NULL THEN r.run_id || ': ' || r.error END, '\n')
               FROM runs r LEFT JOIN (SELECT source, run_id, SUM(points) AS points FROM metrics
                                      GROUP BY source, run_id) m USING (source, run_id)
               GROUP BY r.source, r.experiment ORDER BY r.source, r.experiment"""
        )
        for source, exp, n, points, errors in rows:
            yield {
                "source": source,
                "experiment": exp,
                "runs": n,
                "points": points,
                "errors": errors.split("\n") if errors else [],
            }

    def last_rounds(self) -> dict[str, tuple[float, bool, dict]]:
        return {s: (t, bool(ok), json.loads(summ or "{}")) for s, t, ok, summ in
                self.db.execute("SELECT source, finished_at, ok, summary FROM rounds")}
