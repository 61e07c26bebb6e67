#!/usr/bin/env python
"""Backfill benchmark: our ``syncer backfill`` vs aimlflow's one conversion pass.

Run with the project venv::

    .venv/bin/python bench/backfill.py                 # both tools, default store, 3 repeats
    .venv/bin/python bench/backfill.py --only aimlflow # baseline only (works before our CLI exists)
    .venv/bin/python bench/backfill.py --single-metric-points 1000000   # memory test

What it does:

1. makes sure an MLflow file store exists (``bench/gen_store.py``; ``--store`` to
   use another one, ``--regenerate`` to rebuild it);
2. counts the store's points through ``MlflowClient`` (the denominator of every
   points/s figure, identical for both tools);
3. for each repeat and each tool: copies the store, creates an empty initialised
   Aim repo (both untimed), then runs the tool as a subprocess, timing its wall
   clock (interpreter start-up and imports included, as a user would see it) and
   taking its peak RSS from ``os.wait4`` (that child only).  Tools:

   * ours: ``[SYNCER, "backfill", "--mlflow-tracking-uri", STORE, "--aim-repo", REPO]``
     (plus ``--no-context-map`` with ``--no-context-map``); nothing else about our
     CLI is assumed;
   * aimlflow: ``bench/out/aimlflow-venv/bin/python bench/aimlflow_backfill.py``,
     i.e. ``aimlflow.utils.convert_existing_logs`` once (see that file);

4. prints median seconds, points/s, peak RSS and the ratio aimlflow/ours;
5. verifies our Aim repo against MLflow (``--no-verify`` to skip): for every
   MLflow run, the Aim run whose ``run["mlflow"]["run_id"]`` is its id must
   exist, hold the same number of metric points and the same multiset of
   (step, value, timestamp-ms) over all its metrics.  That comparison ignores
   metric names and contexts, so it holds with or without context mapping
   (``eval_de_accuracy`` -> ``accuracy`` {subset: eval, dataset: de, lang: de});
   the key mapping itself is not checked here.  ``--verify-aimlflow`` runs the
   same check on aimlflow's repo (found via its ``mlflow_run_id`` param) to show
   what it loses.

Results also go to ``bench/out/backfill.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from benchkit import AIMLFLOW_PY, BENCH, OUT, ROOT, child_env, init_aim_repo, load, run_timed
from fidelity import mlflow_points, verify

DEFAULT_SYNCER = ROOT / ".venv" / "bin" / "syncer"
if not DEFAULT_SYNCER.exists():  # a worktree or snapshot copy: the CLI of the venv running this
    DEFAULT_SYNCER = Path(sys.executable).parent / "syncer"


# --------------------------------------------------------------------------- the tools
# Each tool: the command that converts STORE into the (initialised, empty) Aim repo REPO, and
# whether it runs with this tree's syncer on PYTHONPATH. A new contender is one more entry.


def ours_cmd(args, store: str, repo: str) -> list[str]:
    cmd = [args.syncer, "backfill", "--mlflow-tracking-uri", store, "--aim-repo", repo]
    return cmd + (["--no-context-map"] if args.no_context_map else [])


def aimlflow_cmd(args, store: str, repo: str) -> list[str]:
    script = str(BENCH / "aimlflow_backfill.py")
    return [args.aimlflow_python, script, "--mlflow-tracking-uri", store, "--aim-repo", repo, "--no-count"]


TOOLS = {"ours": (ours_cmd, True), "aimlflow": (aimlflow_cmd, False)}


def one_pass(tool: str, i: int, store: Path, args) -> dict:
    """Copy the store, make an empty Aim repo (untimed), run the tool once (timed)."""
    work = OUT / "work" / store.name / f"{tool}-{i}"  # one work tree per store: two stores never collide
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    store_copy = work / "store"
    shutil.copytree(store, store_copy)
    repo = work / "aim"
    init_aim_repo(repo)
    make_cmd, own_tree = TOOLS[tool]
    cmd = make_cmd(args, str(store_copy), str(repo))
    res = run_timed(cmd, work / "log.stdout", stderr_log=work / "log.stderr", env=child_env(own_tree=own_tree))
    res.update(tool=tool, repeat=i, repo=str(repo), store=str(store_copy), cmd=cmd)
    if res["rc"] != 0:
        tail = (work / "log.stderr").read_text()[-3000:]
        raise SystemExit(f"{tool} run {i} failed (rc={res['rc']}): {' '.join(cmd)}\n{tail}")
    return res


# --------------------------------------------------------------------------- one store


def summarise(passes: list[dict], points: int) -> dict:
    secs = [r["wall_s"] for r in passes]
    med = statistics.median(secs)
    return {
        "median_seconds": round(med, 3),
        "min_seconds": round(min(secs), 3),
        "all_seconds": [round(s, 3) for s in secs],
        "points_per_s": round(points / med, 1),
        "peak_rss_mb": round(max(r["max_rss_mb"] for r in passes), 1),
        "median_cpu_s": round(statistics.median(r["cpu_s"] for r in passes), 3),
    }


def measure_store(store: Path, tools: list[str], args) -> dict:
    """Every tool on copies of one store, `--repeats` times interleaved; medians; fidelity."""
    t0 = time.perf_counter()
    source = mlflow_points(str(store))
    points = sum(sum(r["points"].values()) for r in source.values())
    print(
        f"store {store}: {len(source)} runs, {points:,} points "
        f"(read via MlflowClient in {time.perf_counter() - t0:.1f}s)",
        flush=True,
    )
    passes: dict[str, list[dict]] = {t: [] for t in tools}
    for i in range(args.repeats):
        for tool in tools:  # interleaved, so drifting machine load hits both alike
            r = one_pass(tool, i, store, args)
            passes[tool].append(r)
            extra = ""
            if tool == "aimlflow" and r["output"].strip():
                inner = json.loads(r["output"].strip().splitlines()[-1])
                r["inner"] = inner
                extra = f" (conversion call {inner['seconds']:.2f}s)"
            print(f"  {tool:8s} #{i}: {r['wall_s']:7.2f}s wall{extra}, peak RSS {r['max_rss_mb']:.0f} MiB", flush=True)

    result: dict = {
        "store": str(store),
        "runs": len(source),
        "points": points,
        "loadavg_at_end": load(),
        "nproc": os.cpu_count(),
        "tools": {},
    }
    for tool in tools:
        result["tools"][tool] = summarise(passes[tool], points)
        if tool == "aimlflow" and all("inner" in r for r in passes[tool]):
            inner = statistics.median(r["inner"]["seconds"] for r in passes[tool])
            result["tools"][tool]["median_conversion_call_seconds"] = round(inner, 3)
            result["tools"][tool]["conversion_call_points_per_s"] = round(points / inner, 1)
    if "ours" in tools and "aimlflow" in tools:
        result["ratio_aimlflow_over_ours"] = round(
            result["tools"]["aimlflow"]["median_seconds"] / result["tools"]["ours"]["median_seconds"], 2
        )
    if not args.no_verify and "ours" in tools:
        result["verify_ours"] = verify(source, passes["ours"][0]["repo"])
    if args.verify_aimlflow and "aimlflow" in tools:
        result["verify_aimlflow"] = verify(source, passes["aimlflow"][0]["repo"])
    return result


def print_result(result: dict) -> None:
    print()
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in result['loadavg_at_end'])} on {result['nproc']} CPUs")
    print(f"{'tool':10s} {'median s':>9s} {'min s':>8s} {'points/s':>10s} {'peak RSS MiB':>13s} {'CPU s':>7s}")
    for tool, s in result["tools"].items():
        print(
            f"{tool:10s} {s['median_seconds']:9.2f} {s['min_seconds']:8.2f} "
            f"{s['points_per_s']:10,.0f} {s['peak_rss_mb']:13.0f} {s['median_cpu_s']:7.2f}"
        )
    if "ratio_aimlflow_over_ours" in result:
        print(f"speed-up (aimlflow time / our time): {result['ratio_aimlflow_over_ours']}x")
    for key in ("verify_ours", "verify_aimlflow"):
        if key in result:
            v = result[key]
            print(f"{key}: {'OK' if v['ok'] else 'FAILED'} ({v['runs_ok']}/{v['runs']} runs exact)")
            for p in v["first_problems"]:
                print(f"    {p}")


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="ours vs aimlflow backfill benchmark")
    ap.add_argument(
        "--store", default=None, help="existing MLflow file store (default: bench/out/store, generated if missing)"
    )
    ap.add_argument("--regenerate", action="store_true", help="rebuild the default store first")
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument(
        "--single-metric-points",
        type=int,
        default=None,
        metavar="N",
        help="use a one-run, one-metric store of N points (bench/out/store-single-N)",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=("both", *TOOLS), default="both")
    ap.add_argument("--syncer", default=str(DEFAULT_SYNCER))
    ap.add_argument("--aimlflow-python", default=str(AIMLFLOW_PY))
    ap.add_argument("--no-context-map", action="store_true", help="pass --no-context-map to our syncer")
    ap.add_argument("--no-verify", action="store_true")
    ap.add_argument("--verify-aimlflow", action="store_true", help="also run the fidelity check on aimlflow's repo")
    ap.add_argument("--json-out", default=str(OUT / "backfill.json"))
    args = ap.parse_args(argv)

    tools = list(TOOLS) if args.only == "both" else [args.only]
    if "ours" in tools and not Path(args.syncer).exists():
        ap.error(f"{args.syncer} not found (our CLI not installed yet?); use --only aimlflow")
    if "aimlflow" in tools and not Path(args.aimlflow_python).exists():
        ap.error(f"{args.aimlflow_python} not found; run bench/aimlflow_env.sh first")

    from gen_store import generate_store

    if args.store:
        store = Path(args.store).resolve()
    elif args.single_metric_points:
        store = OUT / f"store-single-{args.single_metric_points}"
    else:
        store = OUT / "store"
    if not args.store and (args.regenerate or not store.exists()):
        info = generate_store(store, runs=args.runs, steps=args.steps, single_metric_points=args.single_metric_points)
        print(f"generated {store}: {info['points']:,} points, {info['runs']} runs, {info['seconds']:.1f}s", flush=True)

    result = measure_store(store, tools, args)
    print_result(result)
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(json.dumps(result, indent=2))
    failed = "verify_ours" in result and not result["verify_ours"]["ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
