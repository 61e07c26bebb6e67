"""Databases written by MLflow 2.x (2.0.1: the oldest 2.x schema, without dataset inputs; 2.9.2,
2.16.2, 2.22.5: the newest 2.x), each with its own client (tests/legacy_mlflow.py), read directly
by the SQL source: `backfill` and `sync` exit 0 with every point and timestamp exact, and the
database is left as it was: sqlite byte for byte (sha256 before and after), PostgreSQL read in
read-only sessions (the server's statement log of the syncer's role: every session made
read-only before it reads, nothing but reads; every table's content the same)."""

from __future__ import annotations

import hashlib
import math
import signal
from pathlib import Path

import pytest

from conftest import read_aim, run_syncer
from legacy_mlflow import LEGACY_VERSIONS, OLDEST_2X
from test_sync_daemon import Daemon, wait_for

pytestmark = pytest.mark.slow

_MAX = 1.7976931348623157e308  # MLflow's SQL stores keep +-inf as +-max float
T_LATE = 1_600_000_100_000  # points the legacy client logs while the daemon follows the database


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _series(points: list[list]) -> dict:
    """What Aim holds of an MLflow key: a point per step, the later by timestamp winning."""
    by_step = {s: (v, ts) for s, v, ts in sorted(points, key=lambda p: p[2])}
    steps = sorted(by_step)
    values = [by_step[s][0] for s in steps]
    return {
        "steps": steps,
        "values": [math.copysign(_MAX, v) if math.isinf(v) else v for v in values],
        "timestamps": [by_step[s][1] / 1000 for s in steps],
    }


def _same(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all((math.isnan(x) and math.isnan(y)) or x == y for x, y in zip(a, b))


def check_exact(aim: dict, logged: dict, version: str) -> None:
    """Every run, status, point and timestamp the legacy client logged, in Aim (keys as MLflow
    names them: the syncer runs with --no-context-map)."""
    runs = logged["runs"]
    assert set(aim) >= {r["run_id"] for r in runs.values()}
    for label, want in runs.items():
        got = aim[want["run_id"]]
        assert got["name"] == want["name"] and got["experiment"] == logged["experiment"], label
        ml = got["params"]["mlflow"]
        assert (ml["status"], ml["start_time"], ml["end_time"]) == (want["status"], want["start"], want["end"]), label
        assert "workspace" not in ml, label  # a database without workspaces: none named
        assert got["archived"] is (want["lifecycle_stage"] == "deleted"), label
        assert got["active"] is (want["status"] == "RUNNING" and want["lifecycle_stage"] == "active"), label
        assert set(got["metrics"]) == {(k, ()) for k in want["metrics"]}, label
        for key, points in want["metrics"].items():
            series, expected = got["metrics"][(key, ())], _series(points)
            assert series["steps"] == expected["steps"], (label, key)
            assert series["timestamps"] == expected["timestamps"], (label, key)
            assert _same(series["values"], expected["values"]), (label, key, series["values"])
    finished = aim[runs["finished"]["run_id"]]
    datasets = [(d["name"], d["digest"], d.get("context")) for d in finished["params"]["datasets"] or []]
    if version == OLDEST_2X:  # 2.0: no dataset inputs in its schema, none logged
        assert "datasets" not in runs["finished"] and datasets == []
    else:
        assert datasets == [("xnli-en-train", "abc123", "training")]


def _backfill(uri: str, repo: Path, *extra: str):
    p = run_syncer("backfill", "--mlflow-tracking-uri", uri, "--aim-repo", str(repo), "--no-context-map", *extra)
    assert p.returncode == 0, p.stderr
    assert "WARNING" not in p.stderr and "ERROR" not in p.stderr, p.stderr
    return p


def _follow(mlflow2, uri: str, repo: Path, logged: dict, tmp_path: Path, checkpoint, write_uri: str = "") -> dict:
    """`syncer sync` on the database while the legacy client (through `write_uri`, default
    `uri`) logs into its RUNNING run and ends it: the new points arrive; the daemon exits 0 on
    SIGTERM. `checkpoint()` is called once the writer is done and again after the daemon
    stopped: the daemon changed nothing."""
    write_uri = write_uri or uri
    health = tmp_path / "healthy"
    daemon = Daemon(uri, repo, "--no-context-map", "--health-file", str(health), interval=1.0).start()
    try:
        wait_for(health.exists, 120)
        running = logged["runs"]["running"]
        late = [[2, 0.8, T_LATE], [3, 0.7, T_LATE + 1]]
        points = [f"{s}:{v}:{t}" for s, v, t in late]
        mlflow2.write(write_uri, tmp_path / "late", "points", running["run_id"], "loss", *points)
        ended = mlflow2.write(write_uri, tmp_path / "late", "end", running["run_id"], "FINISHED")
        running["metrics"]["loss"] += late
        running.update(status="FINISHED", end=ended["end"])
        before = checkpoint()

        def arrived() -> bool:
            got = read_aim(repo)[running["run_id"]]
            return got["active"] is False and len(got["metrics"][("loss", ())]["steps"]) == 4

        wait_for(arrived, 120)
        rc, _ = daemon.stop(signal.SIGTERM, timeout=60)
        assert rc == 0, daemon.text()
    finally:
        daemon.kill()
    log = daemon.text()
    assert " WARNING " not in log and " ERROR " not in log, log
    assert checkpoint() == before  # the daemon wrote nothing
    return read_aim(repo)


@pytest.mark.parametrize("version", [OLDEST_2X, *LEGACY_VERSIONS])
def test_sqlite_database_of_mlflow_2(legacy_mlflow_factory, version, tmp_path):
    mlflow2 = legacy_mlflow_factory(version)
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    logged = mlflow2.write(uri, tmp_path / "writer")
    before = _digest(db)
    p = _backfill(uri, tmp_path / "aim")
    assert "6 runs" in p.stdout, p.stdout
    assert _digest(db) == before
    check_exact(read_aim(tmp_path / "aim"), logged, version)
    # the head of that version's schema, said once: what it lacks is read as absent
    (said,) = [ln for ln in p.stderr.splitlines() if "older schema" in ln]
    assert "logged models (MLflow >= 3.0)" in said and "workspaces (MLflow >= 3.10)" in said, said
    assert ("dataset inputs" in said) is (version == OLDEST_2X), said
    if version == OLDEST_2X:  # no workspaces: the default one holds every experiment, none other exists
        _backfill(uri, tmp_path / "default", "--workspace", "default")
        assert set(read_aim(tmp_path / "default")) == set(read_aim(tmp_path / "aim"))
        p = run_syncer("backfill", "--mlflow-tracking-uri", uri, "--aim-repo", str(tmp_path / "a"), "--workspace", "a")
        assert p.returncode == 2 and "unknown MLflow workspace(s)" in p.stderr and "MLflow < 3.10" in p.stderr
        assert _digest(db) == before

    aim = _follow(mlflow2, uri, tmp_path / "aim", logged, tmp_path, lambda: _digest(db))
    check_exact(aim, logged, version)
    assert _late_points_plan(db, logged["runs"]["finished"]["run_id"]) == [
        "SEARCH metrics USING INDEX index_metrics_run_uuid (run_uuid=?)"
    ]


def _late_points_plan(db: Path, run: str) -> list[str]:
    """How sqlite finds a run's points logged late beyond the last step read, in a database
    without MLflow 3's (run_uuid, key, step) index: through metrics(run_uuid), the run's own points,
    not the primary key (key, ...), which holds the key's points of every run in the store."""
    import sqlite3

    from syncer.sources import ReadStats, StoreLocation
    from syncer.sources.cursors import OrderCursor
    from syncer.sources.sql import SqlSource

    source = SqlSource(StoreLocation.parse(f"sqlite:///{db}"), ReadStats())
    try:
        assert not source.t.has_run_key_step_index
        query = source.late_points(run, "loss", OrderCursor(ts=2**40, step=49, value=0.0, max_step=49, points=50))
        sql = str(query.compile(source.engine, compile_kwargs={"literal_binds": True}))
    finally:
        source.close()
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return [str(row[-1]) for row in con.execute("EXPLAIN QUERY PLAN " + sql)]


# -- PostgreSQL ------------------------------------------------------------------------------------
def _logging_role(postgres, db: str) -> str:
    """A role that may write every table of `db` (so that only the syncer's sessions keep it
    from writing) and whose every statement the server logs."""
    role = "syncer_logged"
    postgres.sql(
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN "
        f"CREATE ROLE {role} LOGIN; END IF; END $$"
    )
    postgres.sql(f"ALTER ROLE {role} SET log_statement = 'all'")
    postgres.sql(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}", db=db)
    return role


def _content(postgres, db: str) -> dict[str, str]:
    """An md5 of every table's rows (in a stable order), by table."""
    tables = postgres.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1", db=db).split()
    query = " UNION ALL ".join(
        f"SELECT '{t}', md5(coalesce(string_agg(md5(x::text), ',' ORDER BY md5(x::text)), '')) FROM \"{t}\" x"
        for t in tables
    )
    return dict(line.split("|") for line in postgres.sql(query, db=db).splitlines())


def _statements(log: str) -> list[tuple[str, str]]:
    """(backend pid, statement) of each statement the server logged."""
    out = []
    for line in log.splitlines():
        for marker in ("LOG:  statement: ", "LOG:  execute "):
            if marker in line:
                pid = line.split("[", 1)[1].split("]", 1)[0]
                text = line.split(marker, 1)[1]
                out.append((pid, text.split(": ", 1)[1] if marker.endswith("execute ") else text))
    return out


_READ_ONLY = "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"
_HARMLESS = ("SELECT", "SHOW", "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", ";", _READ_ONLY)
_MLFLOW_TABLES = ("alembic_version", "experiments.", "experiment_tags.", "runs.", "metrics.", "params.", "tags.")


def check_read_only_sessions(statements: list[tuple[str, str]]) -> None:
    """Every statement a read; every session made read-only before it read an MLflow table."""
    assert statements, "no statement logged: log_statement did not apply"
    writes = [s for _pid, s in statements if not s.strip().upper().startswith(_HARMLESS)]
    assert not writes, writes
    read_only: set[str] = set()
    for pid, s in statements:
        if s.startswith(_READ_ONLY):
            read_only.add(pid)
        elif any(t in s for t in _MLFLOW_TABLES):
            assert pid in read_only, f"session {pid} read before it was made read-only: {s}"
    assert read_only, "no session was made read-only"


@pytest.mark.parametrize("version", [OLDEST_2X, LEGACY_VERSIONS[-1]])
def test_postgres_database_of_mlflow_2(legacy_mlflow_factory, postgres, version, tmp_path):
    mlflow2 = legacy_mlflow_factory(version)
    url = postgres.new_database()
    db = url.rsplit("/", 1)[1]
    logged = mlflow2.write(url, tmp_path / "writer")
    role = _logging_role(postgres, db)
    as_role = postgres.url(db, user=role)
    server_log = postgres.dir / "server.log"
    start = server_log.stat().st_size
    content = _content(postgres, db)
    _backfill(as_role, tmp_path / "aim")
    assert _content(postgres, db) == content
    check_exact(read_aim(tmp_path / "aim"), logged, version)

    aim = _follow(mlflow2, as_role, tmp_path / "aim", logged, tmp_path, lambda: _content(postgres, db), write_uri=url)
    check_exact(aim, logged, version)
    seen: list[tuple[str, str]] = []

    def logged_by_now() -> bool:  # the server writes its log as it goes
        seen[:] = _statements(server_log.read_bytes()[start:].decode(errors="replace"))
        return any(s.startswith("SELECT runs.") for _pid, s in seen)

    wait_for(logged_by_now, 30)
    check_read_only_sessions(seen)


def test_a_database_upgraded_under_the_daemon_is_read_as_it_is_now(legacy_mlflow_factory, tmp_path):
    """`mlflow db upgrade` (to the installed MLflow's schema) while `syncer sync` follows a 2.x
    database: the next full listing reads the tables again, and a logged model (MLflow 3) made
    after the upgrade reaches its run in Aim."""
    import subprocess
    import sys

    from conftest import client_for

    mlflow2 = legacy_mlflow_factory(LEGACY_VERSIONS[-1])
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    logged = mlflow2.write(uri, tmp_path / "writer")
    run = logged["runs"]["finished"]["run_id"]
    repo = tmp_path / "aim"
    daemon = Daemon(uri, repo, "--no-context-map", "--full-scan-interval", "1", interval=0.5).start()
    try:
        wait_for(lambda: run in read_aim(repo), 120)
        up = subprocess.run(
            [sys.executable, "-m", "mlflow", "db", "upgrade", uri], capture_output=True, text=True, timeout=600
        )
        assert up.returncode == 0, up.stderr[-3000:]
        client = client_for(uri)
        model = client.create_logged_model(logged["experiment_id"], name="clf", source_run_id=run)
        client.finalize_logged_model(model.model_id, "READY")

        def with_model() -> bool:
            models = read_aim(repo)[run]["params"]["mlflow"].get("logged_models") or []
            return [m.get("model_id") for m in models] == [model.model_id]

        wait_for(with_model, 120)
        assert "moved from schema 0584bdc529eb to" in daemon.text(), daemon.text()
        rc, _ = daemon.stop(signal.SIGTERM, timeout=60)
        assert rc == 0, daemon.text()
    finally:
        daemon.kill()
