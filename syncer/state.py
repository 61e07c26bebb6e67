"""Cursors, in sqlite: MLflow run -> Aim run hash and what its metadata looked like, per metric
a typed cursor (`sources.cursors`), per artifact what was copied. Written only after the sink
has made the data durable, so a crash at any point re-sends (and the sink's idempotent writes
absorb) at most the last uncommitted piece. Bound to the Aim repo it describes: a state that
meets another repo (or a deleted and re-created one) starts over."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BadInput, RepoFull
from .sources.cursors import Cursor, FileCursor, dumps, loads

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4
# what a synced run's Aim metadata looks like; a state from an older layout sends every run's
# metadata again at its next round (2: the artifacts listing under `mlflow`, `__system_params`, notes)
AIM_LAYOUT = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS runs (
    source TEXT NOT NULL,
    run_id TEXT NOT NULL,
    aim_hash TEXT NOT NULL,
    experiment TEXT,
    fingerprint TEXT,
    status TEXT,
    error TEXT,
    updated_at REAL,
    name TEXT,
    artifacts_mark TEXT,
    artifacts_checked_at REAL,
    models_digest TEXT,
    PRIMARY KEY (source, run_id)
);
CREATE TABLE IF NOT EXISTS metrics (
    source TEXT NOT NULL,
    run_id TEXT NOT NULL,
    key TEXT NOT NULL,
    cursor TEXT NOT NULL,
    points INTEGER NOT NULL DEFAULT 0,
    aim TEXT,
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
_V1_RUN_COLUMNS = ("name TEXT", "artifacts_mark TEXT", "artifacts_checked_at REAL")
_V2_RUN_COLUMNS = ("models_digest TEXT",)  # what the run's MLflow 3 logged models looked like
_V3_METRIC_COLUMNS = ("aim TEXT",)  # the Aim name and context the key's points went to


@dataclass
class RunState:
    aim_hash: str
    fingerprint: str | None
    status: str | None
    error: str | None
    artifacts_mark: str | None = None
    artifacts_checked_at: float | None = None
    models_digest: str | None = None


def _damaged(path: Path, e: Exception) -> BadInput:
    return BadInput(
        f"the sync state {path} cannot be used ({e}); move it away or delete it and sync again: "
        "the next sync rebuilds it (writes are idempotent, so nothing is doubled)"
    )


class State:
    def __init__(self, path: str | Path, source: str, experiments: tuple[str, ...] = ()):
        self.path = Path(path)
        self.source = source
        # syncers that split one server by experiment share its cursors but not their rounds
        self.round_key = source + (f" [experiments: {' '.join(experiments)}]" if experiments else "")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BadInput(f"cannot create the folder of the sync state {self.path}: {e.strerror or e}") from None
        if self.path.is_dir():
            raise BadInput(f"the sync state {self.path} is a folder; --state names a file")
        try:
            # several syncers (one per experiment set) may share one repo and one state file;
            # rounds never overlap, but the daemon's rounds run on a scheduler thread
            self.db = sqlite3.connect(str(self.path), timeout=60, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as e:
            if getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:  # not damaged: no room
                raise RepoFull(f"the sync state {self.path} cannot be written: its filesystem is full") from None
            raise _damaged(self.path, e) from None

    @staticmethod
    def check(path: Path) -> None:
        """Raise BadInput when `path` cannot be a sync state (a folder, a damaged database, a
        place that cannot be written), without creating anything."""
        if path.is_dir():
            raise BadInput(f"the sync state {path} is a folder; --state names a file")
        if path.exists():
            try:
                with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
                    problem = con.execute("PRAGMA quick_check").fetchone()[0]
                    con.execute("SELECT count(*) FROM sqlite_master").fetchone()
                if problem != "ok":
                    raise sqlite3.DatabaseError(problem)
            except sqlite3.DatabaseError as e:
                raise _damaged(path, e) from None
            if not os.access(path, os.W_OK):
                raise BadInput(f"the sync state {path} is not writable")
            return
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise BadInput(f"the sync state {path} cannot be created: {parent} is not a writable folder")

    def close(self) -> None:
        self.db.close()

    def _migrate(self) -> None:
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "runs" in tables and "meta" not in tables:  # written by version 1
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                self._add_run_columns(_V1_RUN_COLUMNS)
                self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
                for src, run_id, key, cursor, points in list(self.db.execute("SELECT * FROM metrics")):
                    old = json.loads(cursor)
                    if "offset" in old:  # a file store's byte offset: kept, as a typed cursor
                        new = FileCursor(int(old["offset"]), int(points), int(old["offset"]))
                        self.db.execute(
                            "UPDATE metrics SET cursor=? WHERE source=? AND run_id=? AND key=?",
                            (dumps(new), src, run_id, key),
                        )
                    else:  # an MlflowClient timestamp cursor: read again once (idempotent), counted exactly
                        self.db.execute("DELETE FROM metrics WHERE source=? AND run_id=? AND key=?", (src, run_id, key))
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', '2')")  # and on to the next
        self.db.executescript(SCHEMA)
        self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        version = int(self._meta("schema") or SCHEMA_VERSION)
        if version > SCHEMA_VERSION:
            raise BadInput(
                f"the sync state {self.path} was written by a newer syncer (schema {version}); "
                "upgrade the syncer, or delete the state to rebuild it"
            )
        if version < SCHEMA_VERSION:  # columns added since: NULL until the run is synced again
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                self._add_run_columns(_V2_RUN_COLUMNS)
                self._add_run_columns(_V3_METRIC_COLUMNS, table="metrics")
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        if int(self._meta("aim_layout") or 1) < AIM_LAYOUT:  # runs synced before: metadata again, once
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.execute("UPDATE runs SET fingerprint = NULL")
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('aim_layout', ?)", (str(AIM_LAYOUT),))

    def _add_run_columns(self, columns: Iterable[str], table: str = "runs") -> None:
        """Add these columns ("name TYPE") to the table where missing (in a transaction)."""
        have = {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}
        for col in columns:
            if col.split()[0] not in have:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {col}")

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    # -- the Aim repo it describes ------------------------------------------------------------
    def bind(self, repo_id: str) -> bool:
        """Tie this state to the Aim repo with this id. A state that described another repo (a
        deleted one, or --state shared by mistake) is emptied: everything is sent again.
        Returns whether it was."""
        known = self._meta("repo_id")
        if known == repo_id:
            return False
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            reset = known is not None
            if reset:
                for table in ("runs", "metrics", "artifacts", "rounds"):
                    self.db.execute(f"DELETE FROM {table}")
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('repo_id', ?)", (repo_id,))
        if reset:
            log.info(
                "the sync state %s described another Aim repo (or one since deleted): sending everything again",
                self.path,
            )
        return reset

    # -- reads --------------------------------------------------------------------------------
    def run(self, run_id: str) -> RunState | None:
        row = self.db.execute(
            "SELECT aim_hash, fingerprint, status, error, artifacts_mark, artifacts_checked_at, models_digest "
            "FROM runs "
            "WHERE source=? AND run_id=?",
            (self.source, run_id),
        ).fetchone()
        return RunState(*row) if row else None

    def cursors(self, run_id: str) -> dict[str, Cursor]:
        rows = self.db.execute("SELECT key, cursor FROM metrics WHERE source=? AND run_id=?", (self.source, run_id))
        out = {}
        for key, text in rows:
            cur = loads(text)
            if cur is not None:
                out[key] = cur
        return out

    def key_names(self, run_id: str) -> dict[str, str]:
        """key -> the Aim name and context (as `save_cursors` was given them) its points went to."""
        rows = self.db.execute(
            "SELECT key, aim FROM metrics WHERE source=? AND run_id=? AND aim IS NOT NULL", (self.source, run_id)
        )
        return dict(rows)

    def artifacts(self, run_id: str) -> dict[str, int | None]:
        rows = self.db.execute("SELECT path, size FROM artifacts WHERE source=? AND run_id=?", (self.source, run_id))
        return dict(rows)

    def artifact_kinds(self, run_id: str) -> dict[str, str | None]:
        """path -> what each listed artifact was copied as (None: listed only)."""
        rows = self.db.execute("SELECT path, kind FROM artifacts WHERE source=? AND run_id=?", (self.source, run_id))
        return dict(rows)

    def synced_runs(self) -> dict[str, str]:
        """Aim hash -> MLflow run id of every run this source has an Aim run for."""
        rows = self.db.execute(
            "SELECT aim_hash, run_id FROM runs WHERE source=? AND fingerprint IS NOT NULL", (self.source,)
        )
        return dict(rows)

    def name(self, run_id: str) -> str | None:
        """The name a run had when last synced (a nested run's parent not listed this time)."""
        row = self.db.execute("SELECT name FROM runs WHERE source=? AND run_id=?", (self.source, run_id)).fetchone()
        return row[0] if row else None

    # -- writes (each a transaction of its own, unless inside `transaction()`) -------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """The writes made inside, in one transaction (a batch of runs' cursors: one commit)."""
        if self.db.in_transaction:
            yield
            return
        self.db.execute("BEGIN")
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:  # SQLite may have rolled back itself (SQLITE_FULL)
                self.db.execute("ROLLBACK")
            raise

    def save_run(
        self,
        run_id: str,
        aim_hash: str,
        experiment: str,
        fingerprint: str | None,
        status: str,
        error: str | None = None,
        *,
        name: str | None = None,
        artifacts_mark: str | None = None,
        artifacts_checked: bool = False,
        models_digest: str | None = None,
    ) -> None:
        """`artifacts_checked`: the artifacts were listed (their mark and time are saved);
        `models_digest`: the logged models were read (None: they were not, the last digest stays)."""
        self.db.execute(
            """INSERT INTO runs (source, run_id, aim_hash, experiment, fingerprint, status, error, updated_at, name,
                                 artifacts_mark, artifacts_checked_at, models_digest)
               VALUES (?,?,?,?,?,?,?,?,?,?,?,?)
               ON CONFLICT(source, run_id) DO UPDATE SET aim_hash=excluded.aim_hash,
                 experiment=excluded.experiment, fingerprint=excluded.fingerprint,
                 status=excluded.status, error=excluded.error, updated_at=excluded.updated_at,
                 name=excluded.name,
                 artifacts_mark=CASE WHEN ? THEN excluded.artifacts_mark ELSE runs.artifacts_mark END,
                 artifacts_checked_at=CASE WHEN ? THEN excluded.artifacts_checked_at
                                      ELSE runs.artifacts_checked_at END,
                 models_digest=COALESCE(excluded.models_digest, runs.models_digest)""",
            (
                self.source,
                run_id,
                aim_hash,
                experiment,
                fingerprint,
                status,
                error,
                time.time(),
                name,
                artifacts_mark,
                time.time() if artifacts_checked else None,
                models_digest,
                artifacts_checked,
                artifacts_checked,
            ),
        )

    def save_error(self, run_id: str, aim_hash: str, experiment: str, error: str) -> None:
        """A run that cannot be read now: its error, and no fingerprint, so that once it reads
        again its metadata is sent again (and the error cleared) whatever changed to fix it."""
        self.db.execute(
            """INSERT INTO runs (source, run_id, aim_hash, experiment, error, updated_at) VALUES (?,?,?,?,?,?)
               ON CONFLICT(source, run_id) DO UPDATE SET error=excluded.error, updated_at=excluded.updated_at,
                 fingerprint=NULL""",
            (self.source, run_id, aim_hash, experiment, error, time.time()),
        )

    def save_cursors(self, run_id: str, cursors: list[tuple[str, Cursor]], names: dict[str, str] | None = None) -> None:
        """(key, cursor) for one run, in one transaction. A cursor carries how many MLflow
        points lie before it: stored as such, never added up. `names`: key -> where its points
        went in Aim (`key_names`); the first one saved for a key stays."""
        names = names or {}
        with self.transaction():
            self.db.executemany(
                """INSERT INTO metrics (source, run_id, key, cursor, points, aim) VALUES (?,?,?,?,?,?)
                   ON CONFLICT(source, run_id, key) DO UPDATE SET cursor=excluded.cursor, points=excluded.points,
                     aim=COALESCE(metrics.aim, excluded.aim)""",
                [(self.source, run_id, key, dumps(cursor), cursor.points, names.get(key)) for key, cursor in cursors],
            )

    def save_artifact(self, run_id: str, path: str, size: int | None, kind: str | None) -> None:
        self.db.execute(
            """INSERT INTO artifacts (source, run_id, path, size, kind) VALUES (?,?,?,?,?)
               ON CONFLICT(source, run_id, path) DO UPDATE SET size=excluded.size, kind=excluded.kind""",
            (self.source, run_id, path, size, kind),
        )

    def forget(self, run_ids: Iterable[str]) -> None:
        """Drop what this source knows of these runs (their Aim runs are gone): sent again."""
        ids = [(self.source, r) for r in run_ids]
        if not ids:
            return
        with self.db:
            self.db.execute("BEGIN")
            for table in ("runs", "metrics", "artifacts"):
                self.db.executemany(f"DELETE FROM {table} WHERE source=? AND run_id=?", ids)

    def save_round(self, ok: bool, summary: dict[str, Any]) -> None:
        self.db.execute(
            """INSERT INTO rounds (source, finished_at, ok, summary) VALUES (?,?,?,?)
               ON CONFLICT(source) DO UPDATE SET finished_at=excluded.finished_at, ok=excluded.ok,
                 summary=excluded.summary""",
            (self.round_key, time.time(), int(ok), json.dumps(summary)),
        )

    # -- status report ------------------------------------------------------------------------
    def report(self) -> Iterator[dict[str, Any]]:
        """Per source and experiment: runs, MLflow points synced, runs in error."""
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

    def key_points(self) -> Iterator[tuple[str, str, str, int]]:
        """(experiment, Aim hash, MLflow key, MLflow points read) of every synced key, every source."""
        yield from self.db.execute(
            "SELECT r.experiment, r.aim_hash, m.key, m.points FROM metrics m JOIN runs r USING (source, run_id)"
        )

    def last_rounds(self) -> dict[str, tuple[float, bool, dict[str, Any]]]:
        return {
            s: (t, bool(ok), json.loads(summ or "{}"))
            for s, t, ok, summ in self.db.execute("SELECT source, finished_at, ok, summary FROM rounds")
        }
