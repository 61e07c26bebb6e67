"""The stores of bench/scale.py: generated once per (kind, size) under <out>/stores (PostgreSQL's
in the private cluster under <out>/pg) and reused across invocations, and the fresh working copy
one measurement works on (`WorkStore`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from benchservers import MlflowServer, Postgres
from gen_scale import verify, write_file_store, write_sql_store
from scale_content import GEN_VERSION, RUNNING_ID, points_total

KINDS = ("file", "sqlite", "postgres", "server")


class Stores:
    """Generated stores under <out>/stores (and the PostgreSQL cluster under <out>/pg), reused
    across invocations; `manifest.json` says what each holds (rebuilt when GEN_VERSION moves)."""

    def __init__(self, out: Path, pg: Postgres | None):
        self.dir = out / "stores"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pg = pg
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

    def ensure(self, kind: str, n: int) -> dict[str, Any]:
        """Build (or just confirm) the cached store of one kind and size; the server kind is the
        sqlite one. Returns its manifest entry."""
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
        elif kind == "server":
            dst = self.work / "server" / "mlflow.db"
            dst.parent.mkdir(parents=True)
            shutil.copyfile(self.stores.sqlite(n), dst)
            t = time.perf_counter()
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
