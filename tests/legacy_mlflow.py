"""MLflow releases other than the installed one, for the tests: each in a venv of its own, cached
under pytest's cache (`.pytest_cache/d/legacy-mlflow/`), installed from PyPI with the versions
pinned in `tests/constraints-mlflow-<version>.txt`; its `mlflow server` on a free port of
127.0.0.1; and `tests/legacy_mlflow_writer.py` run with its client into a server or a database.

    LEGACY_VERSIONS                       the MLflow 2.x releases the tests run against
    legacy_mlflow(version, cache_dir)     -> LegacyMlflow (installs once; skips when PyPI is unreachable)
    LegacyMlflow.server(workdir, backend) -> MlflowProcess (started, health endpoint answered)
    LegacyMlflow.write(uri, workdir)      -> what the writer logged (dict, see the writer)
    start_server(python, ...)             any MLflow's server (the project's own too: sys.executable)

Two pytest-xdist workers asking for one version at once: the second waits on a file lock while
the first installs. A venv is rebuilt when its constraints file changes. By hand:

    python tests/legacy_mlflow.py freeze 2.16.2    # resolve afresh and write the constraints file
    python tests/legacy_mlflow.py install 2.16.2   # install into .pytest_cache (prints the python)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
WRITER = HERE / "legacy_mlflow_writer.py"
# 2.9.2 and 2.16.2: releases labs run (issue 24); 2.22.5: the newest 2.x on PyPI
# (`pip index versions mlflow` when the constraints were frozen)
LEGACY_VERSIONS = ("2.9.2", "2.16.2", "2.22.5")
OLDEST_2X = "2.0.1"  # the oldest 2.x schema (no datasets/inputs tables), for the SQL source
# the newest alembic revision each writes (`LegacyMlflow.schema_head()`; MLflow 3.17.2: dc11669786a5)
SCHEMA_HEADS = {"2.0.1": "97727af70f4d", "2.9.2": "acf3f17fdcc7", "2.16.2": "4465047574b1", "2.22.5": "0584bdc529eb"}
# installed beside MLflow: `postgresql://` is psycopg2 for SQLAlchemy 2.0; MLflow 2.x breaks on
# SQLAlchemy 2.1 (`sqlalchemy<2.1` when resolving afresh)
EXTRAS = ("psycopg2-binary",)
RESOLVE_PINS = ("sqlalchemy<2.1",)
INSTALL_TIMEOUT_S = 1800
SERVER_DEADLINE_S = 180  # a cold 2.x server imports pandas, sklearn, ... before it answers


class RegistryUnreachable(RuntimeError):
    """PyPI cannot be reached: the tests that need a legacy MLflow skip with this reason."""


def constraints_file(version: str) -> Path:
    return HERE / f"constraints-mlflow-{version}.txt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def _clean_env(venv: Path | None = None) -> dict[str, str]:
    """The environment of a legacy MLflow process: none of this project's paths or MLflow settings
    (PYTHONPATH would put the installed MLflow 3's dependencies before its own)."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "MLFLOW_TRACKING_URI", "MLFLOW_WORKSPACE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    if venv is not None:  # `mlflow server` of 2.x runs `gunicorn` from PATH
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(venv)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def check_registry(python: str = sys.executable, timeout: float = 60) -> None:
    """Raise RegistryUnreachable unless pip can list MLflow's releases (its own index settings)."""
    try:
        p = _run([python, "-m", "pip", "index", "versions", "mlflow", "--timeout", "15", "--retries", "1"], timeout)
    except subprocess.TimeoutExpired:
        raise RegistryUnreachable(f"the package registry did not answer within {timeout:.0f} s") from None
    if p.returncode != 0 or "Available versions" not in p.stdout:
        last = (p.stderr.strip().splitlines() or ["no answer"])[-1]
        raise RegistryUnreachable(f"the package registry cannot be reached ({last})")


def _pip_install(python: Path, args: list[str], timeout: float) -> None:
    p = _run([str(python), "-m", "pip", "install", "-q", *args], timeout, env=_clean_env())
    if p.returncode != 0:
        raise RuntimeError(f"pip install {' '.join(args)} failed ({p.returncode}):\n{p.stderr[-3000:]}")


def _new_venv(venv: Path) -> Path:
    shutil.rmtree(venv, ignore_errors=True)
    base = getattr(sys, "_base_executable", sys.executable)  # not this project's venv
    p = _run([base, "-m", "venv", str(venv)], 300, env=_clean_env())
    if p.returncode != 0:
        raise RuntimeError(f"cannot create a venv at {venv}: {p.stderr.strip()}")
    return venv / "bin" / "python"


def _stamp(version: str) -> str:
    pins = constraints_file(version).read_bytes()
    return hashlib.sha256(pins + sys.version.encode() + repr(EXTRAS).encode()).hexdigest()


@dataclass
class LegacyMlflow:
    version: str
    venv: Path
    install_s: float = 0.0  # how long this call installed (0 when the cached venv was used)

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    def env(self, **extra: str) -> dict[str, str]:
        return {**_clean_env(self.venv), **extra}

    def run(self, *args: str, timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
        """`python *args` in this venv; raises with the output when it fails."""
        p = subprocess.run(
            [self.python, *args], capture_output=True, text=True, timeout=timeout, env=self.env(), cwd=cwd
        )
        if p.returncode != 0:
            raise RuntimeError(f"MLflow {self.version}: {' '.join(args)} exited {p.returncode}\n{p.stderr[-3000:]}")
        return p

    def server(self, workdir: Path, backend: str | None = None, *extra_args: str) -> MlflowProcess:
        """This version's `mlflow server` (sqlite in `workdir` unless `backend` says otherwise)."""
        return start_server(self.python, workdir, backend, extra_args, env=self.env())

    def write(self, uri: str, workdir: Path, *args: str) -> dict:
        """Run the writer with this version's client into `uri` (a server or a database);
        `populate` unless `args` say otherwise."""
        return run_writer(self.python, uri, workdir, *(args or ("populate",)), env=self.env())

    def schema_head(self) -> str:
        """The newest alembic revision this version's migrations know."""
        code = "from mlflow.store.db.utils import _get_latest_schema_revision as h; print(h())"
        return self.run("-c", code).stdout.strip().splitlines()[-1]


def legacy_mlflow(version: str, cache_dir: Path) -> LegacyMlflow:
    """MLflow `version` in its venv under `cache_dir`, installed on first use (under a file lock:
    pytest-xdist workers share the cache). RegistryUnreachable when it must install and cannot."""
    from filelock import FileLock

    if not constraints_file(version).is_file():
        raise FileNotFoundError(f"no {constraints_file(version).name}: `python {__file__} freeze {version}`")
    cache_dir.mkdir(parents=True, exist_ok=True)
    venv = cache_dir / f"mlflow-{version}"
    ready = venv / ".syncer-tests-ready"
    stamp = _stamp(version)
    with FileLock(str(cache_dir / f"mlflow-{version}.lock"), timeout=INSTALL_TIMEOUT_S):
        if ready.is_file() and ready.read_text() == stamp:
            return LegacyMlflow(version, venv)
        check_registry()
        t0 = time.monotonic()
        python = _new_venv(venv)  # built in place: a venv's scripts name its path
        pins = ["-c", str(constraints_file(version))]
        _pip_install(python, [*pins, f"mlflow=={version}", *EXTRAS], INSTALL_TIMEOUT_S)
        ready.write_text(stamp)
        return LegacyMlflow(version, venv, time.monotonic() - t0)


def freeze(version: str, workdir: Path) -> Path:
    """Resolve MLflow `version` afresh in a scratch venv and write what pip chose as its
    constraints file."""
    python = _new_venv(workdir / f"freeze-{version}")
    _pip_install(python, [f"mlflow=={version}", *EXTRAS, *RESOLVE_PINS], INSTALL_TIMEOUT_S)
    p = _run([str(python), "-m", "pip", "freeze", "--all"], 120, env=_clean_env())
    pins = sorted(line for line in p.stdout.splitlines() if "==" in line and not line.startswith("pip=="))
    head = (
        f"# What pip resolved for `pip install mlflow=={version} {' '.join(EXTRAS)} "
        f"'{' '.join(RESOLVE_PINS)}'` (Python {sys.version_info.major}.{sys.version_info.minor}, "
        f"{time.strftime('%Y-%m-%d')}); written by `python tests/legacy_mlflow.py freeze {version}`.\n"
    )
    out = constraints_file(version)
    out.write_text(head + "\n".join(pins) + "\n")
    return out


# ---------------------------------------------------------------------------------------------
# servers and writers


class MlflowProcess:
    """An `mlflow server` started by start_server(); stop() ends it and its workers."""

    def __init__(self, proc: subprocess.Popen, uri: str, backend: str, log: Path):
        self.proc, self.uri, self.backend, self.log = proc, uri, backend, log

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.is_file() else ""

    def stop(self, timeout: float = 15) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def wait_health(uri: str, proc: subprocess.Popen, log: Path, deadline_s: float = SERVER_DEADLINE_S) -> None:
    """Until `uri`/health answers 200; raises with the server's log if it exits or never does."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log.is_file() else ""
            raise RuntimeError(f"mlflow server exited with {proc.returncode} before answering:\n{tail}")
        try:
            with urllib.request.urlopen(uri + "/health", timeout=5) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.3)
    raise TimeoutError(f"{uri}/health did not answer within {deadline_s:.0f} s (log: {log})")


def start_server(
    python: str,
    workdir: Path,
    backend: str | None = None,
    extra_args: tuple[str, ...] | list[str] = (),
    env: dict[str, str] | None = None,
    deadline_s: float = SERVER_DEADLINE_S,
) -> MlflowProcess:
    """`python -m mlflow server` on a free port of 127.0.0.1, one worker, artifacts served from
    `workdir/artifacts`, backend `sqlite:///workdir/mlflow.db` unless given. Returns once its
    health endpoint answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    backend = backend or f"sqlite:///{workdir / 'mlflow.db'}"
    port = free_port()
    log = workdir / f"server-{port}.log"
    cmd = [python, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--backend-store-uri", backend, "--artifacts-destination", str(workdir / "artifacts")]
    cmd += ["--workers", "1", *extra_args]
    proc = subprocess.Popen(
        cmd,
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        cwd=workdir,
        env=env if env is not None else _clean_env(),
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_health(uri, proc, log, deadline_s)
    except BaseException:
        MlflowProcess(proc, uri, backend, log).stop()
        raise
    return MlflowProcess(proc, uri, backend, log)


def run_writer(python: str, uri: str, workdir: Path, *args: str, env: dict[str, str] | None = None) -> dict:
    """tests/legacy_mlflow_writer.py with `python`'s MLflow into `uri`; returns what it logged."""
    workdir.mkdir(parents=True, exist_ok=True)
    fd, out = tempfile.mkstemp(suffix=".json", dir=workdir)
    os.close(fd)
    cmd = [python, str(WRITER), *args, "--uri", uri, "--out", out, "--artifacts", str(workdir / "writer-artifacts")]
    p = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, cwd=workdir, env=env if env is not None else _clean_env()
    )
    if p.returncode != 0:
        raise RuntimeError(f"the writer ({python}) into {uri} exited {p.returncode}:\n{p.stderr[-3000:]}")
    return json.loads(Path(out).read_text())


# ---------------------------------------------------------------------------------------------
# pytest fixtures (imported into conftest.py)


@pytest.fixture(scope="session")
def legacy_mlflow_factory(request):
    """version -> LegacyMlflow, installed into pytest's cache on first use; the test skips, with
    the reason, when it must install and the package registry cannot be reached."""
    if getattr(request.config, "cache", None) is None:
        pytest.skip("pytest's cache is off (-p no:cacheprovider): the MLflow 2.x venvs live there")
    cache = Path(request.config.cache.mkdir("legacy-mlflow"))

    def get(version: str) -> LegacyMlflow:
        try:
            return legacy_mlflow(version, cache)
        except RegistryUnreachable as e:
            pytest.skip(f"MLflow {version} is not installed under {cache} and cannot be: {e}")

    return get


@pytest.fixture(scope="session", params=LEGACY_VERSIONS, ids=lambda v: f"mlflow-{v}")
def mlflow2(request, legacy_mlflow_factory) -> LegacyMlflow:
    """Each MLflow 2.x of LEGACY_VERSIONS in turn (a test using it runs once per version)."""
    return legacy_mlflow_factory(request.param)


@pytest.fixture(scope="session")
def mlflow2_server(mlflow2, tmp_path_factory):
    """That version's `mlflow server` on sqlite, shared by the session: use unique experiment
    names (the writer's default is unique)."""
    server = mlflow2.server(tmp_path_factory.mktemp(f"mlflow-{mlflow2.version}-server"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mlflow_workspace_server(tmp_path_factory):
    """The installed MLflow's server in workspace mode (`--enable-workspaces`, MLflow >= 3.10) on
    sqlite, shared by the session: workspaces are created with `MlflowClient.create_workspace`
    and chosen per request with the X-MLFLOW-WORKSPACE header (or MLFLOW_WORKSPACE)."""
    server = start_server(sys.executable, tmp_path_factory.mktemp("mlflow-workspaces"), None, ("--enable-workspaces",))
    yield server
    server.stop()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("freeze", "install"):
        print(__doc__)
        return 2
    cmd, version = argv
    if cmd == "freeze":
        with tempfile.TemporaryDirectory(prefix="mlflow-freeze-") as tmp:
            print(freeze(version, Path(tmp)))
        return 0
    got = legacy_mlflow(version, HERE.parent / ".pytest_cache" / "d" / "legacy-mlflow")
    print(got.python, f"(installed in {got.install_s:.0f} s)" if got.install_s else "(cached)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
