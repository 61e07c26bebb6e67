#!/usr/bin/env python
"""In-process rounds, exactly what the daemon does (benchkit.DaemonRounds), in a fresh
interpreter (this file as a child of bench/scale.py), with `full_scan_interval` out of the way
so that only asked-for rounds are full: one first (full) round, `--idle` quick rounds of the
unchanged store, then `--warm` + `--points` times (log ONE point to the RUNNING run through
`MlflowClient`, time one round), then `--full` rounds with full=True; each round's wall and
process CPU and the source's read counters. Prints one JSON line."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchkit import BENCH, PY, ROOT, DaemonRounds, child_env, load, log_point, summ
from scale_content import HISTORY, RUNNING_ID


def measure_inproc(ws, repo: Path, logs: Path, args) -> dict[str, Any]:
    """Run this file as a child on the working store `ws` (a scale_stores.WorkStore)."""
    cmd = [str(PY), str(BENCH / "scale_rounds.py"), "--uri", ws.uri, "--repo", str(repo)]
    cmd += ["--idle", str(args.idle), "--points", str(args.points), "--warm", str(args.warm)]
    cmd += ["--full", str(args.full), "--first-step", str(HISTORY)]
    if args.profile:
        cmd += ["--profile", str(logs / "profile")]
    l0 = load()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=child_env())
    (logs / "inproc.log").write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        return {"rc": p.returncode, "tail": (p.stdout + p.stderr)[-3000:], "load_start": l0, "load_end": load()}
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res.update(load_start=l0, load_end=load())
    return res


def inproc_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="scale_rounds.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--uri", required=True)
    ap.add_argument("--repo", required=True)
    ap.add_argument("--idle", type=int, default=30)
    ap.add_argument("--points", type=int, default=25)
    ap.add_argument("--warm", type=int, default=3)
    ap.add_argument("--full", type=int, default=5)
    ap.add_argument("--first-step", type=int, required=True)
    ap.add_argument("--profile", default=None, help="folder: cProfile a few rounds of each sort there")
    a = ap.parse_args(argv)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=a.uri)
    t = time.perf_counter()
    s = DaemonRounds(a.uri, Path(a.repo), full_scan_interval=1e9)
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
            "errors": st.errors,
        }

    def profiled(name: str, fn, n: int = 5) -> None:
        if not a.profile:
            return
        import cProfile
        import pstats

        Path(a.profile).mkdir(parents=True, exist_ok=True)
        p = cProfile.Profile()
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
        log_point(client, RUNNING_ID, step)
        step += 1
        r = timed()
        if i >= a.warm:
            one.append(r)

    def log_and_round():
        nonlocal step
        log_point(client, RUNNING_ID, step)
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

    doc = {
        "syncer": s.syncer_file,
        "open_s": round(open_s, 3),
        "first": first,
        "idle": block(idle),
        "one_point": block(one),
        "full": block(full),
        "close_s": round(close_s, 3),
        "last_step": step - 1,
    }
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(inproc_main(sys.argv[1:]))
