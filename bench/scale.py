#!/usr/bin/env python
"""Scale benchmark: what a round costs as the store grows, for every kind of store the syncer
reads (a file store, sqlite, PostgreSQL, an `mlflow server` over sqlite), at 100 / 1,000 /
5,000 finished Trainer-shaped runs (bench/gen_scale.py) plus one RUNNING run with a 50,000-point
`loss` history.

Run with the project venv from the repository root (or from a snapshot copy of it: everything
here, the `python -m syncer` children included, imports `syncer` from the tree this file is in)::

    .venv/bin/python bench/scale.py gen                      # build / verify the cached stores
    .venv/bin/python bench/scale.py run                      # every (kind, size): the main tables
    .venv/bin/python bench/scale.py run --sizes 100,1000 --kinds file,sqlite --passes 2
    .venv/bin/python bench/scale.py latency                  # log -> visible, 1,000-run file store
    .venv/bin/python bench/scale.py history-options          # get-history vs bulk-interval, 50k points
    .venv/bin/python bench/scale.py report                   # markdown tables from results.jsonl

Per (kind, size), one *session* (`run`): a fresh working copy of the cached store (file: the
cache itself, its RUNNING run's `loss` file truncated back to 50,000 lines; sqlite and the
server: a copy of the database file; PostgreSQL: `CREATE DATABASE ... TEMPLATE` the cached
one), then

1. backfill: `python -m syncer backfill --mlflow-tracking-uri URI --aim-repo REPO` into a new
   repo, the whole process timed (wall, CPU of it and its waited-for workers, peak RSS from
   `wait4`); points/s = points written / wall;
2. in-process rounds, in a fresh interpreter, exactly what the daemon does (`open_syncer(...,
   keep_open=True)`, `Syncer.round()`), with `full_scan_interval` out of the way so that only
   asked-for rounds are full: one first (full) round, `--idle` quick rounds of the unchanged
   store, then `--warm` + `--points` times (log ONE point to the RUNNING run through
   `MlflowClient`, time one round), then `--full` rounds with `full=True`; each round's wall
   and process CPU and the source's read counters (`RoundStats.read`);
3. the daemon: `python -m syncer sync ... --interval 1` (default full listing every 60 s, file
   events on); after its first round + 5 s, its CPU (utime+stime from /proc) over
   `--daemon-seconds` (60), which therefore holds one full listing; peak RSS (VmHWM) and the
   rounds it logged in that window; for http and PostgreSQL also the CPU the server / the
   database processes spent meanwhile.

`os.getloadavg()` is recorded at the start and end of every measurement. Results are appended
as JSON lines to `<out>/results.jsonl` (one line per session or part); `report` renders the
latest of each as the tables of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))  # `import syncer` from this tree, never an editable install elsewhere

os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import gen_scale as G  # noqa: E402

PY = ROOT / ".venv" / "bin" / "python"
if not PY.exists():
    PY = Path(sys.executable)
KINDS = ("file", "sqlite", "postgres", "server")
SIZES = (100, 1000, 5000)
INT32_MAX = 2**31 - 1


# --------------------------------------------------------------------------- small helpers


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(-(-q * len(s) // 100)) - 1))
    return s[k]


def summ(xs: list[float]) -> dict[str, Any]:
    if not xs:
        return {"n": 0}
    return {
        "n": len(xs),
        "p50": round(statistics.median(xs), 5),
        "p90": round(pct(xs, 90), 5),
        "p95": round(pct(xs, 95), 5),
        "min": round(min(xs), 5),
        "max": round(max(xs), 5),
        "mean": round(statistics.fmean(xs), 5),
    }


def env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "MLFLOW_ALLOW_FILE_STORE": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "GIT_PYTHON_REFRESH": "quiet",
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def git_state() -> str:
    """HEAD of the tree this runs from (a snapshot copy has the original's .git), and whether
    syncer/ differs from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "syncer"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip()
        return head + (" (syncer/ modified)" if dirty else "")
    except OSError:
        return "unknown"


def syncer_file() -> str:
    p = subprocess.run(
        [str(PY), "-c", "import syncer; print(syncer.__file__)"], capture_output=True, text=True, cwd=ROOT, env=env()
    )
    return p.stdout.strip()


def proc_cpu(pid: int) -> float:
    """utime + stime of one process, seconds (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tck


def tree_cpu(pid: int | None) -> float | None:
    """CPU seconds of a process and all its live descendants (psutil); None without a pid."""
    if pid is None:
        return None
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def vm_hwm_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


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


class Lines:
    """A child's output lines, stamped with time.monotonic() on arrival, parsed as JSON where
    they are, teed to a log file."""

    def __init__(self, stream, log_path: Path):
        self.items: list[tuple[float, Any]] = []
        self.cond = threading.Condition()
        self._log = open(log_path, "w")
        self._t = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._t.start()

    def _pump(self, stream) -> None:
        for line in iter(stream.readline, ""):
            t = time.monotonic()
            self._log.write(line)
            self._log.flush()
            item: Any = line.rstrip("\n")
            try:
                item = json.loads(line)
            except ValueError:
                pass
            with self.cond:
                self.items.append((t, item))
                self.cond.notify_all()
        self._log.close()

    def wait_for(self, pred, timeout: float, after: float = 0.0) -> tuple[float, Any] | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for t, x in self.items:
                    if t >= after and pred(x):
                        return t, x
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def join(self, timeout: float = 5) -> None:
        self._t.join(timeout)


def is_round(x: Any) -> bool:
    return isinstance(x, dict) and x.get("event") == "round"


def msg(x: Any) -> str:
    return x.get("message", "") if isinstance(x, dict) else str(x)


def stop_child(p: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 60) -> dict[str, Any]:
    """Stop a child we started (by its pid); its rusage."""
    if p.poll() is not None:
        return {"rc": p.returncode}
    p.send_signal(sig)
    deadline = time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            return {
                "rc": p.returncode,
                "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
                "max_rss_mb": round(ru.ru_maxrss / 1024, 1),
            }
        if time.monotonic() > deadline:
            p.kill()
            deadline = time.monotonic() + 10
        time.sleep(0.05)


def syncer_cmd(*args: str) -> list[str]:
    return [str(PY), "-m", "syncer", *args]


# --------------------------------------------------------------------------- PostgreSQL, the MLflow server


def _postgres_class():
    sys.path.insert(0, str(ROOT / "tests"))
    from postgres import Postgres  # tests/postgres.py: the throwaway server of the tests

    return Postgres


class BenchPostgres:
    """tests/postgres.py's server, but with its data folder kept under <out>/pg so that the
    generated databases survive between invocations (initdb only the first time)."""

    def __init__(self, folder: Path):
        cls = _postgres_class()

        class Kept(cls):  # type: ignore[misc, valid-type]
            def __init__(self, port: int, folder: Path):
                super().__init__(port)
                shutil.rmtree(self.dir, ignore_errors=True)  # the temp folder the tests' class made
                self.dir = folder
                self.data = folder / "data"
                folder.mkdir(parents=True, exist_ok=True)
                if self.user:
                    import pwd

                    pw = pwd.getpwnam(self.user)
                    os.chown(folder, pw.pw_uid, pw.pw_gid)

            def start(self):
                if not (self.data / "PG_VERSION").exists():
                    self._run(
                        "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"
                    )
                opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
                self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "server.log"), "-o", opts, "-w", "start")
                deadline = time.monotonic() + 60
                while self._run("pg_isready", "-h", "127.0.0.1", "-p", str(self.port), check=False).returncode:
                    if time.monotonic() > deadline:
                        raise TimeoutError("PostgreSQL did not become ready")
                    time.sleep(0.2)
                return self

            def stop(self):  # keeps the data folder
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "stop", check=False)

        self.pg = Kept(free_port(), folder)

    def start(self) -> BenchPostgres:
        self.pg.start()
        return self

    def stop(self) -> None:
        self.pg.stop()

    def url(self, db: str) -> str:
        return self.pg.url(db)

    def sql(self, statement: str, db: str = "postgres") -> str:
        return self.pg.sql(statement, db)

    def exists(self, db: str) -> bool:
        return self.sql(f"SELECT 1 FROM pg_database WHERE datname = '{db}'") == "1"

    def disconnect(self, db: str) -> None:
        self.sql(f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{db}'")

    def drop(self, db: str) -> None:
        self.sql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.pg.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None


class MlflowServer:
    """`mlflow server` over a sqlite database, one uvicorn worker, on a free port of 127.0.0.1."""

    def __init__(self, db: Path, workdir: Path):
        self.db, self.workdir = db, workdir
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> MlflowServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "server.log", "ab")
        self.proc = subprocess.Popen(
            [
                str(PY),
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--backend-store-uri",
                f"sqlite:///{self.db}",
                "--artifacts-destination",
                str(self.workdir / "artifacts"),
                "--workers",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
            env=env(),
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


# --------------------------------------------------------------------------- the cached stores


class Stores:
    """Generated stores under <out>/stores (and the PostgreSQL cluster under <out>/pg), reused
    across invocations; `manifest.json` says what each holds (rebuilt when GEN_VERSION moves)."""

    def __init__(self, out: Path, pg: BenchPostgres | None):
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
        return self.manifest.get(name, {}).get("gen_version") == G.GEN_VERSION

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
                info = G.write_file_store(path, n)
                loss = path / info["experiment_id"] / G.RUNNING_ID / "metrics" / "loss"
                info.update(
                    verify=G.verify(str(path), n), running_loss_bytes=loss.stat().st_size, running_loss_path=str(loss)
                )
                self.manifest[name] = {
                    **info,
                    "gen_version": G.GEN_VERSION,
                    "runs": n,
                    "points": G.points_total(n),
                    "du": du(path),
                }
                self._save()
        elif kind == "sqlite":
            path = self.sqlite(n)
            if not (self._ok(name) and path.exists()):
                print(f"[gen] sqlite store, {n:,} runs -> {path}", flush=True)
                path.unlink(missing_ok=True)
                info = G.write_sql_store(f"sqlite:///{path}", n, self.dir / f"sqlite-{n}-artifacts")
                against = str(self.file(n)) if self._ok(f"file-{n}") else None
                info["verify"] = G.verify(info["uri"], n, against=against)
                self.manifest[name] = {
                    **info,
                    "gen_version": G.GEN_VERSION,
                    "runs": n,
                    "points": G.points_total(n),
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
                info = G.write_sql_store(self.pg.url(db), n, self.dir / f"postgres-{n}-artifacts")
                against = str(self.file(n)) if self._ok(f"file-{n}") else None
                info["verify"] = G.verify(info["uri"], n, against=against)
                size = self.pg.sql(f"SELECT pg_size_pretty(pg_database_size('{db}'))")
                self.manifest[name] = {
                    **info,
                    "gen_version": G.GEN_VERSION,
                    "runs": n,
                    "database": db,
                    "points": G.points_total(n),
                    "du": size,
                }
                self._save()
        else:
            raise ValueError(kind)
        return self.manifest[name]


def du(path: Path) -> str:
    p = subprocess.run(["du", "-sh", str(path)], capture_output=True, text=True)
    return p.stdout.split()[0] if p.stdout else "?"


# --------------------------------------------------------------------------- a session's working store


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


# --------------------------------------------------------------------------- the measurements


def measure_backfill(ws: WorkStore, repo: Path, logs: Path) -> dict[str, Any]:
    cmd = syncer_cmd("backfill", "--mlflow-tracking-uri", ws.uri, "--aim-repo", str(repo))
    serving = ws.serving_pid()
    srv0 = tree_cpu(serving) if ws.kind == "server" else None
    l0 = load()
    with open(logs / "backfill.log", "w") as out:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env())
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
    text = (logs / "backfill.log").read_text()
    rc = os.waitstatus_to_exitcode(status)
    m = re.search(r"backfill: .*?(\d+) runs \((\d+) updated\), (\d+) points", text)
    points = int(m.group(3)) if m else None
    res = {
        "rc": rc,
        "wall_s": round(wall, 2),
        "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
        "max_rss_mb": round(ru.ru_maxrss / 1024, 1),
        "points": points,
        "points_expected": G.points_total(ws.n),
        "runs_written": int(m.group(2)) if m else None,
        "points_per_s": round(points / wall) if points else None,
        "summary": next((ln for ln in text.splitlines() if ln.startswith("backfill:")), None),
        "load_start": l0,
        "load_end": load(),
    }
    if srv0 is not None:
        res["server_cpu_s"] = round(tree_cpu(serving) - srv0, 2)
    if rc != 0:
        res["tail"] = text[-3000:]
    return res


def measure_inproc(ws: WorkStore, repo: Path, logs: Path, args) -> dict[str, Any]:
    cmd = [
        str(PY),
        str(BENCH / "scale.py"),
        "_inproc",
        "--uri",
        ws.uri,
        "--repo",
        str(repo),
        "--idle",
        str(args.idle),
        "--points",
        str(args.points),
        "--warm",
        str(args.warm),
        "--full",
        str(args.full),
        "--first-step",
        str(G.HISTORY),
    ]
    if args.profile:
        cmd += ["--profile", str(logs / "profile")]
    l0 = load()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env())
    (logs / "inproc.log").write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        return {"rc": p.returncode, "tail": (p.stdout + p.stderr)[-3000:], "load_start": l0, "load_end": load()}
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res.update(load_start=l0, load_end=load())
    return res


def measure_daemon(ws: WorkStore, repo: Path, logs: Path, seconds: float) -> dict[str, Any]:
    cmd = syncer_cmd(
        "sync",
        "--mlflow-tracking-uri",
        ws.uri,
        "--aim-repo",
        str(repo),
        "--interval",
        "1",
        "--log-level",
        "debug",
        "--log-format",
        "json",
    )
    serving = ws.serving_pid()
    l0 = load()
    t_start = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env())
    lines = Lines(p.stderr, logs / "daemon.log")
    res: dict[str, Any] = {"command": " ".join(cmd[1:])}
    try:
        first = lines.wait_for(is_round, timeout=1800)
        if first is None:
            raise RuntimeError(f"the daemon logged no round; see {logs / 'daemon.log'}")
        res["first_round"] = {
            "after_start_s": round(first[0] - t_start, 2),
            "seconds": first[1]["round"]["seconds"],
            "read": first[1]["round"]["read"],
        }
        time.sleep(5)
        l1 = load()
        c0, s0, t0 = proc_cpu(p.pid), tree_cpu(serving), time.monotonic()
        time.sleep(seconds)
        c1, s1, t1 = proc_cpu(p.pid), tree_cpu(serving), time.monotonic()
        res.update(
            window_s=round(t1 - t0, 2),
            cpu_s=round(c1 - c0, 3),
            cpu_pct=round(100 * (c1 - c0) / (t1 - t0), 2),
            vm_hwm_mb=vm_hwm_mb(p.pid),
            load_start=l0,
            load_window_start=l1,
            load_end=load(),
        )
        if s0 is not None and s1 is not None:
            res["serving_cpu_s"] = round(s1 - s0, 3)
            res["serving_cpu_pct"] = round(100 * (s1 - s0) / (t1 - t0), 2)
        rounds = [x["round"] for t, x in lines.items if is_round(x) and t0 <= t <= t1]
        full = [r for r in rounds if r["read"].get("full")]
        quick = [r for r in rounds if not r["read"].get("full")]
        res["rounds"] = {
            "n": len(rounds),
            "full": len(full),
            "full_seconds": [r["seconds"] for r in full],
            "quick_seconds": summ([r["seconds"] for r in quick]),
            "quick_read_last": quick[-1]["read"] if quick else None,
        }
    finally:
        res["exit"] = stop_child(p)
        lines.join()
    return res


def session(kind: str, n: int, stores: Stores, out: Path, args, pass_no: int) -> dict[str, Any]:
    work = out / "work" / f"{kind}-{n}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    logs = out / "logs" / f"p{pass_no}-{kind}-{n}"
    if logs.exists():
        shutil.rmtree(logs)
    logs.mkdir(parents=True)
    repo = work / "aim"
    res: dict[str, Any] = {
        "part": "session",
        "kind": kind,
        "runs": n,
        "pass": pass_no,
        "started": now_iso(),
        "git": git_state(),
        "root": str(ROOT),
        "load_start": load(),
        "nproc": os.cpu_count(),
    }
    t = time.perf_counter()
    with WorkStore(kind, n, stores, work) as ws:
        res["store"] = {k: ws.entry.get(k) for k in ("du", "points", "runs", "seconds")}
        if ws.server is not None:
            res["server_start_s"] = ws.server_start_s
        print(f"[{kind}-{n}] backfill ...", flush=True)
        res["backfill"] = measure_backfill(ws, repo, logs)
        b = res["backfill"]
        print(
            f"[{kind}-{n}] backfill {b['wall_s']} s, {b['points_per_s']} points/s, {b['max_rss_mb']} MiB, "
            f"rc {b['rc']}, load {b['load_end']}",
            flush=True,
        )
        if b["rc"] == 0:
            print(f"[{kind}-{n}] rounds in-process ...", flush=True)
            res["inproc"] = r = measure_inproc(ws, repo, logs, args)
            if "idle" in r:
                print(
                    f"[{kind}-{n}] idle p50 {r['idle']['wall']['p50'] * 1000:.1f} ms, one point p50 "
                    f"{r['one_point']['wall']['p50'] * 1000:.1f} ms, "
                    f"full p50 {r['full']['wall']['p50'] * 1000:.0f} ms; "
                    f"load {r['load_end']}",
                    flush=True,
                )
            else:
                print(f"[{kind}-{n}] in-process part failed: {r.get('tail', '')[-800:]}", flush=True)
            if args.daemon_seconds > 0:
                print(f"[{kind}-{n}] daemon, {args.daemon_seconds} s ...", flush=True)
                res["daemon"] = d = measure_daemon(ws, repo, logs, args.daemon_seconds)
                print(
                    f"[{kind}-{n}] daemon CPU {d.get('cpu_pct')} % over {d.get('window_s')} s "
                    f"({d.get('rounds', {}).get('n')} rounds, {d.get('rounds', {}).get('full')} full), "
                    f"VmHWM {d.get('vm_hwm_mb')} MiB; load {d.get('load_end')}",
                    flush=True,
                )
    res["seconds"] = round(time.perf_counter() - t, 1)
    res["load_end"] = load()
    shutil.rmtree(work, ignore_errors=True)
    return res


def append_result(out: Path, res: dict[str, Any]) -> None:
    with open(out / "results.jsonl", "a") as fh:
        fh.write(json.dumps(res) + "\n")


# --------------------------------------------------------------------------- in-process rounds (child)


def inproc_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="scale.py _inproc")
    ap.add_argument("--uri", required=True)
    ap.add_argument("--repo", required=True)
    ap.add_argument("--idle", type=int, default=30)
    ap.add_argument("--points", type=int, default=25)
    ap.add_argument("--warm", type=int, default=3)
    ap.add_argument("--full", type=int, default=5)
    ap.add_argument("--first-step", type=int, required=True)
    ap.add_argument("--profile", default=None, help="folder: cProfile a few rounds of each sort there")
    a = ap.parse_args(argv)
    import syncer
    from mlflow import MlflowClient
    from mlflow.entities import Metric
    from syncer.config import Config
    from syncer.logs import configure_logging
    from syncer.runner import open_syncer

    configure_logging("warning")
    client = MlflowClient(tracking_uri=a.uri)
    t = time.perf_counter()
    s = open_syncer(
        Config(tracking_uri=a.uri, aim_repo=Path(a.repo), full_scan_interval=1e9),
        strict_experiments=False,
        must_exist=True,
        keep_open=True,
    )
    open_s = time.perf_counter() - t

    def timed(full: bool = False) -> dict[str, Any]:
        c0, t0 = time.process_time(), time.perf_counter()
        st = s.round(full=full)
        return {
            "wall": time.perf_counter() - t0,
            "cpu": time.process_time() - c0,
            "read": st.read,
            "points": st.points,
            "runs_written": st.runs_written,
            "errors": len(st.errors),
        }

    prof = None
    if a.profile:
        import cProfile

        Path(a.profile).mkdir(parents=True, exist_ok=True)
        prof = cProfile.Profile

    def profiled(name: str, fn, n: int = 5) -> None:
        if prof is None:
            return
        import pstats

        p = prof()
        p.enable()
        for _ in range(n):
            fn()
        p.disable()
        with open(Path(a.profile) / f"{name}.txt", "w") as fh:
            pstats.Stats(p, stream=fh).sort_stats("cumulative").print_stats(45)

    first = timed()
    idle = [timed() for _ in range(a.idle)]
    profiled("idle", lambda: s.round())
    step = a.first_step
    one = []
    for i in range(a.warm + a.points):
        client.log_batch(G.RUNNING_ID, metrics=[Metric("loss", 0.5, int(time.time() * 1000), step)])
        step += 1
        r = timed()
        if i >= a.warm:
            one.append(r)

    def log_and_round():
        nonlocal step
        client.log_batch(G.RUNNING_ID, metrics=[Metric("loss", 0.5, int(time.time() * 1000), step)])
        step += 1
        s.round()

    profiled("one_point", log_and_round)
    full = [timed(full=True) for _ in range(a.full)]
    profiled("full", lambda: s.round(full=True), n=2)
    t = time.perf_counter()
    s.close()
    close_s = time.perf_counter() - t

    def block(rs: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "wall": summ([r["wall"] for r in rs]),
            "cpu": summ([r["cpu"] for r in rs]),
            "read": rs[-1]["read"] if rs else None,
            "any_full": any(r["read"].get("full") for r in rs),
            "points_written": sorted({r["points"] for r in rs}),
            "errors": sum(r["errors"] for r in rs),
            "all_ms": [round(r["wall"] * 1000, 2) for r in rs],
        }

    print(
        json.dumps(
            {
                "syncer": syncer.__file__,
                "open_s": round(open_s, 3),
                "first": {k: v for k, v in first.items()},
                "idle": block(idle),
                "one_point": block(one),
                "full": block(full),
                "close_s": round(close_s, 3),
                "last_step": step - 1,
            }
        )
    )
    return 0


# --------------------------------------------------------------------------- latency (file store, events on)


def latency_part(stores: Stores, out: Path, args) -> dict[str, Any]:
    """A 1,000-run file store, already synced; `syncer sync --interval 10` (file events on);
    a new RUNNING run that the bench logs into (`--phases`: period:points, one after the other,
    same daemon); bench/live.py's reader polls Aim for the new steps every 50 ms."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    n = args.size
    work = out / "work" / f"latency-{n}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    logs = out / "logs" / f"latency-{n}"
    if logs.exists():
        shutil.rmtree(logs)
    logs.mkdir(parents=True)
    repo = work / "aim"
    res: dict[str, Any] = {
        "part": "latency",
        "kind": "file",
        "runs": n,
        "started": now_iso(),
        "git": git_state(),
        "root": str(ROOT),
        "load_start": load(),
    }
    with WorkStore("file", n, stores, work) as ws:
        res["backfill"] = measure_backfill(ws, repo, logs)
        client = MlflowClient(tracking_uri=ws.uri)
        exp = client.get_experiment_by_name(G.EXPERIMENT)
        rid = client.create_run(exp.experiment_id, run_name="latency-writer", tags={"bench": "latency"}).info.run_id
        logged_at: dict[int, float] = {}
        points: dict[int, tuple[float, int]] = {}
        ts = int(time.time() * 1000)
        client.log_batch(rid, metrics=[Metric("loss", 1.0, ts, 0)])
        points[0] = (1.0, ts)
        cmd = syncer_cmd(
            "sync",
            "--mlflow-tracking-uri",
            ws.uri,
            "--aim-repo",
            str(repo),
            "--interval",
            "10",
            "--log-level",
            "debug",
            "--log-format",
            "json",
        )
        daemon = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env()
        )
        dlog = Lines(daemon.stderr, logs / "daemon.log")
        reader = None
        try:
            if not (dlog.wait_for(is_round, 600) and dlog.wait_for(lambda x: msg(x).startswith("watching "), 60)):
                raise RuntimeError(f"the daemon did not come up; see {logs}")
            reader = subprocess.Popen(
                [
                    str(PY),
                    str(BENCH / "live.py"),
                    "_reader",
                    "--repo",
                    str(repo),
                    "--run-id",
                    rid,
                    "--hash-from",
                    "ours",
                    "--poll-sleep",
                    "0.05",
                ],
                stdout=subprocess.PIPE,
                stderr=open(logs / "reader.stderr", "w"),
                text=True,
                cwd=ROOT,
                env=env(),
            )
            rlog = Lines(reader.stdout, logs / "reader.log")
            if not rlog.wait_for(lambda x: isinstance(x, dict) and 0 in x.get("new", ()), 300):
                raise RuntimeError(f"the reader never saw step 0; see {logs}")
            time.sleep(1.0)
            step = 1
            phases = []
            for spec in args.phases:
                period, count = float(spec.split(":")[0]), int(spec.split(":")[1])
                l0 = load()
                t_start = time.monotonic()
                first_step = step
                for k in range(count):
                    delay = t_start + k * period - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    points[step] = (1.0 / (step + 1), int(time.time() * 1000))
                    client.log_batch(rid, metrics=[Metric("loss", points[step][0], points[step][1], step)])
                    logged_at[step] = time.monotonic()
                    step += 1
                t_end = time.monotonic()
                phases.append(
                    {
                        "period_s": period,
                        "points": count,
                        "steps": (first_step, step - 1),
                        "t": (t_start, t_end),
                        "load_start": l0,
                        "load_end": load(),
                        "achieved_period_s": round((t_end - t_start) / max(1, count - 1), 4),
                    }
                )
            wanted = set(logged_at)

            def seen() -> set[int]:
                s: set[int] = set()
                for _, x in rlog.items:
                    if isinstance(x, dict):
                        s.update(x.get("new", ()))
                return s

            deadline = time.monotonic() + 20
            while not wanted <= seen() and time.monotonic() < deadline:
                time.sleep(0.2)
            first_seen: dict[int, float] = {}
            for _, x in rlog.items:
                if isinstance(x, dict) and "new" in x:
                    for st in x["new"]:
                        first_seen.setdefault(st, x["t1"])
            for ph in phases:
                a, b = ph["steps"]
                lat = [first_seen[i] - logged_at[i] for i in range(a, b + 1) if i in first_seen]
                t_start, t_end = ph.pop("t")
                rounds = [x["round"] for t, x in dlog.items if is_round(x) and t_start <= t <= t_end + 2]
                ph.update(
                    latency_s=summ(lat),
                    missing=[i for i in range(a, b + 1) if i not in first_seen][:20],
                    rounds=len(rounds),
                    full_rounds=sum(1 for r in rounds if r["read"].get("full")),
                    round_seconds=summ([r["seconds"] for r in rounds]),
                    full_round_seconds=[r["seconds"] for r in rounds if r["read"].get("full")],
                )
            res["phases"] = phases
        finally:
            if reader is not None:
                res["reader"] = stop_child(reader)
            res["daemon"] = stop_child(daemon)
            dlog.join()
        from live import verify_points

        h = __import__("hashlib").sha256(f"mlflow-run:{rid}".encode()).hexdigest()[:24]
        res["aim_content"] = verify_points(repo, h, points)
    res["load_end"] = load()
    shutil.rmtree(work, ignore_errors=True)
    return res


# --------------------------------------------------------------------------- history options (http)


def history_options_part(stores: Stores, out: Path, args) -> dict[str, Any]:
    """Through a real `mlflow server` (over a copy of the sqlite store), reading the new points of
    the RUNNING run's 50,000-point `loss`: a get-history page from an offset (the page token is
    MLflow's base64 {"offset": N}), vs get-history-bulk-interval from a start step; and, for
    scale, reading the whole history with get-history pages of 25,000. Per request: wall (the
    client's, server included), the client's CPU, the server's CPU (its process tree)."""
    import base64

    from mlflow import MlflowClient

    sys.path.insert(0, str(ROOT))
    from syncer.sources.mlflow_compat import RestInternals

    n = args.size
    work = out / "work" / f"history-{n}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    res: dict[str, Any] = {
        "part": "history-options",
        "runs": n,
        "started": now_iso(),
        "git": git_state(),
        "load_start": load(),
        "reps": args.reps,
    }
    with WorkStore("server", n, stores, work) as ws:
        client = MlflowClient(tracking_uri=ws.uri)
        rest = RestInternals(client)
        pid = ws.serving_pid()
        total = G.HISTORY

        def token(offset: int) -> str:
            return base64.b64encode(json.dumps({"offset": offset}).encode()).decode()

        cases = {}
        for k in args.new:
            cases[f"get-history page from offset, {k} new"] = (
                lambda k=k: len(rest.history_page(G.RUNNING_ID, "loss", 25_000, token(total - k))),
                k,
            )
            cases[f"bulk-interval from start step, {k} new"] = (
                lambda k=k: len(rest.bulk_interval(G.RUNNING_ID, "loss", total - k, INT32_MAX, 2500)),
                k,
            )
        cases["get-history, whole history (2 pages of 25,000)"] = (lambda: sum(len(p) for p in _all_pages(rest)), total)
        cases["bulk-interval, whole range (sampled to 2,500)"] = (
            lambda: len(rest.bulk_interval(G.RUNNING_ID, "loss", 0, INT32_MAX, 2500)),
            2500,
        )
        for fn, _ in cases.values():  # warm the server (imports, caches)
            fn()
        samples: dict[str, dict[str, list[float]]] = {
            c: {"wall": [], "client_cpu": [], "server_cpu": []} for c in cases
        }
        got: dict[str, int] = {}
        for _ in range(args.reps):  # interleaved: one of each per repetition
            for name, (fn, _k) in cases.items():
                s0, c0, t0 = tree_cpu(pid), time.process_time(), time.perf_counter()
                got[name] = fn()
                t1, c1, s1 = time.perf_counter(), time.process_time(), tree_cpu(pid)
                samples[name]["wall"].append(t1 - t0)
                samples[name]["client_cpu"].append(c1 - c0)
                samples[name]["server_cpu"].append(s1 - s0)
        res["cases"] = {
            name: {"points_returned": got[name], **{k: summ(v) for k, v in d.items()}} for name, d in samples.items()
        }
    res["load_end"] = load()
    shutil.rmtree(work, ignore_errors=True)
    return res


def _all_pages(rest) -> list:
    pages, tok = [], None
    while True:
        page = rest.history_page(G.RUNNING_ID, "loss", 25_000, tok)
        pages.append(page)
        tok = page.token
        if not tok:
            return pages


# --------------------------------------------------------------------------- report


def latest(out: Path) -> list[dict[str, Any]]:
    p = out / "results.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


def fmt_ms(x: float | None) -> str:
    if x is None:
        return "—"
    x *= 1000
    return f"{x:.1f}" if x < 100 else f"{x:,.0f}"


def report(out: Path, since: str | None = None) -> str:
    rows = [r for r in latest(out) if since is None or r.get("started", "") >= since]
    sessions = [r for r in rows if r.get("part") == "session"]
    lines: list[str] = []
    by: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in sessions:
        by.setdefault((r["kind"], r["runs"]), []).append(r)
    order = sorted(by, key=lambda k: (k[1], KINDS.index(k[0])))
    lines.append(
        "| store | runs | idle round p50 / p90 ms | full-listing round p50 ms | one new point p50 / p90 ms "
        "| backfill s | points/s | backfill peak RSS MiB | daemon CPU % (60 s, --interval 1) "
        "| daemon peak RSS MiB | load (1-min) start → end |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for key in order:
        for r in by[key]:
            b, i, d = r.get("backfill", {}), r.get("inproc", {}), r.get("daemon", {})
            idle, one, full = (
                i.get("idle", {}).get("wall", {}),
                i.get("one_point", {}).get("wall", {}),
                i.get("full", {}).get("wall", {}),
            )
            srv = f" (+{d['serving_cpu_pct']} % server)" if d.get("serving_cpu_pct") is not None else ""
            lines.append(
                f"| {key[0]} | {key[1]:,} | {fmt_ms(idle.get('p50'))} / {fmt_ms(idle.get('p90'))} | "
                f"{fmt_ms(full.get('p50'))} | {fmt_ms(one.get('p50'))} / {fmt_ms(one.get('p90'))} | "
                f"{b.get('wall_s', '—')} | {b.get('points_per_s') or 0:,} | {b.get('max_rss_mb', '—')} | "
                f"{d.get('cpu_pct', '—')}{srv} | {d.get('vm_hwm_mb', '—')} | "
                f"{r['load_start'][0]} → {r['load_end'][0]} |"
            )
    lines.append("")
    lines.append(
        "Read counters of the last round of each sort (runs_listed / runs_read / histories / points / requests / rows):"
    )
    lines.append("")
    lines.append("| store | runs | idle | one new point | full listing |")
    lines.append("|---|---|---|---|---|")

    def rc(x: dict[str, Any] | None) -> str:
        if not x:
            return "—"
        return "/".join(
            str(x.get(k, 0)) for k in ("runs_listed", "runs_read", "histories", "points", "requests", "rows")
        )

    for key in order:
        r = by[key][-1]
        i = r.get("inproc", {})
        lines.append(
            f"| {key[0]} | {key[1]:,} | {rc(i.get('idle', {}).get('read'))} | "
            f"{rc(i.get('one_point', {}).get('read'))} | {rc(i.get('full', {}).get('read'))} |"
        )
    for r in rows:
        if r.get("part") == "latency":
            lines.append("")
            lines.append(
                f"Latency, log → visible in Aim, file store of {r['runs']:,} runs, events on "
                f"(`sync --interval 10`), Aim content ok: {r.get('aim_content', {}).get('ok')}:"
            )
            lines.append("")
            lines.append("| writer period | points | p50 ms | p95 ms | max ms | rounds (full) | load start → end |")
            lines.append("|---|---|---|---|---|---|---|")
            for ph in r.get("phases", []):
                lat = ph["latency_s"]
                lines.append(
                    f"| {ph['period_s'] * 1000:.0f} ms (achieved {ph['achieved_period_s'] * 1000:.0f}) "
                    f"| {ph['points']} | {fmt_ms(lat.get('p50'))} | {fmt_ms(lat.get('p95'))} | "
                    f"{fmt_ms(lat.get('max'))} | {ph['rounds']} ({ph['full_rounds']}) | "
                    f"{ph['load_start'][0]} → {ph['load_end'][0]} |"
                )
        if r.get("part") == "history-options":
            lines.append("")
            lines.append(
                f"History options (server over sqlite, {r['runs']:,}-run store, RUNNING run's 50,000-point "
                f"`loss`, {r['reps']} requests each, interleaved; load {r['load_start'][0]} → "
                f"{r['load_end'][0]}):"
            )
            lines.append("")
            lines.append("| request | points returned | wall p50 / p90 ms | server CPU mean ms | client CPU mean ms |")
            lines.append("|---|---|---|---|---|")
            for name, c in r["cases"].items():  # CPU from /proc in 10 ms ticks: means, not medians
                lines.append(
                    f"| {name} | {c['points_returned']:,} | {fmt_ms(c['wall']['p50'])} / "
                    f"{fmt_ms(c['wall']['p90'])} | {fmt_ms(c['server_cpu']['mean'])} | "
                    f"{fmt_ms(c['client_cpu']['mean'])} |"
                )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_inproc":
        return inproc_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=("gen", "run", "latency", "history-options", "report"))
    ap.add_argument("--out", default=str(BENCH / "out" / "scale"), help="caches, logs, results.jsonl")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--passes", type=int, default=1, help="repeat every (kind, size) session, interleaved")
    ap.add_argument("--idle", type=int, default=30, help="idle rounds timed per session")
    ap.add_argument("--points", type=int, default=25, help="one-new-point rounds timed per session")
    ap.add_argument("--warm", type=int, default=3, help="one-new-point rounds before those timed")
    ap.add_argument("--full", type=int, default=5, help="full-listing rounds timed per session")
    ap.add_argument("--daemon-seconds", type=float, default=60)
    ap.add_argument("--profile", action="store_true", help="also cProfile a few rounds (logs/<session>/profile)")
    ap.add_argument("--size", type=int, default=1000, help="latency / history-options: the store size")
    ap.add_argument(
        "--phases",
        nargs="+",
        default=["0.3:200", "0.05:1200"],
        help="latency: period_s:points, logged one phase after the other",
    )
    ap.add_argument("--new", type=int, nargs="+", default=[1, 100], help="history-options: new points to read")
    ap.add_argument("--reps", type=int, default=20, help="history-options: requests per case")
    ap.add_argument("--since", default=None, help="report: only results started at or after this ISO time")
    a = ap.parse_args(argv)
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if a.command == "report":
        print(report(out, a.since))
        return 0
    sizes = [int(x) for x in a.sizes.split(",") if x]
    kinds = [k for k in a.kinds.split(",") if k]
    if a.command in ("latency",):
        kinds, sizes = ["file"], [a.size]
    if a.command == "history-options":
        kinds, sizes = ["sqlite"], [a.size]
    pg = BenchPostgres(out / "pg").start() if "postgres" in kinds else None
    print(f"syncer from {syncer_file()}; git {git_state()}; load {load()}", flush=True)
    try:
        stores = Stores(out, pg)
        if a.command == "gen":
            for n in sizes:
                for k in ("file", "sqlite", "postgres"):
                    if k in kinds or (k == "sqlite" and "server" in kinds):
                        t = time.perf_counter()
                        e = stores.ensure(k, n)
                        print(
                            f"[gen] {k}-{n}: {e['du']}, generated in {e['seconds']} s "
                            f"(checked {time.perf_counter() - t:.1f} s)",
                            flush=True,
                        )
            return 0
        if a.command == "latency":
            res = latency_part(stores, out, a)
            append_result(out, res)
            for ph in res.get("phases", []):
                print(f"[latency] period {ph['period_s']} s: {ph['latency_s']}", flush=True)
            print(f"[latency] Aim content: {res.get('aim_content')}", flush=True)
            return 0
        if a.command == "history-options":
            res = history_options_part(stores, out, a)
            append_result(out, res)
            for name, c in res["cases"].items():
                print(
                    f"[history] {name}: wall p50 {c['wall']['p50'] * 1000:.1f} ms, server CPU mean "
                    f"{c['server_cpu']['mean'] * 1000:.1f} ms, "
                    f"client CPU mean {c['client_cpu']['mean'] * 1000:.1f} ms, "
                    f"{c['points_returned']} points",
                    flush=True,
                )
            return 0
        for n in sizes:  # generate everything first, so that sessions are not interleaved with generation
            for k in kinds:
                stores.ensure(k, n)
        for p in range(1, a.passes + 1):
            for n in sizes:
                for k in kinds:
                    res = session(k, n, stores, out, a, p)
                    append_result(out, res)
    finally:
        if pg is not None:
            pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
