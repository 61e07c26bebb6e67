"""One round on a long running run (`live.py --only round-ours|round-aimlflow`).

A file store with one RUNNING run whose `loss` has `--history` points (gen_store's direct
writer). Ours: `syncer backfill` once (state committed), then `--cli-reps` times: log ONE point,
run `syncer backfill` again (its own "in X s" summary, the whole process wall and CPU time); then
in a fresh process what the daemon does each round (benchkit.DaemonRounds): open, one round,
and `--reps` times: log one point, time one round (wall, process CPU, and the time the round's
thread spent runnable but waiting for a CPU, from /proc/thread-self/schedstat). aimlflow: in its
venv, on a copy of the same store, `convert_existing_logs` (what `aimlflow sync` does first), one
`MLFlowWatcher._process_runs()` (its first poll), then `--aimlflow-reps` times: log one point,
time one `_process_runs()`, the function its watcher thread calls every poll.

The `_round_ours` / `_round_aimlflow` children are `live.py` itself; `_round_aimlflow` runs in
aimlflow's venv, so this module and benchkit import only the standard library at load time."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from aim_poll import METRIC, read_back
from benchkit import (
    AIMLFLOW_PY,
    BENCH,
    OUT,
    PY,
    ROOT,
    DaemonRounds,
    child_env,
    cpu_pressure,
    fresh_dir,
    init_aim_repo,
    load,
    log_point,
    make_history_store,
    ours_run_hash,
    run_timed,
    summ,
    syncer_cmd,
    thread_schedstat,
)

WORK = OUT / "live"
EXPERIMENT = "live-bench"


def run_ok(cmd: list[str], log_prefix: Path) -> dict:
    """run_timed, raising when the command fails."""
    r = run_timed(cmd, Path(f"{log_prefix}.out"))
    if r["rc"] != 0:
        raise RuntimeError(f"{cmd} exited {r['rc']}: {r['output'][-2000:]}")
    return r


def aim_steps(repo: Path, run_id: str) -> int:
    """Distinct steps of `loss` that Aim holds for our run of run_id (-1 when unreadable)."""
    d = read_back(repo, ours_run_hash(run_id))
    return len(set(d["steps"])) if "steps" in d else -1


def history_store(args) -> Path:
    return WORK / f"history-store-{args.history}"


def round_ours(args) -> dict:
    from mlflow import MlflowClient

    work = fresh_dir(WORK / "round-ours")
    store, repo = work / "mlruns", work / "aim"
    t = time.perf_counter()
    run_id = make_history_store(history_store(args), args.history, EXPERIMENT)
    print(
        f"[round-ours] store with a RUNNING run of {args.history:,} points: {time.perf_counter() - t:.1f} s", flush=True
    )
    shutil.copytree(history_store(args), store)
    client = MlflowClient(tracking_uri=str(store))
    base = syncer_cmd("backfill", "--mlflow-tracking-uri", str(store), "--aim-repo", str(repo))
    load_before = load()
    first = run_ok(base, work / "backfill-0")
    summary_line = re.compile(r"backfill: .* (\d+) points, .* in ([\d.]+) s")

    def parse(o: str) -> tuple[int, float]:
        m = summary_line.search(o)
        if not m:
            raise RuntimeError(f"no summary line in: {o[-500:]}")
        return int(m.group(1)), float(m.group(2))

    step = args.history
    cli = []
    for i in range(args.cli_reps):
        log_point(client, run_id, step)
        step += 1
        r = run_ok(base, work / f"backfill-{i + 1}")
        pts, secs = parse(r["output"])
        cli.append({"points": pts, "round_s": secs, "wall_s": r["wall_s"], "cpu_s": r["cpu_s"]})
    # in-process: what the daemon does each round
    cmd = [str(PY), str(BENCH / "live.py"), "_round_ours", "--store", str(store), "--repo", str(repo)]
    cmd += ["--run-id", run_id, "--first-step", str(step), "--reps", str(args.reps)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=child_env())
    (work / "inproc.log").write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        raise RuntimeError(f"round-ours in-process failed: {p.stderr[-2000:]}")
    inproc = json.loads(p.stdout.strip().splitlines()[-1])
    step += args.reps
    # sanity: Aim holds the whole history plus every new point, exactly once per step
    n_aim = aim_steps(repo, run_id)
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


def round_ours_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="live.py _round_ours")
    ap.add_argument("--store", required=True)
    ap.add_argument("--repo", required=True)
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--first-step", type=int, required=True)
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args(argv)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=a.store)
    t = time.perf_counter()
    s = DaemonRounds(a.store, Path(a.repo))
    open_s = time.perf_counter() - t
    t = time.perf_counter()
    warm = s.round()
    warm_s = time.perf_counter() - t
    one, one_cpu, one_wait, points, empty, empty_cpu = [], [], [], [], [], []
    step = a.first_step
    for _ in range(a.reps):
        log_point(client, a.run_id, step)
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
                "round_one_point": summ(one),
                "round_one_point_cpu": summ(one_cpu),
                # the round's thread, runnable but without a CPU (other jobs on the machine)
                "round_one_point_runqueue_wait": summ(one_wait),
                "round_one_point_wall_minus_runqueue_wait": summ([o - w for o, w in zip(one, one_wait)]),
                "points_written_per_round": points,
                "round_nothing_new": summ(empty),
                "round_nothing_new_cpu": summ(empty_cpu),
                "all_s": [round(x, 4) for x in one],
            }
        )
    )
    return 0


def round_aimlflow(args) -> dict:
    work = fresh_dir(WORK / "round-aimlflow")
    store, repo = work / "mlruns", work / "aim"
    if not history_store(args).exists():
        make_history_store(history_store(args), args.history, EXPERIMENT)
    shutil.copytree(history_store(args), store)
    init_aim_repo(repo)
    load_before = load()
    cmd = [str(AIMLFLOW_PY), str(BENCH / "live.py"), "_round_aimlflow", "--store", str(store), "--repo", str(repo)]
    cmd += ["--reps", str(args.aimlflow_reps)]
    print(
        f"[round-aimlflow] converting {args.history:,} points, then {args.aimlflow_reps + 2} polls (minutes)",
        flush=True,
    )
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=child_env(own_tree=False))
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
        log_point(client, run_id, step)
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
                "poll_s": summ([p[0] for p in polls]),
                "poll_cpu_s": summ([p[1] for p in polls]),
                "all_s": [round(p[0], 3) for p in polls],
                "tracked_per_poll": calls[0],
            }
        )
    )
    os._exit(0)  # aimlflow leaves aim.Runs open; their finalisers can hang at exit
