"""The idle daemon's CPU with the metrics endpoint off, on, and on while scraped (issue 23).

    python bench/metrics_idle.py [--pairs 4] [--window 60] [--runs 50]

A file store of `--runs` finished runs and one RUNNING run that logs nothing; `syncer sync` with
its defaults (a round every 10 s, a full listing every 60 s, file events on), started fresh for
each measurement: after its first round + 5 s, its CPU (utime+stime, /proc) over `--window`
seconds. Three variants, interleaved, in a rotating order each pass: `off` (no --metrics-port),
`on` (--metrics-port, nobody asks), `scraped` (--metrics-port, asked as the Kubernetes manifest
and a Prometheus would: /readyz every 15 s, /healthz every 30 s, /metrics every 15 s).
The CPU two ways: utime+stime (every thread, dead ones too, in clock ticks of 10 ms) and the
threads' schedstat (nanoseconds, but only the threads alive at both ends of the window: not the
short-lived thread of each request). `os.getloadavg()` at the start and end of each window.
Results: bench/out/metrics_idle.jsonl and a summary table on stdout."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchkit import (
    ROOT,
    Lines,
    append_jsonl,
    child_env,
    fresh_dir,
    is_round,
    load,
    proc_cpu,
    stop_child,
    syncer_cmd,
)

OUT = ROOT / "bench" / "out" / "metrics-idle"
VARIANTS = ("off", "on", "scraped")
ASKS = (("/readyz", 15.0), ("/healthz", 30.0), ("/metrics", 15.0))  # path, every s


def make_store(store: Path, runs: int) -> None:
    import os

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    c = MlflowClient(str(store))
    exp = c.create_experiment("idle")
    t0 = 1_700_000_000_000
    for i in range(runs + 1):
        r = c.create_run(exp, run_name=f"r{i}", start_time=t0).info.run_id
        c.log_batch(r, metrics=[Metric("loss", 1 / (s + 1), t0 + s, s) for s in range(200)])
        if i < runs:
            c.set_terminated(r, "FINISHED", end_time=t0 + 1000)


def task_runtime_ns(pid: int) -> dict[str, int]:
    """Per thread of the process: nanoseconds on a CPU (/proc/PID/task/TID/schedstat)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[task.name] = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # the thread ended
    return out


def ask_periodically(port: int, stop: threading.Event) -> None:
    t0 = time.monotonic()
    due = {path: t0 for path, _ in ASKS}
    while not stop.is_set():
        now = time.monotonic()
        for path, every in ASKS:
            if now >= due[path]:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).read()
                except OSError:
                    pass  # a 503 is an answer too
                due[path] = now + every
        stop.wait(0.5)


def measure(variant: str, store: Path, work: Path, window: float, port: int) -> dict[str, Any]:
    repo = fresh_dir(work / f"aim-{variant}")
    cmd = syncer_cmd("sync", "--mlflow-tracking-uri", str(store), "--aim-repo", str(repo))
    cmd += ["--log-level", "debug", "--log-format", "json"]
    if variant != "off":
        cmd += ["--metrics-port", str(port)]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=child_env())
    lines = Lines(p.stderr, work / f"daemon-{variant}.log")
    stop = threading.Event()
    try:
        if lines.wait_for(is_round, timeout=600) is None:
            raise RuntimeError(f"no round; see {work / f'daemon-{variant}.log'}")
        if variant == "scraped":
            threading.Thread(target=ask_periodically, args=(port, stop), daemon=True).start()
        time.sleep(5)
        l0, c0, s0, t0 = load(), proc_cpu(p.pid), task_runtime_ns(p.pid), time.monotonic()
        time.sleep(window)
        c1, s1, t1 = proc_cpu(p.pid), task_runtime_ns(p.pid), time.monotonic()
        # ns resolution, but only the threads alive at both ends (a request's thread is not)
        sched_ms = sum(s1[t] - s0[t] for t in s0.keys() & s1.keys()) / 1e6
        rounds = sum(1 for t, x in lines.items if is_round(x) and t0 <= t <= t1)
        return {
            "variant": variant,
            "window_s": round(t1 - t0, 2),
            "cpu_s": round(c1 - c0, 3),
            "cpu_pct": round(100 * (c1 - c0) / (t1 - t0), 3),
            "sched_ms": round(sched_ms, 2),
            "rounds": rounds,
            "load_start": l0,
            "load_end": load(),
        }
    finally:
        stop.set()
        stop_child(p)
        lines.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=4, help="passes over the three variants")
    ap.add_argument("--window", type=float, default=60.0, help="seconds measured per daemon")
    ap.add_argument("--runs", type=int, default=50, help="finished runs in the store (plus one RUNNING)")
    ap.add_argument("--port", type=int, default=19118)
    args = ap.parse_args()
    work = fresh_dir(OUT)
    store = work / "mlruns"
    make_store(store, args.runs)
    results: list[dict[str, Any]] = []
    for i in range(args.pairs):
        order = VARIANTS[i % 3 :] + VARIANTS[: i % 3]  # each variant first, second and third in turn
        for v in order:
            res = measure(v, store, work, args.window, args.port)
            res["pass"] = i
            append_jsonl(OUT.parent / "metrics_idle.jsonl", res)
            results.append(res)
            print(
                f"pass {i} {v:8} cpu {res['cpu_s']:.2f} s ({res['cpu_pct']:.3f} %), long-lived threads "
                f"{res['sched_ms']:.1f} ms, rounds {res['rounds']}, load {res['load_start']}",
                flush=True,
            )
    print("\nvariant   CPU s per window: median (min-max), total   long-lived threads ms: median (min-max)")
    for v in VARIANTS:
        xs = [r["cpu_s"] for r in results if r["variant"] == v]
        ss = [r["sched_ms"] for r in results if r["variant"] == v]
        print(
            f"{v:8}  {statistics.median(xs):.3f} ({min(xs):.2f}-{max(xs):.2f}), {sum(xs):.2f}   "
            f"{statistics.median(ss):.1f} ({min(ss):.1f}-{max(ss):.1f})"
        )


if __name__ == "__main__":
    main()
