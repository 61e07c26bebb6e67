"""The SQL source: MLflow's schema as we read it (a guard that fails loudly when MLflow changes
it), databases opened read-only and left byte-for-byte as they were, one-line refusals of
databases that are not MLflow's or not of the schema we know, and a read-only PostgreSQL role."""

from __future__ import annotations

import hashlib
import sqlite3

from syncer.sources import sql_schema

from conftest import T0, client_for, imported_by_backfill, log_points, read_aim, run_syncer


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line_error(p, *needles):
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in p.stderr and len(lines) == 1 and lines[0].startswith("Error: "), p.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def _mlflow_db(tmp_path):
    db = tmp_path / "mlflow.db"
    client = client_for(f"sqlite:///{db}")
    exp = client.create_experiment("sql", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(exp, run_name="r", start_time=T0).info.run_id
    client.log_param(run, "lr", "0.1")
    log_points(client, run, "loss", [(s, 1.0 / (s + 1), T0 + s) for s in range(30)])
    client.set_terminated(run, "FINISHED", end_time=T0 + 100)
    return db, run


def test_mlflow_schema_is_the_one_the_sql_source_knows():
    """Fails when an installed MLflow changes the tables, columns or indexes the SQL source
    reads, or adds a schema revision: re-read MLflow's migrations, then update sql_schema.py."""
    assert sql_schema.schema_problems() == []
    assert sql_schema.latest_revision() == sql_schema.KNOWN_HEAD


def test_a_sqlite_backfill_does_not_import_mlflow(tmp_path):
    """The tables are declared in sql_schema.py (typed as MLflow's models, the test above): a
    database of the installed MLflow's schema is read without importing MLflow (a second of
    every start, and of each worker's)."""
    db, _run = _mlflow_db(tmp_path)
    assert imported_by_backfill(f"sqlite:///{db}", tmp_path / "aim") == []


def test_sqlite_store_is_read_without_a_single_byte_changed(tmp_path):
    db, run = _mlflow_db(tmp_path)
    before = _digest(db)
    p = run_syncer("backfill", "--mlflow-tracking-uri", f"sqlite:///{db}", "--aim-repo", str(tmp_path / "aim"))
    assert p.returncode == 0, p.stderr
    assert _digest(db) == before
    assert len(read_aim(tmp_path / "aim")[run]["metrics"][("loss", ())]["steps"]) == 30


def test_empty_file_is_refused_and_left_empty(tmp_path):
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    p = run_syncer("backfill", "--mlflow-tracking-uri", f"sqlite:///{empty}", "--aim-repo", str(tmp_path / "aim"))
    _one_line_error(p, "empty", "not an MLflow database")
    assert empty.read_bytes() == b"" and not (tmp_path / "aim").exists()


def test_database_without_mlflow_tables_is_refused_unchanged(tmp_path):
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as con:
        con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    before = _digest(other)
    p = run_syncer("backfill", "--mlflow-tracking-uri", f"sqlite:///{other}", "--aim-repo", str(tmp_path / "aim"))
    _one_line_error(p, "not an MLflow database")
    assert _digest(other) == before and not (tmp_path / "aim").exists()


def _many_runs(tmp_path, n: int = 10):
    """A database with `n` finished runs of 5 points each (8 or more: a backfill spreads them
    over its worker processes)."""
    db = tmp_path / "mlflow.db"
    client = client_for(f"sqlite:///{db}")
    exp = client.create_experiment("revisions", artifact_location=(tmp_path / "artifacts").as_uri())
    runs = {}
    for i in range(n):
        run = client.create_run(exp, run_name=f"r{i}", start_time=T0).info.run_id
        runs[run] = [(s, float(i * s), T0 + s) for s in range(5)]
        log_points(client, run, "loss", runs[run])
        client.set_terminated(run, "FINISHED", end_time=T0 + 100)
    return db, runs


def test_other_schema_revisions_are_read_and_an_unknown_one_is_said_once(tmp_path):
    """A revision the installed MLflow knows (an older one) is read with one info line; one it
    does not know (a newer MLflow's) with ONE warning naming it, whatever the worker processes;
    the file unchanged, every point there."""
    db, runs = _many_runs(tmp_path)
    older = "0584bdc529eb"  # MLflow 2.22's head
    assert older in sql_schema.known_revisions()
    for rev, level in ((older, "INFO"), ("ffffffffffff", "WARNING")):
        with sqlite3.connect(db) as con:
            con.execute("UPDATE alembic_version SET version_num = ?", (rev,))
        before = _digest(db)
        repo = tmp_path / f"aim-{rev}"
        p = run_syncer(
            "backfill", "--mlflow-tracking-uri", f"sqlite:///{db}", "--aim-repo", str(repo), "--workers", "2"
        )
        assert p.returncode == 0, p.stderr
        assert _digest(db) == before
        said = [ln for ln in p.stderr.splitlines() if "syncer.sources.sql_schema:" in ln]
        assert all(rev in ln for ln in said), said
        assert len(said) == 1 and f" {level} " in said[0], p.stderr
        assert [ln for ln in p.stderr.splitlines() if " WARNING " in ln] == (said if level == "WARNING" else [])
        aim = read_aim(repo)
        assert {r: aim[r]["metrics"][("loss", ())]["values"] for r in runs} == {
            r: [v for _s, v, _t in pts] for r, pts in runs.items()
        }


def test_a_database_lacking_what_every_mlflow_has_is_refused_unchanged(tmp_path):
    """Columns every MLflow database has had since 2.0: one line naming what is missing, and
    what to do (an older MLflow's: upgrade it; an unknown one's: a server of its version)."""
    db, _run = _mlflow_db(tmp_path)
    with sqlite3.connect(db) as con:
        con.execute("ALTER TABLE runs DROP COLUMN deleted_time")
        con.execute("DROP TABLE latest_metrics")
    for rev, needle in (("89d4b8295536", "upgrade it with `mlflow db upgrade`"), ("ffffffffffff", "server")):
        with sqlite3.connect(db) as con:
            con.execute("UPDATE alembic_version SET version_num = ?", (rev,))
        before = _digest(db)
        p = run_syncer("backfill", "--mlflow-tracking-uri", f"sqlite:///{db}", "--aim-repo", str(tmp_path / "aim"))
        _one_line_error(p, rev, "latest_metrics, runs.deleted_time", needle)
        assert _digest(db) == before and not (tmp_path / "aim").exists()


def test_postgres_read_through_a_read_only_role(postgres, tmp_path):
    """The deploy's sidecar may read the MLflow server's PostgreSQL as a role that can only SELECT."""
    url = postgres.new_database()
    client = client_for(url)
    exp = client.create_experiment("pg", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(exp, run_name="r", start_time=T0).info.run_id
    log_points(client, run, "loss", [(s, float(s), T0 + s) for s in range(25)])
    db = url.rsplit("/", 1)[1]
    postgres.sql(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'syncer_ro') THEN "
        "CREATE ROLE syncer_ro LOGIN; END IF; END $$"
    )
    postgres.sql("GRANT SELECT ON ALL TABLES IN SCHEMA public TO syncer_ro", db=db)
    p = run_syncer(
        "backfill", "--mlflow-tracking-uri", postgres.url(db, user="syncer_ro"), "--aim-repo", str(tmp_path / "aim")
    )
    assert p.returncode == 0, p.stderr
    assert read_aim(tmp_path / "aim")[run]["metrics"][("loss", ())]["steps"] == list(range(25))


def test_sessions_cannot_write_even_as_a_role_that_may(postgres, tmp_path):
    import pytest
    import sqlalchemy.exc
    from sqlalchemy import text

    db, _run = _mlflow_db(tmp_path)
    pg_url = postgres.new_database()
    client_for(pg_url).create_experiment("pg-ro")
    for url in (f"sqlite:///{db}", pg_url):  # the sqlite file is ours, postgres is a superuser here
        engine, _tables = sql_schema.open_read_only(url)
        try:
            with engine.connect() as con, pytest.raises(sqlalchemy.exc.DBAPIError):
                con.execute(text("CREATE TABLE written_by_the_syncer (i INTEGER)"))
        finally:
            engine.dispose()


def test_deploy_read_only_role_reads_what_mlflow_writes_later(postgres, tmp_path):
    """deploy/docker/postgres-readonly.sql, run before MLflow creates its tables (as the postgres
    image runs it), gives a role that can read every table MLflow makes, and write none."""
    from conftest import ROOT

    db = f"mlflow_{tmp_path.name[-20:].replace('-', '_').lower()}"
    postgres.sql(f"CREATE DATABASE {db}")
    postgres.sql(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mlflow') THEN "
        "CREATE ROLE mlflow LOGIN; END IF; END $$"
    )
    postgres.sql(f"ALTER DATABASE {db} OWNER TO mlflow; GRANT ALL ON SCHEMA public TO mlflow", db=db)
    script = (ROOT / "deploy" / "docker" / "postgres-readonly.sql").read_text()
    script = script.replace(
        "CREATE ROLE syncer_ro LOGIN;",
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles "
        "WHERE rolname = 'syncer_ro') THEN CREATE ROLE syncer_ro LOGIN; END IF; END $$;",
    )
    postgres.sql(script.replace("DATABASE mlflow", f"DATABASE {db}"), db=db)
    client = client_for(postgres.url(db, user="mlflow"))  # MLflow creates its tables as `mlflow`
    exp = client.create_experiment("ro", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(exp, run_name="r", start_time=T0).info.run_id
    log_points(client, run, "loss", [(s, float(s), T0 + s) for s in range(7)])
    p = run_syncer(
        "backfill", "--mlflow-tracking-uri", postgres.url(db, user="syncer_ro"), "--aim-repo", str(tmp_path / "aim")
    )
    assert p.returncode == 0, p.stderr
    assert read_aim(tmp_path / "aim")[run]["metrics"][("loss", ())]["steps"] == list(range(7))
    denied = postgres._run(
        "psql",
        "-h",
        "127.0.0.1",
        "-p",
        str(postgres.port),
        "-U",
        "syncer_ro",
        "-d",
        db,
        "-c",
        "DELETE FROM metrics",
        check=False,
    )
    assert denied.returncode != 0 and "read-only" in denied.stderr, denied.stderr


def test_late_points_are_read_through_the_runs_own_index(tmp_path):
    """The query for points beyond the steps read but with an earlier timestamp must go through
    (run_uuid, key, step): on the primary key (key, timestamp, ...) sqlite scans that key's points
    in every run of the store (20 ms a round at 5,000 runs instead of 0.01 ms)."""
    from syncer.sources import ReadStats, StoreLocation
    from syncer.sources.cursors import OrderCursor
    from syncer.sources.sql import SqlSource

    db, run = _mlflow_db(tmp_path)
    source = SqlSource(StoreLocation.parse(f"sqlite:///{db}"), ReadStats())
    try:
        query = source.late_points(run, "loss", OrderCursor(ts=T0 + 29, step=29, value=1.0, max_step=29, points=30))
        sql = str(query.compile(source.engine, compile_kwargs={"literal_binds": True}))
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            plan = " ".join(str(row[-1]) for row in con.execute("EXPLAIN QUERY PLAN " + sql))
    finally:
        source.close()
    assert "index_metrics_run_uuid_key_step" in plan and "run_uuid=?" in plan, plan
