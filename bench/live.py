#!/usr/bin/env python
"""Live-sync benchmark: log -> visible-in-Aim latency, and the cost of one round on a long
running run; our ``syncer sync`` side by side with aimlflow 0.2.1's ``aimlflow sync``.

Run with the project venv, from the repository root (aimlflow's venv: ``bench/aimlflow_env.sh``)::

    .venv/bin/python bench/live.py                       # everything (5-8 min), table + bench/out/live.json
    .venv/bin/python bench/live.py --only latency-ours   # one part: latency-ours, latency-ours-poll,
                                                         # latency-aimlflow, round-ours, round-aimlflow
    .venv/bin/python bench/live.py --points 100 --period 0.3 --history 50000 --reps 20

Parts (each in its own work folder under ``bench/out/live/``, rebuilt every time):

latency-ours / latency-ours-poll / latency-aimlflow
    A file store holding one RUNNING run with one point (step 0) of ``loss``. The tool is
    started as a subprocess: ``syncer sync --interval 10`` (file events on, the default),
    ``syncer sync --no-watch --interval 1`` (polling only), or ``aimlflow sync`` (its CLI has
    no interval option: the watcher polls every ~11 s, ``sleep(1)`` x 11, plus the poll's own
    time). A *reader* subprocess polls Aim through Aim's SDK: every ``--poll-sleep`` s a fresh
    ``aim.Repo(path)`` (closed after each poll; ``Repo.from_path`` would pool and cache),
    ``repo.get_run(hash).get_metric("loss", Context({})).data.numpy()``, and prints which steps
    it sees with CLOCK_MONOTONIC stamps (shared by all processes). Once the reader sees step 0
    (and our daemon has logged its first round and, with events, "watching"), the bench
    process logs ``--points`` points, one every ``--period`` s, each with
    ``MlflowClient.log_batch`` (one ``Metric``, a unique step, the current time). Latency of
    a point = end of the first reader poll that returned its step - return of its log call
    (an upper bound; the poll's start gives the lower bound, also recorded).
    Aim lists a run only once ``.aim/meta/index`` holds it. Our syncer indexes every run it
    writes; aimlflow never does (``aim up``'s index manager would). So for aimlflow the reader
    indexes the run itself (``RepoIndexManager.index``) whenever ``get_run`` or ``get_metric``
    finds nothing; in practice once, right after aimlflow's initial conversion and before
    the writer starts. After that, new points are read from the run's ``seqs`` chunk, which
    needs no re-indexing, for both tools alike.

round-ours / round-aimlflow
    A file store with one RUNNING run whose ``loss`` has ``--history`` points (gen_store's
    direct writer). Ours: ``syncer backfill`` once (state committed), then ``--cli-reps``
    times: log ONE point, run ``syncer backfill`` again (its own "in X s" summary, the whole
    process wall and CPU time); then in a fresh process what the daemon does each round:
    ``open_syncer(...)``, ``round()``, and ``--reps`` times: log one point, time one
    ``Syncer.round()`` (wall and process CPU). aimlflow: in its venv, on a copy of the same
    store, ``convert_existing_logs`` (what ``aimlflow sync`` does first), one
    ``MLFlowWatcher._process_runs()`` (its first poll), then ``--aimlflow-reps`` times: log
    one point, time one ``_process_runs()``, the function its watcher thread calls every poll.

Every part records ``os.getloadavg()`` before and after. The machine this was written on has
2 cores shared with other jobs: compare CPU seconds where wall times are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
WORK = OUT / "live"
sys.path.insert(0, str(BENCH))

SYNCER = ROOT / ".venv" / "bin" / "syncer"
PY = ROOT / ".venv" / "bin" / "python"
AIMLFLOW_PY = OUT / "aimlflow-venv" / "bin" / "python"
AIMLFLOW = OUT / "aimlflow-venv" / "bin" / "aimlflow"
EXPERIMENT = "live-bench"
METRIC = "loss"
PARTS = ("latency-ours", "latency-ours-poll", "latency-aimlflow", "round-ours", "round-aimlflow")


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


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(-(-q * len(s) // 100)) - 1))
    return s[k]


def summary(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0}
    return {
        "n": len(xs),
        "p50": round(statistics.median(xs), 4),
        "p95": round(pct(xs, 95), 4),
        "max": round(max(xs), 4),
        "min": round(min(xs), 4),
        "mean": round(statistics.fmean(xs), 4),
    }


def child_env(**extra) -> dict:
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "MLFLOW_ALLOW_FILE_STORE": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        **extra,
    }
    return env


def init_aim_repo(path: Path, python: Path = PY) -> None:
    """An empty, initialised Aim repo (aimlflow's CLI insists the folder exists)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            str(python),
            "-c",
            "import sys; from aim.sdk.repo import Repo; Repo.from_path(sys.argv[1], init=True)",
            str(path),
        ],
        check=True,
    )


def fresh_dir(p: Path) -> Path:
    if p.exists():
        shutil.rmtree(p)
    p.mkdir(parents=True)
    return p


# --------------------------------------------------------------------------- the reader


def reader_main(argv: list[str]) -> int:
    """Poll an Aim repo for the steps of one metric; print one JSON line per poll that saw new
    steps (and a heartbeat with poll statistics every 50 polls)."""
    ap = argparse.ArgumentParser(prog="live.py _reader")
    ap.add_argument("--repo", required=True)
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--hash-from", choices=("ours", "aimlflow"), required=True)
    ap.add_argument("--index", action="store_true", help="index the run when Aim does not list it")
    ap.add_argument("--poll-sleep", type=float, default=0.05)
    a = ap.parse_args(argv)

    import logging

    logging.disable(logging.WARNING)  # aim's "corrupted run" and similar chatter while a writer works
    from aim.sdk.repo import Repo
    from aim.storage.context import Context

    root = os.path.abspath(a.repo)
    aim_dir = os.path.join(root, ".aim")

    def run_hash() -> str | None:
        if a.hash_from == "ours":
            import hashlib

            return hashlib.sha256(f"mlflow-run:{a.run_id}".encode()).hexdigest()[:24]  # syncer.sink.aim_run_hash
        try:
            with open(os.path.join(aim_dir, "mlflow_logs_cache")) as fh:
                return json.load(fh).get(a.run_id)
        except (OSError, ValueError):
            return None

    def emit(doc):
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()

    h = None
    seen: set[int] = set()
    polls, poll_s, indexed, errors = 0, [], 0, 0
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop:
        t0 = time.monotonic()
        steps = None
        h = h or run_hash()
        if h is not None and os.path.isdir(aim_dir):
            repo = None
            try:
                repo = Repo(root)  # fresh every poll: never Repo.from_path (pooled, cached)
                Repo._all_run_hashes.cache_clear()
                run = repo.get_run(h)
                metric = run.get_metric(METRIC, Context({})) if run is not None else None
                if metric is None and a.index and os.path.isdir(os.path.join(aim_dir, "meta", "chunks", h)):
                    from aim.sdk.index_manager import RepoIndexManager

                    RepoIndexManager(repo).index(h)  # what aim up's index manager does
                    indexed += 1
                    repo.container_pool.clear()
                    run = repo.get_run(h)
                    metric = run.get_metric(METRIC, Context({})) if run is not None else None
                if metric is not None:
                    steps = metric.data.view(["val"]).numpy()[0].tolist()
            except Exception as e:  # a writer mid-flush; try again next poll
                errors += 1
                if errors <= 5:
                    emit({"error": f"{type(e).__name__}: {e}"})
            finally:
                if repo is not None:
                    repo.close()
        t1 = time.monotonic()
        polls += 1
        poll_s.append(t1 - t0)
        if steps:
            new = sorted(set(steps) - seen)
            if new:
                seen.update(new)
                emit({"t0": t0, "t1": t1, "new": new, "hash": h})
        if polls % 50 == 0:
            emit({"polls": polls, "poll_p50": statistics.median(poll_s[-50:]), "indexed": indexed, "errors": errors})
        time.sleep(a.poll_sleep)
    emit(
        {
            "polls": polls,
            "poll_p50": statistics.median(poll_s) if poll_s else None,
            "poll_all_p50": statistics.median(poll_s) if poll_s else None,
            "poll_all_p95": pct(poll_s, 95) if poll_s else None,
            "indexed": indexed,
            "errors": errors,
            "final": True,
        }
    )
    return 0


def dump_main(argv: list[str]) -> int:
    """Print one metric of one run as JSON {steps, values, times} (read back after a part)."""
    ap = argparse.ArgumentParser(prog="live.py _dump")
    ap.add_argument("--repo", required=True)
    ap.add_argument("--hash", required=True)
    a = ap.parse_args(argv)
    from aim.sdk.repo import Repo
    from aim.storage.context import Context

    repo = Repo(os.path.abspath(a.repo))
    steps, (vals, _epochs, times) = repo.get_run(a.hash).get_metric(METRIC, Context({})).data.numpy()
    print(json.dumps({"steps": steps.tolist(), "values": vals.tolist(), "times": times.tolist()}))
    repo.close()
    return 0


def verify_points(repo: Path, run_hash: str, logged: dict[int, tuple[float, int]]) -> dict:
    """Compare what Aim holds for `loss` with what was logged: {step: (value, timestamp ms)}."""
    p = subprocess.run(
        [str(PY), str(Path(__file__).resolve()), "_dump", "--repo", str(repo), "--hash", run_hash],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env(),
    )
    if p.returncode != 0:
        return {"ok": False, "error": p.stderr[-500:]}
    d = json.loads(p.stdout)
    got = {st: (v, round(t * 1000)) for st, v, t in zip(d["steps"], d["values"], d["times"])}
    dupes = len(d["steps"]) - len(got)
    values_ok = sorted(got) == sorted(logged) and all(got[k][0] == logged[k][0] for k in logged)
    ts_ok = values_ok and all(got[k][1] == logged[k][1] for k in logged)
    return {
        "ok": values_ok and ts_ok and not dupes,
        "aim_points": len(d["steps"]),
        "logged_points": len(logged),
        "steps_and_values_equal": values_ok,
        "mlflow_timestamps_kept": ts_ok,
        "duplicate_steps": dupes,
    }


class Lines:
    """Collect a child's output lines (stamped with monotonic time) in a thread, teeing to a file."""

    def __init__(self, stream, log_path: Path, parse_json: bool = False):
        self.items: list[tuple[float, object]] = []
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
            item: object = line.rstrip("\n")
            if self._parse:
                try:
                    item = json.loads(line)
                except ValueError:
                    pass
            with self.cond:
                self.items.append((t, item))
                self.cond.notify_all()
        self._log.close()

    def wait_for(self, pred, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not any(pred(x) for _, x in self.items):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
        return True

    def join(self, timeout: float = 5) -> None:
        self._t.join(timeout)


def stop_child(p: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 30) -> dict:
    """Stop a child we started (by its pid), return its rusage."""
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
                "user_s": round(ru.ru_utime, 2),
                "sys_s": round(ru.ru_stime, 2),
                "max_rss_mb": round(ru.ru_maxrss / 1024, 1),
            }
        if time.monotonic() > deadline:
            p.kill()
            deadline = time.monotonic() + 10
        time.sleep(0.05)


# --------------------------------------------------------------------------- latency


def make_live_store(store: Path) -> tuple[object, str, int]:
    """A file store with one RUNNING run holding step 0 of `loss`."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=str(store))
    exp = client.create_experiment(EXPERIMENT)
    run_id = client.create_run(exp, run_name="live").info.run_id
    ts = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(METRIC, 1.0, ts, 0)])
    return client, run_id, ts


def latency(tool: str, args) -> dict:
    """tool: 'ours' (events), 'ours-poll' (--no-watch --interval 1), 'aimlflow'."""
    from mlflow.entities import Metric

    name = {"ours": "latency-ours", "ours-poll": "latency-ours-poll", "aimlflow": "latency-aimlflow"}[tool]
    work = fresh_dir(WORK / name)
    store, repo = work / "mlruns", work / "aim"
    client, run_id, ts0 = make_live_store(store)
    points: dict[int, tuple[float, int]] = {0: (1.0, ts0)}
    load_before = load()
    if tool == "aimlflow":
        init_aim_repo(repo)
        cmd = [str(AIMLFLOW), "sync", "--mlflow-tracking-uri", str(store), "--aim-repo", str(repo)]
    else:
        cmd = [
            str(SYNCER),
            "sync",
            "--mlflow-tracking-uri",
            str(store),
            "--aim-repo",
            str(repo),
            "--log-level",
            "debug",
            "--log-format",
            "json",
        ]
        cmd += ["--interval", "10"] if tool == "ours" else ["--no-watch", "--interval", "1"]
    print(f"[{name}] {' '.join(cmd)}", flush=True)
    daemon = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=child_env()
    )
    dlog = Lines(daemon.stdout, work / "daemon.log", parse_json=(tool != "aimlflow"))
    reader_cmd = [
        str(PY),
        str(Path(__file__).resolve()),
        "_reader",
        "--repo",
        str(repo),
        "--run-id",
        run_id,
        "--hash-from",
        "aimlflow" if tool == "aimlflow" else "ours",
        "--poll-sleep",
        str(args.poll_sleep),
    ]
    if tool == "aimlflow":
        reader_cmd.append("--index")
    reader = None
    result: dict = {"tool": tool, "command": cmd, "reader": reader_cmd, "run_id": run_id}
    try:
        # ready: ours has logged "syncing" and a first round (and "watching" with events)
        if tool != "aimlflow":

            def msg(x):
                return x.get("message", "") if isinstance(x, dict) else str(x)

            ok = dlog.wait_for(lambda x: msg(x).startswith("syncing "), 60)
            ok = ok and dlog.wait_for(lambda x: isinstance(x, dict) and x.get("event") == "round", 120)
            if tool == "ours":
                ok = ok and dlog.wait_for(lambda x: msg(x).startswith("watching "), 30)
            if not ok:
                raise RuntimeError(f"{name}: the daemon did not come up; see {work / 'daemon.log'}")
        reader = subprocess.Popen(
            reader_cmd,
            stdout=subprocess.PIPE,
            stderr=open(work / "reader.stderr", "w"),
            text=True,
            cwd=ROOT,
            env=child_env(),
        )
        rlog = Lines(reader.stdout, work / "reader.log", parse_json=True)
        if not rlog.wait_for(lambda x: isinstance(x, dict) and 0 in x.get("new", ()), 180):
            raise RuntimeError(f"{name}: the reader never saw step 0; see {work}")
        time.sleep(1.0)  # let the first round's aftermath settle
        # the writer
        logged: dict[int, float] = {}
        call_s: list[float] = []
        t_start = time.monotonic()
        load_writer = load()
        for i in range(1, args.points + 1):
            delay = t_start + i * args.period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            t0 = time.monotonic()
            points[i] = (1.0 / (i + 1), int(time.time() * 1000))
            client.log_batch(run_id, metrics=[Metric(METRIC, points[i][0], points[i][1], i)])
            logged[i] = time.monotonic()
            call_s.append(logged[i] - t0)
        t_last = time.monotonic()
        wanted = set(logged)

        def seen_steps():
            s = set()
            for _, x in rlog.items:
                if isinstance(x, dict):
                    s.update(x.get("new", ()))
            return s

        grace = args.grace if tool != "aimlflow" else max(args.grace, 40)
        rlog.wait_for(lambda _x: wanted <= seen_steps(), grace)
        reader_ru = stop_child(reader)
        reader = None
        rlog.join()
        load_after = load()
        daemon_ru = stop_child(daemon)
        dlog.join()

        first_seen: dict[int, tuple[float, float]] = {}
        final = {}
        run_hash = next((x["hash"] for _, x in rlog.items if isinstance(x, dict) and x.get("hash")), None)
        result["aim_content"] = verify_points(repo, run_hash, points) if run_hash else {"ok": False}
        for _, x in rlog.items:
            if isinstance(x, dict) and "new" in x:
                for st in x["new"]:
                    first_seen.setdefault(st, (x["t0"], x["t1"]))
            elif isinstance(x, dict) and x.get("final"):
                final = x
        lat = {i: first_seen[i][1] - logged[i] for i in logged if i in first_seen}
        lat_lo = {i: first_seen[i][0] - logged[i] for i in logged if i in first_seen}
        missing = sorted(wanted - set(lat))
        rounds = [
            x["round"]
            for t, x in dlog.items
            if isinstance(x, dict) and x.get("event") == "round" and t_start <= t <= t_last + grace
        ]
        result.update(
            {
                "points": args.points,
                "period_s": args.period,
                "poll_sleep_s": args.poll_sleep,
                "latency_s": summary(list(lat.values())),
                "latency_lower_bound_s": summary(list(lat_lo.values())),
                "missing_steps": missing,
                "log_call_s": summary(call_s),
                "reader": {
                    **reader_ru,
                    "polls": final.get("polls"),
                    "poll_p50_s": final.get("poll_all_p50"),
                    "poll_p95_s": final.get("poll_all_p95"),
                    "indexed": final.get("indexed"),
                    "errors": final.get("errors"),
                },
                "daemon": daemon_ru,
                "per_point_s": {str(i): round(v, 4) for i, v in sorted(lat.items())},
                "loadavg_before": load_before,
                "loadavg_writer_start": load_writer,
                "loadavg_after": load_after,
                "cpu_pressure_some_avg10_after": cpu_pressure(),
            }
        )
        if rounds:
            secs = [r["seconds"] for r in rounds]
            result["daemon_rounds"] = {
                "n": len(rounds),
                "with_points": sum(1 for r in rounds if r["points"]),
                "seconds": summary(secs),
            }
        s = result["latency_s"]
        print(
            f"[{name}] latency p50 {s.get('p50')} s, p95 {s.get('p95')} s, max {s.get('max')} s "
            f"({s.get('n')}/{args.points} points seen; reader poll p50 "
            f"{final.get('poll_all_p50') or 0:.3f} s); Aim content {result['aim_content']}; "
            f"load {load_after}",
            flush=True,
        )
        return result
    finally:
        if reader is not None:
            stop_child(reader)
        if daemon.poll() is None:
            stop_child(daemon)


# --------------------------------------------------------------------------- one round


def make_history_store(store: Path, history: int) -> str:
    """A file store with one RUNNING run whose `loss` holds `history` points (steps 0..n-1)."""
    from mlflow import MlflowClient

    from gen_store import _single_series, _write_direct

    if store.exists():
        shutil.rmtree(store)
    client = MlflowClient(tracking_uri=str(store))
    exp = client.create_experiment(EXPERIMENT)
    start_ms = int(time.time() * 1000) - 3600 * 1000
    run_id = client.create_run(exp, run_name="long-running", start_time=start_ms).info.run_id
    n = _write_direct(client._tracking_client.store, run_id, _single_series(history, start_ms, 0))
    assert n == history
    assert client.get_run(run_id).info.status == "RUNNING"
    return run_id


def history_store(args) -> Path:
    return WORK / f"history-store-{args.history}"


def log_one(client, run_id: str, step: int) -> None:
    from mlflow.entities import Metric

    client.log_batch(run_id, metrics=[Metric(METRIC, 0.5, int(time.time() * 1000), step)])


def run_timed(cmd: list[str], log_prefix: Path) -> dict:
    with open(f"{log_prefix}.out", "w") as out:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=child_env())
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
    text = Path(f"{log_prefix}.out").read_text()
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        raise RuntimeError(f"{cmd} exited {rc}: {text[-2000:]}")
    return {"wall_s": round(wall, 3), "cpu_s": round(ru.ru_utime + ru.ru_stime, 3), "output": text}


def round_ours(args) -> dict:
    import re

    from mlflow import MlflowClient

    work = fresh_dir(WORK / "round-ours")
    store, repo = work / "mlruns", work / "aim"
    t = time.perf_counter()
    run_id = make_history_store(history_store(args), args.history)
    print(
        f"[round-ours] store with a RUNNING run of {args.history:,} points: {time.perf_counter() - t:.1f} s", flush=True
    )
    shutil.copytree(history_store(args), store)
    client = MlflowClient(tracking_uri=str(store))
    base = [str(SYNCER), "backfill", "--mlflow-tracking-uri", str(store), "--aim-repo", str(repo)]
    load_before = load()
    first = run_timed(base, work / "backfill-0")
    summ = re.compile(r"backfill: .* (\d+) points, .* in ([\d.]+) s")

    def parse(o: str) -> tuple[int, float]:
        m = summ.search(o)
        if not m:
            raise RuntimeError(f"no summary line in: {o[-500:]}")
        return int(m.group(1)), float(m.group(2))

    step = args.history
    cli = []
    for i in range(args.cli_reps):
        log_one(client, run_id, step)
        step += 1
        r = run_timed(base, work / f"backfill-{i + 1}")
        pts, secs = parse(r["output"])
        cli.append({"points": pts, "round_s": secs, "wall_s": r["wall_s"], "cpu_s": r["cpu_s"]})
    # in-process: what the daemon does each round
    cmd = [
        str(PY),
        str(Path(__file__).resolve()),
        "_round_ours",
        "--store",
        str(store),
        "--repo",
        str(repo),
        "--run-id",
        run_id,
        "--first-step",
        str(step),
        "--reps",
        str(args.reps),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=child_env())
    (work / "inproc.log").write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        raise RuntimeError(f"round-ours in-process failed: {p.stderr[-2000:]}")
    inproc = json.loads(p.stdout.strip().splitlines()[-1])
    step += args.reps
    # sanity: Aim holds the whole history plus every new point, exactly once per step
    n_aim = _count_steps(repo, run_id)
    res = {
        "history": args.history,
        "run_id": run_id,
        "initial_backfill": {
            **{k: v for k, v in first.items() if k != "output"},
            "points": parse(first["output"])[0],
            "round_s": parse(first["output"])[1],
        },
        "cli": cli,
        "cli_round_s_median": statistics.median(c["round_s"] for c in cli) if cli else None,
        "cli_wall_s_median": statistics.median(c["wall_s"] for c in cli) if cli else None,
        "cli_cpu_s_median": statistics.median(c["cpu_s"] for c in cli) if cli else None,
        "inprocess": inproc,
        "aim_steps_after": n_aim,
        "aim_steps_expected": step,
        "loadavg_before": load_before,
        "loadavg_after": load(),
        "cpu_pressure_some_avg10_after": cpu_pressure(),
    }
    ip = inproc["round_one_point"]
    print(
        f"[round-ours] in-process round with 1 new point: median {ip['p50'] * 1000:.1f} ms "
        f"(CPU {inproc['round_one_point_cpu']['p50'] * 1000:.1f} ms, wall minus waiting for a CPU "
        f"{inproc['round_one_point_wall_minus_runqueue_wait']['p50'] * 1000:.1f} ms), n={ip['n']}; "
        f"CLI: round {res['cli_round_s_median']} s, process {res['cli_wall_s_median']} s wall; "
        f"Aim steps {n_aim}/{step}; load {res['loadavg_after']}",
        flush=True,
    )
    return res


def _count_steps(repo: Path, run_id: str) -> int:
    code = (
        "import sys, hashlib\nfrom aim.sdk.repo import Repo\nfrom aim.storage.context import Context\n"
        "h = hashlib.sha256(f'mlflow-run:{sys.argv[2]}'.encode()).hexdigest()[:24]\n"
        "r = Repo(sys.argv[1])\n"
        "s = r.get_run(h).get_metric('loss', Context({})).data.view(['val']).numpy()[0]\n"
        "print(len(set(s.tolist())))"
    )
    p = subprocess.run([str(PY), "-c", code, str(repo), run_id], capture_output=True, text=True, env=child_env())
    return int(p.stdout.strip()) if p.returncode == 0 else -1


def round_ours_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="live.py _round_ours")
    ap.add_argument("--store", required=True)
    ap.add_argument("--repo", required=True)
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--first-step", type=int, required=True)
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args(argv)
    from mlflow import MlflowClient
    from syncer.config import Config
    from syncer.logs import configure_logging
    from syncer.runner import open_syncer

    configure_logging("warning")
    client = MlflowClient(tracking_uri=a.store)
    t = time.perf_counter()
    s = open_syncer(
        Config(tracking_uri=a.store, aim_repo=Path(a.repo)), strict_experiments=False, must_exist=True, keep_open=True
    )
    open_s = time.perf_counter() - t
    t = time.perf_counter()
    warm = s.round()
    warm_s = time.perf_counter() - t
    one, one_cpu, one_wait, points, empty, empty_cpu = [], [], [], [], [], []
    step = a.first_step
    for _ in range(a.reps):
        log_one(client, a.run_id, step)
        step += 1
        c0, t0, (_r0, w0) = time.process_time(), time.perf_counter(), thread_schedstat()
        st = s.round()
        one.append(time.perf_counter() - t0)
        one_cpu.append(time.process_time() - c0)
        one_wait.append(thread_schedstat()[1] - w0)
        points.append(st.points)
    for _ in range(min(a.reps, 10)):  # nothing new: the steady cost of a round on a running run
        c0, t0 = time.process_time(), time.perf_counter()
        s.round()
        empty.append(time.perf_counter() - t0)
        empty_cpu.append(time.process_time() - c0)
    s.close()
    print(
        json.dumps(
            {
                "open_s": round(open_s, 3),
                "warm_round_s": round(warm_s, 3),
                "warm_round_points": warm.points,
                "round_one_point": summary(one),
                "round_one_point_cpu": summary(one_cpu),
                # the round's thread, runnable but without a CPU (other jobs on the machine)
                "round_one_point_runqueue_wait": summary(one_wait),
                "round_one_point_wall_minus_runqueue_wait": summary([o - w for o, w in zip(one, one_wait)]),
                "points_written_per_round": points,
                "round_nothing_new": summary(empty),
                "round_nothing_new_cpu": summary(empty_cpu),
                "all_s": [round(x, 4) for x in one],
            }
        )
    )
    return 0


def round_aimlflow(args) -> dict:
    work = fresh_dir(WORK / "round-aimlflow")
    store, repo = work / "mlruns", work / "aim"
    if not history_store(args).exists():
        make_history_store(history_store(args), args.history)
    shutil.copytree(history_store(args), store)
    init_aim_repo(repo)
    load_before = load()
    cmd = [
        str(AIMLFLOW_PY),
        str(Path(__file__).resolve()),
        "_round_aimlflow",
        "--store",
        str(store),
        "--repo",
        str(repo),
        "--reps",
        str(args.aimlflow_reps),
    ]
    print(
        f"[round-aimlflow] converting {args.history:,} points, then {args.aimlflow_reps + 2} polls (minutes)",
        flush=True,
    )
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=child_env())
    (work / "aimlflow.log").write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        raise RuntimeError(f"round-aimlflow failed: {p.stderr[-2000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res.update(
        {
            "history": args.history,
            "loadavg_before": load_before,
            "loadavg_after": load(),
            "cpu_pressure_some_avg10_after": cpu_pressure(),
        }
    )
    print(
        f"[round-aimlflow] one poll with 1 new point: median {res['poll_s']['p50']:.2f} s "
        f"(CPU {res['poll_cpu_s']['p50']:.2f} s), re-tracked {res['tracked_per_poll']:,} points per poll; "
        f"load {res['loadavg_after']}",
        flush=True,
    )
    return res


def round_aimlflow_main(argv: list[str]) -> int:
    """Runs in aimlflow's venv."""
    ap = argparse.ArgumentParser(prog="live.py _round_aimlflow")
    ap.add_argument("--store", required=True)
    ap.add_argument("--repo", required=True)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args(argv)
    import logging

    logging.disable(logging.WARNING)
    from aim.sdk.repo import Repo
    from aim.sdk.utils import clean_repo_path
    from aimlflow.utils import convert_existing_logs
    from aimlflow.watcher import MLFlowWatcher
    from mlflow import MlflowClient

    from aim import Run

    client = MlflowClient(tracking_uri=a.store)
    run = client.search_runs([e.experiment_id for e in client.search_experiments()])[0]
    run_id = run.info.run_id
    step = max(m.step for m in client._tracking_client.store.get_metric_history(run_id, METRIC, max_results=None)) + 1
    repo = Repo.from_path(clean_repo_path(a.repo))  # exactly what `aimlflow sync` does
    t = time.perf_counter()
    watcher = MLFlowWatcher(repo, a.store, None, ())
    convert_existing_logs(repo, a.store, None, ())
    convert_s = time.perf_counter() - t

    def poll():
        nonlocal step
        log_one(client, run_id, step)
        step += 1
        c0, t0 = time.process_time(), time.perf_counter()
        watcher._process_runs()  # one iteration of MLFlowWatcher._watch
        return time.perf_counter() - t0, time.process_time() - c0

    first, first_cpu = poll()  # opens the aim.Run for the pool
    polls = [poll() for _ in range(a.reps)]
    # one more, untimed, counting aim.Run.track calls: how much of the history it re-writes
    calls = [0]
    orig = Run.track

    def counting(self, *args, **kw):
        calls[0] += 1
        return orig(self, *args, **kw)

    Run.track = counting
    poll()
    Run.track = orig
    print(
        json.dumps(
            {
                "convert_s": round(convert_s, 2),
                "first_poll_s": round(first, 3),
                "first_poll_cpu_s": round(first_cpu, 3),
                "poll_s": summary([p[0] for p in polls]),
                "poll_cpu_s": summary([p[1] for p in polls]),
                "all_s": [round(p[0], 3) for p in polls],
                "tracked_per_poll": calls[0],
            }
        )
    )
    os._exit(0)  # aimlflow leaves aim.Runs open; their finalisers can hang at exit


# --------------------------------------------------------------------------- main


def git_state() -> str:
    """HEAD, and whether syncer/ has uncommitted changes (others work in the same tree)."""
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


def table(res: dict) -> list[str]:
    def ms(x):
        return "—" if x is None else (f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s")

    def lat(part, k):
        r = res.get(part)
        return None if not r else r["latency_s"].get(k)

    rows = []
    for k in ("p50", "p95", "max"):
        rows.append(
            (
                f"log → visible in Aim, {k}, events on (ours: sync --interval 10)",
                ms(lat("latency-ours", k)),
                ms(lat("latency-aimlflow", k)),
                "p95 < 1 s" if k == "p95" else "",
            )
        )
    for k in ("p50", "p95", "max"):
        rows.append(
            (
                f"log → visible in Aim, {k}, polling only (ours: --no-watch --interval 1)",
                ms(lat("latency-ours-poll", k)),
                ms(lat("latency-aimlflow", k)),
                "",
            )
        )
    ro, ra = res.get("round-ours"), res.get("round-aimlflow")
    rows.append(
        (
            "one round: RUNNING run, {:,}-point history + 1 new point".format((ro or ra or {}).get("history", 0)),
            ms(ro["inprocess"]["round_one_point"]["p50"]) if ro else "—",
            ms(ra["poll_s"]["p50"]) if ra else "—",
            "< 50 ms",
        )
    )
    rows.append(
        (
            "  same, CPU time (all threads)",
            ms(ro["inprocess"]["round_one_point_cpu"]["p50"]) if ro else "—",
            ms(ra["poll_cpu_s"]["p50"]) if ra else "—",
            "",
        )
    )
    if ro:
        rows.append(
            (
                "  same, wall minus time the round waited for a CPU",
                ms(ro["inprocess"]["round_one_point_wall_minus_runqueue_wait"]["p50"]),
                "",
                "",
            )
        )
    if ro:
        rows.append(
            (
                "  ours via `syncer backfill`: its summary 'in X s' / process wall / CPU",
                f"{ro['cli_round_s_median']} s / {ro['cli_wall_s_median']:.2f} s / {ro['cli_cpu_s_median']:.2f} s",
                "",
                "",
            )
        )
    w = [max(len(r[i]) for r in rows + [("metric", "ours", "aimlflow 0.2.1", "target")]) for i in range(4)]
    out = [" | ".join(h.ljust(w[i]) for i, h in enumerate(("metric", "ours", "aimlflow 0.2.1", "target")))]
    out.append("-+-".join("-" * x for x in w))
    out += [" | ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows]
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_reader":
        return reader_main(argv[1:])
    if argv and argv[0] == "_dump":
        return dump_main(argv[1:])
    if argv and argv[0] == "_round_ours":
        return round_ours_main(argv[1:])
    if argv and argv[0] == "_round_aimlflow":
        return round_aimlflow_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", choices=PARTS, help="run only these parts (repeatable)")
    ap.add_argument("--points", type=int, default=100, help="points the writer logs per latency part")
    ap.add_argument("--period", type=float, default=0.3, help="seconds between two logged points")
    ap.add_argument("--poll-sleep", type=float, default=0.05, help="reader's sleep between polls")
    ap.add_argument("--grace", type=float, default=15, help="seconds to wait for the last points")
    ap.add_argument("--history", type=int, default=50_000, help="points of the long running run")
    ap.add_argument("--reps", type=int, default=20, help="in-process rounds timed (ours)")
    ap.add_argument("--cli-reps", type=int, default=5, help="`syncer backfill` rounds timed (ours)")
    ap.add_argument("--aimlflow-reps", type=int, default=3, help="aimlflow polls timed")
    ap.add_argument("--json-out", default=str(OUT / "live.json"))
    args = ap.parse_args(argv)
    parts = args.only or list(PARTS)
    if any("aimlflow" in p for p in parts) and not AIMLFLOW_PY.exists():
        ap.error(f"{AIMLFLOW_PY} not found; run bench/aimlflow_env.sh first")
    WORK.mkdir(parents=True, exist_ok=True)
    res: dict = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "nproc": os.cpu_count(),
        "git": git_state(),
        "loadavg_start": load(),
        "cpu_pressure_some_avg10_start": cpu_pressure(),
        "args": vars(args),
    }
    for part in parts:
        t = time.perf_counter()
        if part.startswith("latency-"):
            res[part] = latency(part[len("latency-") :], args)
        elif part == "round-ours":
            res[part] = round_ours(args)
        else:
            res[part] = round_aimlflow(args)
        res[part]["part_wall_s"] = round(time.perf_counter() - t, 1)
    res["loadavg_end"] = load()
    res["cpu_pressure_some_avg10_end"] = cpu_pressure()
    print()
    print(
        f"git {res['git']}; load average: start {res['loadavg_start']}, end {res['loadavg_end']} "
        f"on {res['nproc']} CPUs; "
        f"CPU pressure (PSI some avg10) {res['cpu_pressure_some_avg10_start']}% -> "
        f"{res['cpu_pressure_some_avg10_end']}%"
    )
    for line in table(res):
        print(line)
    if args.json_out:
        old = {}
        p = Path(args.json_out)
        if args.only and p.exists():  # a partial run updates its parts, keeps the others
            try:
                old = json.loads(p.read_text())
            except ValueError:
                old = {}
        old.update(res)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(old, indent=2))
        print(f"written {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
