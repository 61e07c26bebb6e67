#!/usr/bin/env python
"""Backfill benchmark: our `syncer backfill` (and `sync`'s first round) vs aimlflow 0.2.1, on the
benchmark stores, side by side in one run, with the floor (`limit`) and a no-op backfill against
another commit (`--base`).

    .venv/bin/python bench/backfill.py                      # everything below, medians of 3 (~15 min)
    .venv/bin/python bench/backfill.py --stores files40 --tools ours,aimlflow
    .venv/bin/python bench/backfill.py --only aimlflow      # the baseline alone (default store)
    .venv/bin/python bench/backfill.py --single-metric-points 1000000 --tools ours --repeats 1

The stores (made once, cached under bench/out; `--regenerate` remakes them):

* `files40`: gen_store.py's default, 40 Trainer-shaped runs, 196,000 points (a file store);
* `sqlite40`: the same store in sqlite, converted by MLflow's own `mlflow migrate-filestore`;
* `files1000`: gen_scale.py's 1,000 short runs (150 params, 8 tags, 30 keys x 20 points) and one
  RUNNING run with a 50,000-point loss: 650,580 points (a file store).

Per store, per repeat, every tool (interleaved, so that drifting load hits all alike) converts
fresh copies: see backfill_tools.py. Then: medians, points/s (the store's points counted once via
MlflowClient), peak RSS, the ratios asked for (aimlflow / ours, ours / limit, default workers /
--workers 1, sync / backfill, sqlite / files), a no-op backfill of the synced 1,000-run store for
ours and `--base` (half of it at most), and a point-by-point check of our first repo of each
store. The summary, with the load average, goes to bench/out/backfill.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from backfill_tools import TOOLS, TRASH, Store, empty_trash, noop_passes, one_pass
from benchkit import AIMLFLOW_PY, OUT, PY, ROOT, child_env, git_state, load

BASELINE = "aec8973"  # main when issue 26 was filed: "today's" code for the no-op comparison
STORES = ("files40", "sqlite40", "files1000")
DEFAULT_TOOLS = ("ours", "ours-w1", "sync", "aimlflow", "limit")


def make_store(name: str, args: Any) -> Store:
    """A benchmark store, generated when missing (or with --regenerate)."""
    if name == "files40":
        path = OUT / "store"
        if args.regenerate or not path.exists():
            from gen_store import generate_store

            info = generate_store(path, runs=args.runs, steps=args.steps, now_ms=1_790_000_000_000)
            print(f"generated {path}: {info['points']:,} points, {info['runs']} runs", flush=True)
        return Store(name, path, "file")
    if name == "sqlite40":
        src = make_store("files40", args).path
        db = OUT / "store.db"
        if args.regenerate or not db.exists() or db.stat().st_mtime < src.stat().st_mtime:
            db.unlink(missing_ok=True)
            cmd = [str(Path(PY).parent / "mlflow"), "migrate-filestore", "--source", str(src)]
            subprocess.run([*cmd, "--target", f"sqlite:///{db}", "--no-progress"], check=True, env=child_env())
            print(f"converted {src} into {db} (mlflow migrate-filestore)", flush=True)
        return Store(name, db, "sqlite")
    if name == "files1000":
        path = OUT / "store-1000"
        if args.regenerate or not path.exists():
            from gen_scale import write_file_store

            write_file_store(path, 1000)
            print(f"generated {path} (gen_scale.py, 1,000 runs)", flush=True)
        return Store(name, path, "file")
    if name.startswith("single-"):
        path = OUT / f"store-{name}"
        if args.regenerate or not path.exists():
            from gen_store import generate_store

            generate_store(path, single_metric_points=int(name.split("-", 1)[1]))
        return Store(name, path, "file")
    path = Path(name).resolve()  # a store of one's own: a folder or a sqlite file
    return Store(path.name, path, "file" if path.is_dir() else "sqlite")


def summarise(passes: list[dict], points: int) -> dict:
    secs = [r["wall_s"] for r in passes]
    med = statistics.median(secs)
    out = {
        "median_seconds": round(med, 3),
        "min_seconds": round(min(secs), 3),
        "all_seconds": [round(s, 3) for s in secs],
        "points_per_s": round(points / med, 1) if med else None,
        "peak_rss_mb": round(max(r.get("max_rss_mb", 0) for r in passes), 1),
        "median_cpu_s": round(statistics.median(r.get("cpu_s", 0) for r in passes), 3),
    }
    inner = [r["inner"]["seconds"] for r in passes if "inner" in r]
    if inner:
        out["median_inner_seconds"] = round(statistics.median(inner), 3)
    if any("processes" in r for r in passes):
        out["processes"] = max(r.get("processes", 1) for r in passes)
    return out


def measure_store(store: Store, tools: list[str], args: Any) -> dict:
    """Every tool on copies of one store, `--repeats` times interleaved (aimlflow on stores of
    more than 100 runs `--aimlflow-repeats` times); medians; fidelity of ours."""
    from fidelity import mlflow_points, verify

    t0 = time.perf_counter()
    source = mlflow_points(store.uri(store.path))
    points = sum(sum(r["points"].values()) for r in source.values())
    print(
        f"\nstore {store.name} ({store.path}): {len(source)} runs, {points:,} points "
        f"(read via MlflowClient in {time.perf_counter() - t0:.1f}s)",
        flush=True,
    )
    tools = [t for t in tools if store.kind in TOOLS[t].kinds]
    passes: dict[str, list[dict]] = {t: [] for t in tools}
    for i in range(args.repeats):
        for tool in tools:
            if tool == "aimlflow" and len(source) > 100 and i >= args.aimlflow_repeats:
                continue
            r = one_pass(tool, i, store, args)
            passes[tool].append(r)
            extra = f" (inside: {r['inner']['seconds']:.2f}s)" if "inner" in r else ""
            print(
                f"  {tool:8s} #{i}: {r['wall_s']:7.2f}s wall{extra}, peak RSS {r.get('max_rss_mb', 0):.0f} MiB",
                flush=True,
            )
    result: dict = {"store": store.name, "path": str(store.path), "runs": len(source), "points": points}
    result["tools"] = {t: summarise(p, points) for t, p in passes.items() if p}
    result["loadavg_at_end"] = load()
    if not args.no_verify and passes.get("ours"):
        result["verify_ours"] = verify(source, passes["ours"][0]["repo"])
    if args.verify_aimlflow and passes.get("aimlflow"):
        result["verify_aimlflow"] = verify(source, passes["aimlflow"][0]["repo"])
    return result


def ratios(results: dict[str, dict]) -> dict[str, float]:
    """What the issue's "Done when" asks, as numbers (a missing tool: left out)."""
    out: dict[str, float] = {}
    med = {s: {t: v["median_seconds"] for t, v in r["tools"].items()} for s, r in results.items()}
    for s, m in med.items():
        if "ours" in m:
            for t, key in (("aimlflow", "aimlflow_over_ours"), ("limit", "ours_over_limit")):
                if t in m and m["ours"] and m[t]:
                    out[f"{s}: {key}"] = round(m[t] / m["ours"] if t == "aimlflow" else m["ours"] / m[t], 2)
            if "ours-w1" in m:
                out[f"{s}: default_workers_over_w1"] = round(m["ours"] / m["ours-w1"], 2)
                out[f"{s}: default_processes"] = results[s]["tools"]["ours"].get("processes", 1)
            if "sync" in m:
                out[f"{s}: sync_first_round_over_backfill"] = round(m["sync"] / m["ours"], 2)
            out[f"{s}: ours_points_per_s"] = results[s]["tools"]["ours"]["points_per_s"]
    if "ours" in med.get("files40", {}) and "ours" in med.get("sqlite40", {}):
        out["sqlite40_over_files40"] = round(med["sqlite40"]["ours"] / med["files40"]["ours"], 2)
    return out


def print_summary(summary: dict) -> None:
    print(
        f"\n{summary['git']} | load average at end {' '.join(map(str, summary['loadavg_at_end']))} "
        f"on {summary['nproc']} CPUs"
    )
    print(f"{'store':10s} {'tool':9s} {'median s':>9s} {'min s':>8s} {'points/s':>10s} {'peak MiB':>9s} {'CPU s':>7s}")
    for s, r in summary["stores"].items():
        for t, v in r["tools"].items():
            pps = f"{v['points_per_s']:,.0f}" if v["points_per_s"] else "-"
            print(
                f"{s:10s} {t:9s} {v['median_seconds']:9.2f} {v['min_seconds']:8.2f} {pps:>10s} "
                f"{v['peak_rss_mb'] or '-':>9} {v['median_cpu_s'] or '-':>7}"
            )
        for key in ("verify_ours", "verify_aimlflow"):
            if key in r:
                v = r[key]
                print(f"{s:10s} {key}: {'OK' if v['ok'] else 'FAILED'} ({v['runs_ok']}/{v['runs']} runs exact)")
                for p in v["first_problems"]:
                    print(f"    {p}")
    for k, v in summary["ratios"].items():
        print(f"  {k}: {v}")
    if "noop" in summary:
        n = summary["noop"]
        print(
            f"  no-op backfill of {n['store']}: ours {n['ours_median_s']} s, {n['base']} {n['base_median_s']} s "
            f"(ours / base {n['ours_over_base']}; asked: <= 0.5)"
        )
    for line in summary["done_when"]:
        print("  " + line)


def done_when(summary: dict) -> list[str]:
    """The issue's targets, each with the figure measured."""
    r, lines = summary["ratios"], []

    def check(label: str, key: str, ok) -> None:
        if key in r:
            lines.append(f"{'PASS' if ok(r[key]) else 'MISS'} {label}: {r[key]}")

    check("40 runs, files: >= 10x aimlflow", "files40: aimlflow_over_ours", lambda x: x >= 10)
    check(
        "40 runs: sqlite at least as fast as files (sqlite / files time <= 1)",
        "sqlite40_over_files40",
        lambda x: x <= 1.0,
    )
    check("1,000 runs, files: >= 40,000 points/s", "files1000: ours_points_per_s", lambda x: x >= 40_000)
    for s in summary["stores"]:
        ratio = r.get(f"{s}: default_workers_over_w1")
        if r.get(f"{s}: default_processes") == 1 and ratio is not None:  # the default was --workers 1 itself
            lines.append(f"PASS {s}: the default chose 1 process, i.e. --workers 1 (time ratio {ratio}: noise)")
        else:
            check(
                f"{s}: default workers never slower than one (time ratio <= 1)",
                f"{s}: default_workers_over_w1",
                lambda x: x <= 1.0,
            )
        check(
            f"{s}: sync's first round within 1.2x of backfill",
            f"{s}: sync_first_round_over_backfill",
            lambda x: x <= 1.2,
        )
    if "noop" in summary:
        x = summary["noop"]["ours_over_base"]
        lines.append(f"{'PASS' if x <= 0.5 else 'MISS'} no-op backfill of 1,000 runs: at most half of base: {x}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="backfill benchmark: ours vs aimlflow, the floor, the no-op")
    ap.add_argument("--stores", default=",".join(STORES), help=f"comma list of {STORES}, or store paths")
    ap.add_argument("--tools", default=",".join(DEFAULT_TOOLS), help=f"comma list of {tuple(TOOLS)}")
    ap.add_argument("--only", choices=tuple(TOOLS), default=None, help="one tool, on files40 (or --store)")
    ap.add_argument("--store", default=None, help="one store of one's own (a folder or a sqlite file)")
    ap.add_argument("--single-metric-points", type=int, default=None, metavar="N", help="a one-metric store of N")
    ap.add_argument("--regenerate", action="store_true", help="remake the stores")
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--aimlflow-repeats", type=int, default=1, help="aimlflow's passes on stores of > 100 runs")
    ap.add_argument("--base", default=BASELINE, help="the commit whose no-op backfill ours is compared with")
    ap.add_argument("--no-noop", action="store_true", help="skip the no-op comparison")
    ap.add_argument("--syncer", default=None, help="our CLI (default: python -m syncer from this tree)")
    ap.add_argument("--aimlflow-python", default=str(AIMLFLOW_PY))
    ap.add_argument("--no-context-map", action="store_true", help="pass --no-context-map to our syncer")
    ap.add_argument("--no-verify", action="store_true")
    ap.add_argument("--verify-aimlflow", action="store_true", help="also check aimlflow's repo point by point")
    ap.add_argument("--json-out", default=str(OUT / "backfill.json"))
    args = ap.parse_args(argv)

    tools = [args.only] if args.only else [t for t in args.tools.split(",") if t]
    stores = [args.store] if args.store else args.stores.split(",")
    if args.single_metric_points:
        stores = [f"single-{args.single_metric_points}"]
    elif args.only and not args.store:
        stores = ["files40"]
    unknown = [t for t in tools if t not in TOOLS]
    if unknown:
        ap.error(f"unknown tools {unknown}; known: {tuple(TOOLS)}")
    if "aimlflow" in tools and not Path(args.aimlflow_python).exists():
        ap.error(f"{args.aimlflow_python} not found; run bench/aimlflow_env.sh first (or leave aimlflow out)")
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    if TRASH.exists():  # an earlier run's folders, left by a run that did not finish
        print(f"deleting {TRASH} (left by an earlier run): the passes of the next minutes may be slower", flush=True)
        empty_trash()
    summary: dict[str, Any] = {"git": git_state(), "nproc": os.cpu_count(), "loadavg_at_start": load(), "stores": {}}
    for name in stores:
        store = make_store(name, args)
        summary["stores"][store.name] = measure_store(store, tools, args)
    if not args.no_noop and "files1000" in stores and "ours" in tools:
        print(f"\nno-op backfill of files1000: ours vs {args.base}", flush=True)
        times = noop_passes(make_store("files1000", args), args)
        ours, base = statistics.median(times["ours"]), statistics.median(times["base"])
        summary["noop"] = {
            "store": "files1000",
            "base": args.base,
            "ours": times["ours"],
            "base_s": times["base"],
            "ours_median_s": round(ours, 3),
            "base_median_s": round(base, 3),
            "ours_over_base": round(ours / base, 2),
        }
    summary["loadavg_at_end"] = load()
    summary["ratios"] = ratios(summary["stores"])
    summary["done_when"] = done_when(summary)
    print_summary(summary)
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(json.dumps(summary, indent=2))
    empty_trash()  # earlier passes' folders, deleted now that no pass is timed
    failed = any("verify_ours" in r and not r["verify_ours"]["ok"] for r in summary["stores"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "bench"))
    sys.exit(main())
