"""The throwaway servers of the bench: a private PostgreSQL cluster whose databases survive between
invocations, and `mlflow server` over a sqlite file; each on a free port of 127.0.0.1.

(bench's own copy of what tests/postgres.py does, so that nothing in bench/ reaches into tests/.)
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from benchkit import PY, child_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status < 500:
                    return
        except Exception:
            time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


class Postgres:
    """A private PostgreSQL server from the installed binaries, data kept in `folder/data` so
    that generated databases survive between invocations (initdb the first time only); trust
    authentication on a free port of 127.0.0.1, fsync off. As root it runs as `postgres`."""

    def __init__(self, folder: Path):
        found = shutil.which("pg_ctl") or next(reversed(sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))), None)
        if found is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bin = Path(found).resolve().parent
        self.port = free_port()
        self.dir, self.data = folder, folder / "data"
        folder.mkdir(parents=True, exist_ok=True)
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            import pwd

            pw = pwd.getpwnam(self.user)
            os.chown(folder, pw.pw_uid, pw.pw_gid)

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        full = [str(self.bin / cmd[0]), *cmd[1:]]
        if self.user:
            full = ["runuser", "-u", self.user, "--", *full]
        return subprocess.run(full, capture_output=True, text=True, check=check, timeout=120, cwd=self.dir)

    def start(self) -> Postgres:
        if not (self.data / "PG_VERSION").exists():
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "server.log"), "-o", opts, "-w", "start")
        deadline = time.monotonic() + 60
        while self._run("pg_isready", "-h", "127.0.0.1", "-p", str(self.port), check=False).returncode:
            if time.monotonic() > deadline:
                raise TimeoutError("PostgreSQL did not become ready")
            time.sleep(0.2)
        return self

    def stop(self) -> None:  # keeps the data folder
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "stop", check=False)

    def url(self, db: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def sql(self, statement: str, db: str = "postgres") -> str:
        psql = ("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1")
        return self._run(*psql, "-tAc", statement).stdout.strip()

    def exists(self, db: str) -> bool:
        return self.sql(f"SELECT 1 FROM pg_database WHERE datname = '{db}'") == "1"

    def disconnect(self, db: str) -> None:
        self.sql(f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{db}'")

    def drop(self, db: str) -> None:
        self.sql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None


class MlflowServer:
    """`mlflow server` over a sqlite database, one worker, on a free port of 127.0.0.1; `python`:
    the interpreter whose MLflow serves it (an MLflow 2.x venv's, with `env` from
    benchkit.legacy_env), the project's by default."""

    def __init__(self, db: Path, workdir: Path, python: Path = PY, env: dict[str, str] | None = None):
        self.db, self.workdir = db, workdir
        self.python, self.env = python, env
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> MlflowServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = ["--host", "127.0.0.1", "--port", str(self.port), "--backend-store-uri", f"sqlite:///{self.db}"]
        args += ["--artifacts-destination", str(self.workdir / "artifacts"), "--workers", "1"]
        with open(self.workdir / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.python), "-m", "mlflow", "server", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
                env=self.env if self.env is not None else child_env(),
            )
        wait_http(self.uri + "/health", timeout=120, proc=self.proc)
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
