"""What the bench scripts share: paths and child environments, machine load, percentiles,
process CPU and memory, a child's output lines, stopping and timing children, the throwaway
small store helpers, result files, and the ONE place that uses syncer's in-process API
(`DaemonRounds`, `rest_internals`). The throwaway servers (PostgreSQL, `mlflow server`) are in
benchservers.py.

Importing this module imports the standard library only: it is also imported by children that
run in aimlflow's venv (`live.py _round_aimlflow`), where `syncer` is not installed. Everything
else (mlflow, aim, psutil, syncer, gen_store) is imported inside the function that needs it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
# the project venv's interpreter; a snapshot copy or a worktree without one uses the running one
PY = ROOT / ".venv" / "bin" / "python"
if not PY.exists():
    PY = Path(sys.executable)
AIMLFLOW_PY = OUT / "aimlflow-venv" / "bin" / "python"
AIMLFLOW = OUT / "aimlflow-venv" / "bin" / "aimlflow"


# --------------------------------------------------------------------------- children


def legacy_env(python: Path) -> dict[str, str]:
    """The environment of another MLflow's processes (an MLflow 2.x venv's `python`): its venv's
    bin first on PATH (2.x's `mlflow server` starts `gunicorn` from it), nothing of this project."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "MLFLOW_TRACKING_URI")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    venv = Path(python).parent.parent
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv), PYTHONUNBUFFERED="1")
    return env


def child_env(own_tree: bool = True, **extra: str) -> dict[str, str]:
    """The environment of every child. `own_tree`: `import syncer` finds the tree this file is
    in (never an editable install elsewhere); off for aimlflow's venv."""
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "MLFLOW_ALLOW_FILE_STORE": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "GIT_PYTHON_REFRESH": "quiet",
        **extra,
    }
    if own_tree:
        env["PYTHONPATH"] = str(ROOT)
    return env


def syncer_cmd(*args: str) -> list[str]:
    """Our CLI as a child: `python -m syncer ARGS` (with child_env(): this tree's syncer)."""
    return [str(PY), "-m", "syncer", *args]


def syncer_file() -> str:
    p = subprocess.run(
        [str(PY), "-c", "import syncer; print(syncer.__file__)"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env(),
    )
    return p.stdout.strip()


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


def fresh_dir(p: Path) -> Path:
    if p.exists():
        shutil.rmtree(p)
    p.mkdir(parents=True)
    return p


def run_timed(
    cmd: list[str], log: Path, stderr_log: Path | None = None, env: dict | None = None, cwd: Path | None = None
) -> dict[str, Any]:
    """Run cmd to its end (stdout to `log`, stderr there too unless `stderr_log`; in `cwd`, this
    tree by default: `python -m` puts it first on sys.path): rc, wall seconds, this child's CPU
    and peak RSS (`os.wait4`), and `output` (the text of `log`)."""
    # peak RSS through /usr/bin/time: a child's own ru_maxrss starts at its parent's RSS at the
    # fork (Linux keeps the pre-exec high-water mark), so wait4's figure would be this harness's
    # own RSS whenever that is larger than the child's
    rss_file = Path(str(log) + ".maxrss")
    timed = ["/usr/bin/time", "-f", "%M", "-o", str(rss_file), *cmd] if os.access("/usr/bin/time", os.X_OK) else cmd
    with open(log, "w") as out, open(stderr_log or os.devnull, "w") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(
            timed,
            stdout=out,
            stderr=err if stderr_log else subprocess.STDOUT,
            cwd=cwd or ROOT,
            env=env or child_env(),
        )
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    return {
        "rc": p.returncode,
        "wall_s": round(wall, 3),
        "cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
        "user_s": round(ru.ru_utime, 3),
        "sys_s": round(ru.ru_stime, 3),
        "max_rss_mb": _peak_rss_mb(rss_file, ru.ru_maxrss),
        "output": Path(log).read_text(),
    }


def _peak_rss_mb(rss_file: Path, fallback_kb: int) -> float:
    """The child's peak RSS as /usr/bin/time wrote it (KiB), else wait4's (an upper bound)."""
    try:
        return round(int(rss_file.read_text().split()[-1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        return round(fallback_kb / 1024, 1)


def stop_child(p: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 60) -> dict[str, Any]:
    """Stop a child we started (by its pid; SIGKILL after `timeout`); its rusage."""
    if p.poll() is not None:  # already gone (and reaped): no rusage to report
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
                "user_s": round(ru.ru_utime, 2),
                "sys_s": round(ru.ru_stime, 2),
                "max_rss_mb": round(ru.ru_maxrss / 1024, 1),
            }
        if time.monotonic() > deadline:
            p.kill()
            deadline = time.monotonic() + 10
        time.sleep(0.05)


class Lines:
    """A child's output lines, stamped with time.monotonic() on arrival (in a thread), parsed as
    JSON where they are (with `parse_json`), teed to a log file."""

    def __init__(self, stream, log_path: Path, parse_json: bool = True):
        self.items: list[tuple[float, Any]] = []
        self.cond = threading.Condition()
        self._log = open(log_path, "w")
        self._parse = parse_json
        self._t = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._t.start()

    def _pump(self, stream) -> None:
        for line in iter(stream.readline, ""):
            t = time.monotonic()
            self._log.write(line)
            self._log.flush()
            item: Any = line.rstrip("\n")
            if self._parse:
                try:
                    item = json.loads(line)
                except ValueError:
                    pass
            with self.cond:
                self.items.append((t, item))
                self.cond.notify_all()
        self._log.close()

    def wait_for(self, pred, timeout: float, after: float = 0.0) -> tuple[float, Any] | None:
        """The first (stamp, line) at or after `after` that pred accepts; None at the deadline."""
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
    """A JSON log line of our daemon's that reports a round."""
    return isinstance(x, dict) and x.get("event") == "round"


def log_message(x: Any) -> str:
    return x.get("message", "") if isinstance(x, dict) else str(x)


# --------------------------------------------------------------------------- the machine, a process


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_pressure() -> float | None:
    """Linux PSI: % of the last 10 s in which some runnable task waited for a CPU."""
    try:
        with open("/proc/pressure/cpu") as fh:
            return float(fh.readline().split()[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        return None


def thread_schedstat() -> tuple[float, float]:
    """(CPU seconds, seconds runnable but waiting for a CPU) of the calling thread."""
    try:
        with open("/proc/thread-self/schedstat") as fh:
            run_ns, wait_ns = fh.read().split()[:2]
        return int(run_ns) / 1e9, int(wait_ns) / 1e9
    except (OSError, ValueError):
        return 0.0, 0.0


def proc_cpu(pid: int) -> float:
    """utime + stime of one process, seconds (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    """Peak RSS of a live process (VmHWM), MiB."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


# --------------------------------------------------------------------------- numbers, results


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


def fmt_ms(x: float | None) -> str:
    """Seconds as milliseconds for a table ("—" for none)."""
    if x is None:
        return "—"
    x *= 1000
    return f"{x:.1f}" if x < 100 else f"{x:,.0f}"


def text_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    """Columns padded to their widest cell, for the terminal."""
    w = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = [" | ".join(h.ljust(w[i]) for i, h in enumerate(header)), "-+-".join("-" * x for x in w)]
    return out + [" | ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows]


def append_jsonl(path: Path, res: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(res) + "\n")


def write_json(path: Path, res: dict[str, Any], merge: bool = False) -> None:
    """Write res to path; with `merge`, over what the file held (a partial run's parts)."""
    old: dict[str, Any] = {}
    if merge and path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
    old.update(res)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(old, indent=2))


# --------------------------------------------------------------------------- stores, Aim repos


def init_aim_repo(path: Path, python: Path = PY) -> None:
    """An empty, initialised Aim repo (aimlflow's CLI insists the folder exists); untimed."""
    path.mkdir(parents=True, exist_ok=True)
    code = "import sys; from aim.sdk.repo import Repo; Repo.from_path(sys.argv[1], init=True)"
    subprocess.run([str(python), "-c", code, str(path)], check=True)


def ours_run_hash(mlflow_run_id: str) -> str:
    """The Aim run hash our syncer gives an MLflow run (syncer.sink.aim_run_hash)."""
    return hashlib.sha256(f"mlflow-run:{mlflow_run_id}".encode()).hexdigest()[:24]


def log_point(client, run_id: str, step: int, value: float = 0.5, key: str = "loss") -> int:
    """Log one point at the current time through `MlflowClient.log_batch`; its timestamp (ms)."""
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, value, ts, step)])
    return ts


def make_history_store(store: Path, history: int, experiment: str = "live-bench") -> str:
    """A file store with one RUNNING run whose `loss` holds `history` points (steps 0..n-1,
    written with gen_store's direct writer); the run's id."""
    from mlflow import MlflowClient

    from gen_store import _single_series, _write_direct

    if store.exists():
        shutil.rmtree(store)
    client = MlflowClient(tracking_uri=str(store))
    exp = client.create_experiment(experiment)
    start_ms = int(time.time() * 1000) - 3600 * 1000
    run_id = client.create_run(exp, run_name="long-running", start_time=start_ms).info.run_id
    n = _write_direct(client._tracking_client.store, run_id, _single_series(history, start_ms, 0))
    assert n == history
    assert client.get_run(run_id).info.status == "RUNNING"
    return run_id


# --------------------------------------------------------------------------- syncer's Python API
# Everything bench does with syncer in-process is in this section: when that API changes, this
# is the one place to adapt. (The CLI, `syncer_cmd`, is the other way bench runs the syncer.)


def _this_tree() -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # `import syncer` from this tree, as the children do


@dataclass(frozen=True)
class RoundResult:
    points: int  # written to Aim
    runs_written: int
    errors: int  # runs with errors new this round
    read: dict[str, Any]  # the source's read counters, as JSON (with "full")


class DaemonRounds:
    """What the daemon does, in this process: the syncer opened on (uri, repo) with RUNNING
    runs' Aim writers kept open between rounds, then one `round()` at a time. With
    `full_scan_interval` large, only rounds asked for with full=True list the whole store."""

    def __init__(self, uri: str, repo: Path, full_scan_interval: float | None = None, log_level: str = "warning"):
        _this_tree()
        import syncer
        from syncer.config import Config
        from syncer.logs import configure_logging
        from syncer.runner import open_driver

        configure_logging(log_level)
        extra = {} if full_scan_interval is None else {"full_scan_interval": full_scan_interval}
        cfg = Config(tracking_uri=uri, aim_repo=Path(repo), **extra)
        self._s = open_driver(cfg, strict_experiments=False, must_exist=True, role="daemon")
        self.syncer_file = syncer.__file__  # which tree's syncer this is

    def round(self, full: bool = False) -> RoundResult:
        st = self._s.round(full=full)
        return RoundResult(
            points=st.points, runs_written=st.runs_written, errors=len(st.errors), read=st.read.as_dict()
        )

    def close(self) -> None:
        self._s.close()


def rest_internals(client):
    """syncer's access to MLflow's REST client (one history page, bulk-interval) for `client`."""
    _this_tree()
    from syncer.sources.mlflow_compat import RestInternals

    return RestInternals(client)
