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
    .venv/bin/python bench/scale.py run --sizes 1000 --kinds server,server2 --passes 2 \
        --mlflow2-python "$(.venv/bin/python tests/legacy_mlflow.py install 2.9.2 | cut -d' ' -f1)"
                                                             # an MLflow 2.x server next to 3.x
    .venv/bin/python bench/scale.py report                   # markdown tables from results.jsonl

Per (kind, size), `run` makes one *session* (scale_session.py) on a fresh working copy of the
cached store (scale_stores.py; file: the cache itself, its RUNNING run's `loss` file truncated
back to 50,000 lines; sqlite and the server: a copy of the database file; PostgreSQL: `CREATE
DATABASE ... TEMPLATE` the cached one): the backfill (a `syncer backfill` process), in-process
rounds as the daemon runs them (scale_rounds.py: idle, one new point, full listing), and the
daemon's CPU over a window (`syncer sync --interval 1`). `latency` is scale_latency.py,
`history-options` scale_history.py; each module's docstring says what it times and how.

`os.getloadavg()` is recorded at the start and end of every measurement. Results are appended
as JSON lines to `<out>/results.jsonl` (one line per session or part); `report`
(scale_report.py) renders the latest of each as the tables of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchkit import OUT, append_jsonl, git_state, load, syncer_file
from benchservers import Postgres
from scale_history import history_options_part
from scale_latency import latency_part
from scale_report import report
from scale_session import session
from scale_stores import KINDS, OPTIONAL_KINDS, Stores

SIZES = (100, 1000, 5000)


def gen(stores: Stores, kinds: list[str], sizes: list[int]) -> None:
    for n in sizes:
        for k in ("file", "sqlite", "postgres"):
            if k in kinds or (k == "sqlite" and "server" in kinds):
                t = time.perf_counter()
                e = stores.ensure(k, n)
                checked = time.perf_counter() - t
                print(f"[gen] {k}-{n}: {e['du']}, generated in {e['seconds']} s (checked {checked:.1f} s)", flush=True)
        if "server2" in kinds:
            e = stores.ensure("server2", n)
            print(f"[gen] server2-{n} (MLflow {e['mlflow']}): {e['du']}, generated in {e['seconds']} s", flush=True)


def latency(stores: Stores, out: Path, a: argparse.Namespace) -> None:
    res = latency_part(stores, out, a)
    append_jsonl(out / "results.jsonl", res)
    for ph in res.get("phases", []):
        print(f"[latency] period {ph['period_s']} s: {ph['latency_s']}", flush=True)
    print(f"[latency] Aim content: {res.get('aim_content')}", flush=True)


def history_options(stores: Stores, out: Path, a: argparse.Namespace) -> None:
    res = history_options_part(stores, out, a)
    append_jsonl(out / "results.jsonl", res)
    for name, c in res["cases"].items():
        print(
            f"[history] {name}: wall p50 {c['wall']['p50'] * 1000:.1f} ms, server CPU mean "
            f"{c['server_cpu']['mean'] * 1000:.1f} ms, client CPU mean {c['client_cpu']['mean'] * 1000:.1f} ms, "
            f"{c['points_returned']} points",
            flush=True,
        )


def run(stores: Stores, out: Path, a: argparse.Namespace, kinds: list[str], sizes: list[int]) -> None:
    for n in sizes:  # generate everything first, so that sessions are not interleaved with generation
        for k in kinds:
            stores.ensure(k, n)
    for p in range(1, a.passes + 1):
        for n in sizes:
            for k in kinds:
                append_jsonl(out / "results.jsonl", session(k, n, stores, out, a, p))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=("gen", "run", "latency", "history-options", "report"))
    ap.add_argument("--out", default=str(OUT / "scale"), help="caches, logs, results.jsonl")
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
    ap.add_argument(
        "--mlflow2-python",
        default=None,
        help="kind server2: the python of a venv with MLflow 2.x (`python tests/legacy_mlflow.py install 2.9.2`)",
    )
    a = ap.parse_args(argv)
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if a.command == "report":
        print(report(out, a.since))
        return 0
    try:
        sizes = [int(x) for x in a.sizes.split(",") if x]
    except ValueError:
        ap.error(f"--sizes wants numbers of runs separated by commas, not {a.sizes!r}")
    kinds = [k for k in a.kinds.split(",") if k]
    unknown = sorted(set(kinds) - set(KINDS) - set(OPTIONAL_KINDS))
    if unknown:
        ap.error(f"unknown --kinds {','.join(unknown)} (choose from {','.join(KINDS + OPTIONAL_KINDS)})")
    if "server2" in kinds and not a.mlflow2_python:
        ap.error("--kinds server2 needs --mlflow2-python")
    if a.command == "latency":
        kinds, sizes = ["file"], [a.size]
    if a.command == "history-options":
        kinds, sizes = ["sqlite"], [a.size]
    pg = Postgres(out / "pg").start() if "postgres" in kinds else None
    print(f"syncer from {syncer_file()}; git {git_state()}; load {load()}", flush=True)
    try:
        stores = Stores(out, pg, Path(a.mlflow2_python) if a.mlflow2_python else None)
        if a.command == "gen":
            gen(stores, kinds, sizes)
        elif a.command == "latency":
            latency(stores, out, a)
        elif a.command == "history-options":
            history_options(stores, out, a)
        else:
            run(stores, out, a, kinds, sizes)
    finally:
        if pg is not None:
            pg.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
