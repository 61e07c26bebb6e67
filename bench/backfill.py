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
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
sys.path.insert(0, str(BENCH))

DEFAULT_SYNCER = ROOT / ".venv" / "bin" / "syncer"
DEFAULT_AIMLFLOW_PY = OUT / "aimlflow-venv" / "bin" / "python"


# --------------------------------------------------------------------------- running


def ours_cmd(syncer: str, store: str, repo: str, no_context_map: bool = False) -> list[str]:
    cmd = [syncer, "backfill", "--mlflow-tracking-uri", store, "--aim-repo", repo]
    if no_context_map:
        cmd.append("--no-context-map")
    return cmd


def aimlflow_cmd(python: str, store: str, repo: str) -> list[str]:
    return [
        python,
        str(BENCH / "aimlflow_backfill.py"),
        "--mlflow-tracking-uri",
        store,
        "--aim-repo",
        repo,
        "--no-count",
    ]


def init_aim_repo(path: Path) -> None:
    """An empty, initialised Aim repo (aimlflow's CLI insists the directory exists)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from aim.sdk.repo import Repo; Repo.from_path(sys.argv[1], init=True)",
            str(path),
        ],
        check=True,
    )


def run_timed(cmd: list[str], log_prefix: Path) -> dict:
    """Run cmd; return wall seconds, this child's peak RSS (MiB), rc, stdout."""
    out_f = open(f"{log_prefix}.stdout", "w")
    err_f = open(f"{log_prefix}.stderr", "w")
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, cwd=ROOT)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    out_f.close()
    err_f.close()
    stdout = Path(f"{log_prefix}.stdout").read_text()
    return {
        "seconds": wall,
        "max_rss_mb": ru.ru_maxrss / 1024,
        "rc": p.returncode,
        "user_s": ru.ru_utime,
        "sys_s": ru.ru_stime,
        "stdout": stdout,
        "stderr_file": f"{log_prefix}.stderr",
    }


def one_round(tool: str, i: int, store: Path, args) -> dict:
    # one work tree per store, so two invocations on different stores cannot collide
    work = OUT / "work" / store.name / f"{tool}-{i}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    store_copy = work / "store"
    shutil.copytree(store, store_copy)
    repo = work / "aim"
    init_aim_repo(repo)
    if tool == "ours":
        cmd = ours_cmd(args.syncer, str(store_copy), str(repo), args.no_context_map)
    else:
        cmd = aimlflow_cmd(args.aimlflow_python, str(store_copy), str(repo))
    res = run_timed(cmd, work / "log")
    res.update(tool=tool, repeat=i, repo=str(repo), store=str(store_copy), cmd=cmd)
    if res["rc"] != 0:
        tail = Path(res["stderr_file"]).read_text()[-3000:]
        raise SystemExit(f"{tool} run {i} failed (rc={res['rc']}): {' '.join(cmd)}\n{tail}")
    return res


# --------------------------------------------------------------------------- reading back


def _vkey(v: float):
    """Hashable, exact key for a float (NaN == NaN, -0.0 != 0.0)."""
    return struct.pack("<d", float(v))


def mlflow_points(tracking_uri: str) -> dict[str, dict]:
    """{run_id: {"name":..., "points": Counter((step, value_bits, ts_ms))}} via MlflowClient."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(tracking_uri=str(tracking_uri))
    store = client._tracking_client.store
    local = type(store).__name__ in ("FileStore", "SqlAlchemyStore")  # unpaged calls work there
    runs: dict[str, dict] = {}
    for exp in client.search_experiments(view_type=ViewType.ALL):
        token = None
        while True:
            page = client.search_runs(
                [exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000, page_token=token
            )
            for run in page:
                pts: Counter = Counter()
                for key in run.data.metrics:
                    # the store's own call, unpaged: MlflowClient.get_metric_history pages by
                    # 25,000 and a FileStore re-parses the whole file per page (quadratic)
                    hist = (
                        store.get_metric_history(run.info.run_id, key, max_results=None)
                        if local
                        else client.get_metric_history(run.info.run_id, key)
                    )
                    for m in hist:
                        pts[(int(m.step), _vkey(m.value), int(m.timestamp))] += 1
                runs[run.info.run_id] = {"name": run.info.run_name, "points": pts}
            token = page.token
            if not token:
                break
    return runs


def _mlflow_id_of(aim_run) -> str | None:
    try:
        return aim_run["mlflow", "run_id"]
    except (KeyError, TypeError):
        pass
    try:
        v = aim_run.get("mlflow")
        if isinstance(v, dict) and v.get("run_id"):
            return v["run_id"]
    except Exception:
        pass
    return aim_run.get("mlflow_run_id")  # aimlflow's key


def aim_points(repo_path: str) -> dict[str, dict]:
    """{mlflow_run_id: {"hash":..., "points": Counter((step, value_bits, ts_ms))}}."""
    import aim_read

    aim_read.index_repo(repo_path)
    repo = aim_read.open_repo(repo_path)
    runs: dict[str, dict] = {}
    for run in repo.iter_runs():
        rid = _mlflow_id_of(run)
        pts: Counter = Counter()
        for _name, _ctx, steps, vals, times in aim_read.iter_metric_series(run):
            for s, v, t in zip(steps.tolist(), vals.tolist(), times.tolist()):
                pts[(int(s), _vkey(v), int(round(t * 1000)))] += 1
        if rid in runs:
            runs[rid].setdefault("duplicates", []).append(run.hash)
        else:
            runs[rid] = {"hash": run.hash, "points": pts}
    return runs


def verify(mlflow_runs: dict, repo_path: str, max_report: int = 5) -> dict:
    aim_runs = aim_points(repo_path)
    problems: list[str] = []
    ok_runs = 0
    for rid, m in mlflow_runs.items():
        a = aim_runs.get(rid)
        if a is None:
            problems.append(f"run {rid} ({m['name']}): no Aim run")
            continue
        if a.get("duplicates"):
            problems.append(f"run {rid}: {len(a['duplicates']) + 1} Aim runs")
        nm, na = sum(m["points"].values()), sum(a["points"].values())
        if m["points"] == a["points"]:
            ok_runs += 1
            continue
        missing = m["points"] - a["points"]
        extra = a["points"] - m["points"]
        # common cause: same (step, value), different timestamp
        sv_m = Counter((s, v) for (s, v, _t), c in m["points"].items() for _ in range(c))
        sv_a = Counter((s, v) for (s, v, _t), c in a["points"].items() for _ in range(c))
        problems.append(
            f"run {rid} ({m['name']}): mlflow {nm} points, aim {na}; "
            f"{sum(missing.values())} missing, {sum(extra.values())} extra; "
            f"(step,value) multisets {'equal (timestamps differ)' if sv_m == sv_a else 'differ'}"
        )
    stray = [a["hash"] for rid, a in aim_runs.items() if rid not in mlflow_runs]
    if stray:
        problems.append(f"{len(stray)} Aim runs with no MLflow run: {stray[:5]}")
    return {
        "ok": not problems,
        "runs_ok": ok_runs,
        "runs": len(mlflow_runs),
        "problems": len(problems),
        "first_problems": problems[:max_report],
    }


# --------------------------------------------------------------------------- main


def summarise(rounds: list[dict], points: int) -> dict:
    secs = [r["seconds"] for r in rounds]
    med = statistics.median(secs)
    return {
        "median_seconds": round(med, 3),
        "min_seconds": round(min(secs), 3),
        "all_seconds": [round(s, 3) for s in secs],
        "points_per_s": round(points / med, 1),
        "peak_rss_mb": round(max(r["max_rss_mb"] for r in rounds), 1),
        "median_cpu_s": round(statistics.median(r["user_s"] + r["sys_s"] for r in rounds), 3),
    }


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
    ap.add_argument("--only", choices=("both", "ours", "aimlflow"), default="both")
    ap.add_argument("--syncer", default=str(DEFAULT_SYNCER))
    ap.add_argument("--aimlflow-python", default=str(DEFAULT_AIMLFLOW_PY))
    ap.add_argument("--no-context-map", action="store_true", help="pass --no-context-map to our syncer")
    ap.add_argument("--no-verify", action="store_true")
    ap.add_argument("--verify-aimlflow", action="store_true", help="also run the fidelity check on aimlflow's repo")
    ap.add_argument("--json-out", default=str(OUT / "backfill.json"))
    args = ap.parse_args(argv)

    tools = ["ours", "aimlflow"] if args.only == "both" else [args.only]
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

    t0 = time.perf_counter()
    source = mlflow_points(str(store))
    points = sum(sum(r["points"].values()) for r in source.values())
    print(
        f"store {store}: {len(source)} runs, {points:,} points "
        f"(read via MlflowClient in {time.perf_counter() - t0:.1f}s)",
        flush=True,
    )

    rounds: dict[str, list[dict]] = {t: [] for t in tools}
    for i in range(args.repeats):
        for tool in tools:  # interleaved, so drifting machine load hits both alike
            r = one_round(tool, i, store, args)
            rounds[tool].append(r)
            extra = ""
            if tool == "aimlflow" and r["stdout"].strip():
                inner = json.loads(r["stdout"].strip().splitlines()[-1])
                r["inner"] = inner
                extra = f" (conversion call {inner['seconds']:.2f}s)"
            print(f"  {tool:8s} #{i}: {r['seconds']:7.2f}s wall{extra}, peak RSS {r['max_rss_mb']:.0f} MiB", flush=True)

    result = {
        "store": str(store),
        "runs": len(source),
        "points": points,
        "loadavg_at_end": os.getloadavg(),
        "nproc": os.cpu_count(),
        "tools": {},
    }
    for tool in tools:
        result["tools"][tool] = summarise(rounds[tool], points)
        if tool == "aimlflow" and all("inner" in r for r in rounds[tool]):
            inner = statistics.median(r["inner"]["seconds"] for r in rounds[tool])
            result["tools"][tool]["median_conversion_call_seconds"] = round(inner, 3)
            result["tools"][tool]["conversion_call_points_per_s"] = round(points / inner, 1)
    if len(tools) == 2:
        result["ratio_aimlflow_over_ours"] = round(
            result["tools"]["aimlflow"]["median_seconds"] / result["tools"]["ours"]["median_seconds"], 2
        )

    if not args.no_verify and "ours" in tools:
        result["verify_ours"] = verify(source, rounds["ours"][0]["repo"])
    if args.verify_aimlflow and "aimlflow" in tools:
        result["verify_aimlflow"] = verify(source, rounds["aimlflow"][0]["repo"])

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
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(json.dumps(result, indent=2))
    failed = "verify_ours" in result and not result["verify_ours"]["ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
