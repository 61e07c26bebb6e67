"""One session of bench/scale.py per (kind, size): on a fresh working copy of the cached store,
1. the backfill: `python -m syncer backfill` into a new repo, the whole process timed (wall, CPU
   of it and its waited-for workers, peak RSS from `wait4`); points/s = points written / wall;
2. in-process rounds (scale_rounds.py);
3. the daemon: `python -m syncer sync ... --interval 1` (full listing every 60 s, file events
   on); after its first round + 5 s, its CPU (utime+stime from /proc) over `--daemon-seconds`,
   peak RSS (VmHWM), the rounds it logged in that window, and for http and PostgreSQL the CPU
   the server / the database processes spent meanwhile.
`os.getloadavg()` is recorded at the start and end of every measurement."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from benchkit import (
    ROOT,
    Lines,
    child_env,
    git_state,
    is_round,
    load,
    now_iso,
    proc_cpu,
    run_timed,
    stop_child,
    summ,
    syncer_cmd,
    tree_cpu,
    vm_hwm_mb,
)
from scale_content import points_total
from scale_rounds import measure_inproc
from scale_stores import Stores, WorkStore


def measure_backfill(ws: WorkStore, repo: Path, logs: Path) -> dict[str, Any]:
    cmd = syncer_cmd("backfill", "--mlflow-tracking-uri", ws.uri, "--aim-repo", str(repo))
    serving = ws.serving_pid()
    srv0 = tree_cpu(serving) if ws.kind in ("server", "server2") else None
    l0 = load()
    r = run_timed(cmd, logs / "backfill.log")
    text, wall = r["output"], r["wall_s"]
    m = re.search(r"backfill: .*?(\d+) runs \((\d+) updated\), (\d+) points", text)
    points = int(m.group(3)) if m else None
    res = {
        "rc": r["rc"],
        "wall_s": round(wall, 2),
        "cpu_s": round(r["cpu_s"], 2),
        "max_rss_mb": r["max_rss_mb"],
        "points": points,
        "points_expected": points_total(ws.n),
        "runs_written": int(m.group(2)) if m else None,
        "points_per_s": round(points / wall) if points else None,
        "summary": next((ln for ln in text.splitlines() if ln.startswith("backfill:")), None),
        "load_start": l0,
        "load_end": load(),
    }
    if srv0 is not None:
        res["server_cpu_s"] = round(tree_cpu(serving) - srv0, 2)
    if r["rc"] != 0:
        res["tail"] = text[-3000:]
    return res


def measure_daemon(ws: WorkStore, repo: Path, logs: Path, seconds: float) -> dict[str, Any]:
    cmd = syncer_cmd("sync", "--mlflow-tracking-uri", ws.uri, "--aim-repo", str(repo), "--interval", "1")
    cmd += ["--log-level", "debug", "--log-format", "json"]
    serving = ws.serving_pid()
    l0 = load()
    t_start = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=child_env())
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
        time.sleep(5)  # the window starts after the first round's aftermath
        l1 = load()
        c0, s0, t0 = proc_cpu(p.pid), tree_cpu(serving), time.monotonic()
        time.sleep(seconds)  # the measured window
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
        res["store"] = {k: ws.entry.get(k) for k in ("du", "points", "runs", "seconds", "mlflow")}
        if ws.server is not None:
            res["server_start_s"] = ws.server_start_s
        print(f"[{kind}-{n}] backfill ...", flush=True)
        res["backfill"] = b = measure_backfill(ws, repo, logs)
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
