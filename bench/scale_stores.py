"""The stores of bench/scale.py: generated once per (kind, size) under <out>/stores (PostgreSQL's
in the private cluster under <out>/pg) and reused across invocations, and the fresh working copy
one measurement works on (`WorkStore`).

`server2`: an MLflow 2.x `mlflow server` (the venv of `--mlflow2-python`, e.g. the one
`python tests/legacy_mlflow.py install 2.9.2` prints) over a sqlite database that MLflow wrote
with its own schema (gen_scale.py run by that python: the same content as the other kinds)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from benchkit import legacy_env
from benchservers import MlflowServer, Postgres
from gen_scale import verify, write_file_store, write_sql_store
from scale_content import GEN_VERSION, RUNNING_ID, points_total

KINDS = ("file", "sqlite", "postgres", "server")
OPTIONAL_KINDS = ("server2",)  # an MLflow 2.x server: only when asked for, with --mlflow2-python


class Stores:
    """Generated stores under <out>/stores (and the PostgreSQL cluster under <out>/pg), reused
    across invocations; `manifest.json` says what each holds (rebuilt when GEN_VERSION moves)."""

    def __init__(self, out: Path, pg: Postgres | None, mlflow2: Path | None = None):
        self.dir = out / "stores"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pg = pg
        self.mlflow2 = mlflow2  # an MLflow 2.x venv's python, for the server2 kind
        self._mlflow2_version: str | None = None
        self.manifest_path = self.dir / "manifest.json"
        self.manifest: dict[str, Any] = (
            json.loads(self.manifest_path.read_text()) if self.manifest_path.exists() else {}
        )

    def _save(self) -> None:
        self.manifest_path.write_text(json.dumps(self.manifest, indent=2))

    def _ok(self, name: str) -> bool:
        return self.manifest.get(name, {}).get("gen_version") == GEN_VERSION

    def file(self, n: int) -> Path:
        return self.dir / f"file-{n}"

    def sqlite(self, n: int) -> Path:
        return self.dir / f"sqlite-{n}.db"

    @property
    def mlflow2_version(self) -> str:
        if self.mlflow2 is None:
            raise SystemExit("the server2 kind needs --mlflow2-python (an MLflow 2.x venv's python)")
        if self._mlflow2_version is None:
            code = "import mlflow; print(mlflow.__version__)"
            env = legacy_env(self.mlflow2)
            p = subprocess.run([str(self.mlflow2), "-c", code], capture_output=True, text=True, env=env)
            self._mlflow2_version = p.stdout.strip().splitlines()[-1]
        return self._mlflow2_version

    def sqlite2(self, n: int) -> Path:
        return self.dir / f"sqlite-mlflow{self.mlflow2_version}-{n}.db"

    def ensure(self, kind: str, n: int) -> dict[str, Any]:
        """Build (or just confirm) the cached store of one kind and size; the server kind is the
        sqlite one. Returns its manifest entry."""
        if kind == "server2":
            return self._ensure_sqlite2(n)
        if kind == "server":
            kind = "sqlite"
        name = f"{kind}-{n}"
        if kind == "file":
            path = self.file(n)
            if not (self._ok(name) and path.exists()):
                print(f"[gen] file store, {n:,} runs -> {path}", flush=True)
                info = write_file_store(path, n)
                loss = path / info["experiment_id"] / RUNNING_ID / "metrics" / "loss"
                info.update(
                    verify=verify(str(path), n), running_loss_bytes=loss.stat().st_size, running_loss_path=str(loss)
                )
                self.manifest[name] = {
                    **info,
                    "gen_version": GEN_VERSION,
                    "runs": n,
                    "points": points_total(n),
                    "du": du(path),
                }
                self._save()
        elif kind == "sqlite":
            path = self.sqlite(n)
            if not (self._ok(name) and path.exists()):
                print(f"[gen] sqlite store, {n:,} runs -> {path}", flush=True)
                path.unlink(missing_ok=True)
                info = write_sql_store(f"sqlite:///{path}", n, self.dir / f"sqlite-{n}-artifacts")
                against = str(self.file(n)) if self._ok(f"file-{n}") else None
                info["verify"] = verify(info["uri"], n, against=against)
                self.manifest[name] = {
                    **info,
                    "gen_version": GEN_VERSION,
                    "runs": n,
                    "points": points_total(n),
                    "du": du(path),
                }
                self._save()
        elif kind == "postgres":
            assert self.pg is not None
            db = f"scale_{n}"
            if not (self._ok(name) and self.pg.exists(db)):
                print(f"[gen] PostgreSQL store, {n:,} runs -> database {db}", flush=True)
                self.pg.drop(db)
                self.pg.sql(f"CREATE DATABASE {db}")
                info = write_sql_store(self.pg.url(db), n, self.dir / f"postgres-{n}-artifacts")
                against = str(self.file(n)) if self._ok(f"file-{n}") else None
                info["verify"] = verify(info["uri"], n, against=against)
                size = self.pg.sql(f"SELECT pg_size_pretty(pg_database_size('{db}'))")
                self.manifest[name] = {
                    **info,
                    "gen_version": GEN_VERSION,
                    "runs": n,
                    "database": db,
                    "points": points_total(n),
                    "du": size,
                }
                self._save()
        else:
            raise ValueError(kind)
        return self.manifest[name]

    def _ensure_sqlite2(self, n: int) -> dict[str, Any]:
        """The sqlite store written by the MLflow 2.x of --mlflow2-python (its own schema)."""
        assert self.mlflow2 is not None
        path = self.sqlite2(n)
        name = path.stem
        if not (self._ok(name) and path.exists()):
            print(f"[gen] sqlite store of MLflow {self.mlflow2_version}, {n:,} runs -> {path}", flush=True)
            cmd = [str(self.mlflow2), str(Path(__file__).with_name("gen_scale.py")), "--kind", "sqlite"]
            p = subprocess.run(
                [*cmd, "--runs", str(n), "--out", str(path)],
                capture_output=True,
                text=True,
                env=legacy_env(self.mlflow2),
            )
            if p.returncode != 0:
                raise SystemExit(f"gen_scale.py with {self.mlflow2} failed:\n{p.stderr[-3000:]}")
            info = json.loads(p.stdout.strip().splitlines()[-1])
            self.manifest[name] = {
                **info,
                "gen_version": GEN_VERSION,
                "runs": n,
                "points": points_total(n),
                "du": du(path),
                "mlflow": self.mlflow2_version,
            }
            self._save()
        return self.manifest[name]


def du(path: Path) -> str:
    p = subprocess.run(["du", "-sh", str(path)], capture_output=True, text=True)
    return p.stdout.split()[0] if p.stdout else "?"


class WorkStore:
    """The store one session works on: a fresh copy of the cached one (the file store: the
    cache itself, reset). `uri`, and the pid whose process tree serves it (http, PostgreSQL)."""

    def __init__(self, kind: str, n: int, stores: Stores, work: Path):
        self.kind, self.n, self.stores, self.work = kind, n, stores, work
        self.server: MlflowServer | None = None
        self.db: str | None = None
        self.entry = stores.ensure(kind, n)

    def __enter__(self) -> WorkStore:
        kind, n = self.kind, self.n
        if kind == "file":
            self.reset_file()
            self.uri = str(self.stores.file(n))
        elif kind == "sqlite":
            dst = self.work / "store" / "mlflow.db"
            dst.parent.mkdir(parents=True)
            shutil.copyfile(self.stores.sqlite(n), dst)
            self.uri = f"sqlite:///{dst}"
        elif kind == "postgres":
            pg = self.stores.pg
            assert pg is not None
            self.db = "scale_work"
            pg.drop(self.db)
            pg.disconnect(f"scale_{n}")  # a template must have no sessions (this process verified it)
            pg.sql(f"CREATE DATABASE {self.db} TEMPLATE scale_{n}")
            self.uri = pg.url(self.db)
        elif kind in ("server", "server2"):
            dst = self.work / "server" / "mlflow.db"
            dst.parent.mkdir(parents=True)
            legacy = self.stores.mlflow2 if kind == "server2" else None
            shutil.copyfile(self.stores.sqlite2(n) if legacy else self.stores.sqlite(n), dst)
            t = time.perf_counter()
            if legacy is not None:
                self.server = MlflowServer(dst, self.work / "server", legacy, legacy_env(legacy)).start()
            else:
                self.server = MlflowServer(dst, self.work / "server").start()
            self.server_start_s = round(time.perf_counter() - t, 1)
            self.uri = self.server.uri
        return self

    def reset_file(self) -> None:
        """Undo what a session did to the cached file store: the RUNNING run's `loss` back to its
        50,000 lines, run folders the latency part added removed."""
        e = self.entry
        loss = Path(e["running_loss_path"])
        if loss.stat().st_size != e["running_loss_bytes"]:
            with open(loss, "r+b") as fh:
                fh.truncate(e["running_loss_bytes"])
        exp_dir = loss.parents[2]
        for d in exp_dir.iterdir():
            if d.is_dir() and (d / "tags" / "bench").exists() and (d / "tags" / "bench").read_text() == "latency":
                shutil.rmtree(d)

    def serving_pid(self) -> int | None:
        if self.server is not None:
            return self.server.pid
        if self.kind == "postgres" and self.stores.pg is not None:
            return self.stores.pg.postmaster_pid()
        return None

    def __exit__(self, *exc) -> None:
        if self.server is not None:
            self.server.stop()
        if self.db and self.stores.pg is not None:
            self.stores.pg.drop(self.db)
        if self.kind == "file":
            self.reset_file()
