#!/usr/bin/env python
"""Live-sync benchmark: log -> visible-in-Aim latency, and the cost of one round on a long
running run; our ``syncer sync`` side by side with aimlflow 0.2.1's ``aimlflow sync``.

Run with the project venv, from the repository root (aimlflow's venv: ``bench/aimlflow_env.sh``)::

    .venv/bin/python bench/live.py                       # everything (5-8 min), table + bench/out/live.json
    .venv/bin/python bench/live.py --only latency-ours   # one part: latency-ours, latency-ours-poll,
                                                         # latency-aimlflow, round-ours, round-aimlflow
    .venv/bin/python bench/live.py --points 100 --period 0.3 --history 50000 --reps 20

Parts (each in its own work folder under ``bench/out/live/``, rebuilt every time): the latency
parts are live_latency.py (the reader that polls Aim: aim_poll.py), the round parts
live_round.py; each module's docstring says what it times and how. Our syncer runs as
``python -m syncer`` with this tree on ``PYTHONPATH`` (benchkit.syncer_cmd).

Every part records ``os.getloadavg()`` and Linux CPU pressure before and after. The machine
this was written on has 2 cores shared with other jobs: compare CPU seconds where wall times
are noisy.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from benchkit import AIMLFLOW_PY, OUT, cpu_pressure, git_state, load, now_iso, text_table, write_json
from live_latency import WORK, latency
from live_round import round_aimlflow, round_aimlflow_main, round_ours, round_ours_main

PARTS = ("latency-ours", "latency-ours-poll", "latency-aimlflow", "round-ours", "round-aimlflow")


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
    return text_table(("metric", "ours", "aimlflow 0.2.1", "target"), rows)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
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
        "started": now_iso(),
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
    if args.json_out:  # a partial run (--only) updates its parts, keeps the others
        write_json(Path(args.json_out), res, merge=bool(args.only))
        print(f"written {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
