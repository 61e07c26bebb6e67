"""A PostgreSQL database that refuses the syncer's login (a wrong password) is bad input, not an
outage: one line saying so and exit 2 at start (backfill and sync); a daemon whose password stops
working is unhealthy with that reason and retries with back-off, and goes on once it works again.
On the real PostgreSQL server of the tests, with a role that logs in with a password
(scram-sha-256 for that role only: the server's pg_hba.conf gains one line)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from conftest import T0, client_for, log_points, read_aim, run_syncer
from test_sync_daemon import Daemon, wait_for

pytestmark = pytest.mark.slow

ROLE, PASSWORD = "syncer_pw", "s3cret-right"


def password_role(postgres, db: str) -> str:
    """ROLE, logging in with PASSWORD over TCP, allowed to read `db`; returns its URL."""
    import psycopg

    postgres.sql(
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN "
        f"CREATE ROLE {ROLE} LOGIN; END IF; END $$"
    )
    postgres.sql(f"ALTER ROLE {ROLE} PASSWORD '{PASSWORD}'")
    postgres.sql(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {ROLE}", db=db)
    hba = Path(postgres.sql("SHOW hba_file"))
    line = f"host all {ROLE} 127.0.0.1/32 scram-sha-256\n"
    if line not in hba.read_text():  # the first line that matches decides: before the 'trust' ones
        hba.write_text(line + hba.read_text())
        postgres.sql("SELECT pg_reload_conf()")

    def enforced() -> bool:
        try:
            psycopg.connect(host="127.0.0.1", port=postgres.port, user=ROLE, password="wrong", dbname=db).close()
        except psycopg.OperationalError as e:
            return "password authentication failed" in str(e)
        return False

    wait_for(enforced, 30)
    return f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{postgres.port}/{db}"


def _database(postgres, tmp_path) -> tuple[str, str, str]:
    url = postgres.new_database()
    client = client_for(url)
    exp = client.create_experiment("login", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(exp, run_name="r", start_time=T0).info.run_id
    log_points(client, run, "loss", [(s, float(s), T0 + s) for s in range(5)])
    return url, url.rsplit("/", 1)[1], run


def test_wrong_password_is_one_line_and_exit_2_at_start(postgres, tmp_path):
    _url, db, _run = _database(postgres, tmp_path)
    good = password_role(postgres, db)
    wrong = good.replace(PASSWORD, "s3cret-wrong")
    for command in ("backfill", "sync"):
        repo = tmp_path / f"aim-{command}"
        p = run_syncer(command, "--mlflow-tracking-uri", wrong, "--aim-repo", str(repo), timeout=120)
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert p.returncode == 2, (command, p.returncode, p.stderr)
        assert lines[-1].startswith("Error: ") and "Traceback" not in p.stderr, p.stderr
        assert "refused the login" in lines[-1] and f'password authentication failed for user "{ROLE}"' in lines[-1]
        assert "unreachable" not in p.stderr and "s3cret" not in p.stderr + p.stdout, p.stderr
        if command == "backfill":
            assert len(lines) == 1 and not repo.exists(), p.stderr
    assert run_syncer("backfill", "--mlflow-tracking-uri", good, "--aim-repo", str(tmp_path / "ok")).returncode == 0


def _until(probe, timeout: float, daemon: Daemon) -> None:
    try:
        wait_for(probe, timeout)
    except AssertionError:
        raise AssertionError(f"not after {timeout} s; the daemon's log:\n{daemon.text()[-5000:]}") from None


def test_daemon_whose_password_stops_working_is_unhealthy_then_recovers(postgres, tmp_path):
    url, db, run = _database(postgres, tmp_path)
    good = password_role(postgres, db)
    health = tmp_path / "healthy"
    repo = tmp_path / "aim"
    daemon = Daemon(good, repo, "--health-file", str(health), interval=0.5).start()

    def points() -> int:
        return len(read_aim(repo)[run]["metrics"][("loss", ())]["steps"])

    try:
        _until(lambda: health.exists() and points() == 5, 120, daemon)
        postgres.sql(f"ALTER ROLE {ROLE} PASSWORD 'changed-by-the-dba'")
        # the sessions it holds go (a server restart, a pooler): the next login is refused
        postgres.sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{ROLE}'")
        log_points(client_for(url), run, "loss", [(5, 5.0, T0 + 5)])

        def refusals() -> int:
            return daemon.text().count("refused the login")

        _until(lambda: refusals() >= 1, 60, daemon)
        stale = health.stat().st_mtime
        # retried with back-off, reconnecting from scratch after the second failure: still refused, still alive
        _until(lambda: refusals() >= 3, 60, daemon)
        assert daemon.proc.poll() is None, daemon.text()
        assert health.stat().st_mtime == stale  # unhealthy meanwhile
        text = daemon.text()
        refused = [ln for ln in text.splitlines() if "refused the login" in ln]
        assert all(" WARNING " in ln and "; retrying in" in ln for ln in refused), text  # never fatal once it ran
        assert all(f'password authentication failed for user "{ROLE}"' in ln for ln in refused), text
        # the refused login is never called unreachable; the terminated session may be, once, if a
        # round was using it at that moment (the server did cut that connection)
        lines = text.splitlines()
        first = next(i for i, ln in enumerate(lines) if "refused the login" in ln)
        assert sum("unreachable" in ln for ln in lines[:first]) <= 1, text
        assert not any("unreachable" in ln for ln in lines[first:]) and "s3cret" not in text, text

        postgres.sql(f"ALTER ROLE {ROLE} PASSWORD '{PASSWORD}'")
        _until(lambda: points() == 6 and health.stat().st_mtime > stale, 120, daemon)
        assert "is readable; catching up" in daemon.text()
        rc, _ = daemon.stop(signal.SIGTERM, timeout=60)
        assert rc == 0, daemon.text()
    finally:
        daemon.kill()
        postgres.sql(f"ALTER ROLE {ROLE} PASSWORD '{PASSWORD}'")
