"""Latency, log -> visible in Aim (`live.py --only latency-ours|latency-ours-poll|latency-aimlflow`).

A file store holding one RUNNING run with one point (step 0) of `loss`. The tool is started as a
subprocess: `syncer sync --interval 10` (file events on, the default), `syncer sync --no-watch
--interval 1` (polling only), or `aimlflow sync` (its CLI has no interval option: the watcher
polls every ~11 s, `sleep(1)` x 11, plus the poll's own time). aim_poll.py's reader polls Aim.
Once the reader sees step 0 (and our daemon has logged its first round and, with events,
"watching"), the bench process logs `--points` points, one every `--period` s, each with
`MlflowClient.log_batch` (one `Metric`, a unique step, the current time). Latency of a point =
end of the first reader poll that returned its step - return of its log call (an upper bound;
the poll's start gives the lower bound, also recorded). For aimlflow the reader indexes the run
itself (aimlflow never does; see aim_poll.py), in practice once, before the writer starts."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from aim_poll import METRIC, poll_cmd, verify_points
from benchkit import (
    AIMLFLOW,
    OUT,
    ROOT,
    Lines,
    child_env,
    cpu_pressure,
    fresh_dir,
    init_aim_repo,
    is_round,
    load,
    log_message,
    log_point,
    stop_child,
    summ,
    syncer_cmd,
)

WORK = OUT / "live"
EXPERIMENT = "live-bench"


def make_live_store(store: Path) -> tuple[object, str, int]:
    """A file store with one RUNNING run holding step 0 of `loss`."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=str(store))
    exp = client.create_experiment(EXPERIMENT)
    run_id = client.create_run(exp, run_name="live").info.run_id
    return client, run_id, log_point(client, run_id, 0, 1.0, METRIC)


def _daemon_cmd(tool: str, store: Path, repo: Path) -> list[str]:
    if tool == "aimlflow":
        init_aim_repo(repo)
        return [str(AIMLFLOW), "sync", "--mlflow-tracking-uri", str(store), "--aim-repo", str(repo)]
    cmd = syncer_cmd("sync", "--mlflow-tracking-uri", str(store), "--aim-repo", str(repo))
    cmd += ["--log-level", "debug", "--log-format", "json"]
    return cmd + (["--interval", "10"] if tool == "ours" else ["--no-watch", "--interval", "1"])


def _wait_until_ours_is_up(tool: str, name: str, dlog: Lines, work: Path) -> None:
    """Ours has logged "syncing" and a first round (and "watching" with events)."""
    ok = dlog.wait_for(lambda x: log_message(x).startswith("syncing "), 60)
    ok = ok and dlog.wait_for(is_round, 120)
    if tool == "ours":
        ok = ok and dlog.wait_for(lambda x: log_message(x).startswith("watching "), 30)
    if not ok:
        raise RuntimeError(f"{name}: the daemon did not come up; see {work / 'daemon.log'}")


def _log_points(client, run_id: str, points: dict, args) -> tuple[dict[int, float], list[float]]:
    """Log args.points points, one every args.period s; -> (when each was logged, call times)."""
    logged: dict[int, float] = {}
    call_s: list[float] = []
    t_start = time.monotonic()
    for i in range(1, args.points + 1):
        delay = t_start + i * args.period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        t0 = time.monotonic()
        points[i] = (1.0 / (i + 1), log_point(client, run_id, i, 1.0 / (i + 1), METRIC))
        logged[i] = time.monotonic()
        call_s.append(logged[i] - t0)
    return logged, call_s


def latency(tool: str, args) -> dict:
    """tool: 'ours' (events), 'ours-poll' (--no-watch --interval 1), 'aimlflow'."""
    name = {"ours": "latency-ours", "ours-poll": "latency-ours-poll", "aimlflow": "latency-aimlflow"}[tool]
    work = fresh_dir(WORK / name)
    store, repo = work / "mlruns", work / "aim"
    client, run_id, ts0 = make_live_store(store)
    points: dict[int, tuple[float, int]] = {0: (1.0, ts0)}
    load_before = load()
    cmd = _daemon_cmd(tool, store, repo)
    print(f"[{name}] {' '.join(cmd)}", flush=True)
    env = child_env(own_tree=tool != "aimlflow")
    daemon = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)
    dlog = Lines(daemon.stdout, work / "daemon.log", parse_json=(tool != "aimlflow"))
    hash_from = "aimlflow" if tool == "aimlflow" else "ours"
    reader_cmd = poll_cmd(repo, run_id, hash_from, args.poll_sleep, index=tool == "aimlflow")
    reader = None
    result: dict = {"tool": tool, "command": cmd, "reader": reader_cmd, "run_id": run_id}
    try:
        # ready: ours has logged "syncing" and a first round (and "watching" with events)
        if tool != "aimlflow":
            _wait_until_ours_is_up(tool, name, dlog, work)
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
        t_start = time.monotonic()
        load_writer = load()
        logged, call_s = _log_points(client, run_id, points, args)  # the writer
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
        rounds = [x["round"] for t, x in dlog.items if is_round(x) and t_start <= t <= t_last + grace]
        result.update(
            {
                "points": args.points,
                "period_s": args.period,
                "poll_sleep_s": args.poll_sleep,
                "latency_s": summ(list(lat.values())),
                "latency_lower_bound_s": summ(list(lat_lo.values())),
                "missing_steps": missing,
                "log_call_s": summ(call_s),
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
                "seconds": summ(secs),
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
