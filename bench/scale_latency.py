"""Latency, log -> visible in Aim, at scale (`scale.py latency`): a file store of `--size`
finished runs, already synced (its backfill measured too); `syncer sync --interval 10` (file
events on); a new RUNNING run that the bench logs into, phase after phase (`--phases`
period:points, same daemon); aim_poll.py's reader polls Aim for the new steps every 50 ms.
Latency of a point = end of the first poll that returned its step - return of its log call."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from aim_poll import poll_cmd, verify_points
from benchkit import (
    ROOT,
    Lines,
    child_env,
    fresh_dir,
    git_state,
    is_round,
    load,
    log_message,
    log_point,
    now_iso,
    ours_run_hash,
    stop_child,
    summ,
    syncer_cmd,
)
from scale_content import EXPERIMENT
from scale_session import measure_backfill
from scale_stores import Stores, WorkStore


def latency_part(stores: Stores, out: Path, args) -> dict[str, Any]:
    """A 1,000-run file store, already synced; `syncer sync --interval 10` (file events on);
    a new RUNNING run that the bench logs into (`--phases`: period:points, one after the other,
    same daemon); aim_poll.py's reader polls Aim for the new steps every 50 ms."""
    from mlflow import MlflowClient

    n = args.size
    work = fresh_dir(out / "work" / f"latency-{n}")
    logs = fresh_dir(out / "logs" / f"latency-{n}")
    repo = work / "aim"
    res: dict[str, Any] = {
        "part": "latency",
        "kind": "file",
        "runs": n,
        "started": now_iso(),
        "git": git_state(),
        "root": str(ROOT),
        "load_start": load(),
    }
    with WorkStore("file", n, stores, work) as ws:
        res["backfill"] = measure_backfill(ws, repo, logs)
        client = MlflowClient(tracking_uri=ws.uri)
        exp = client.get_experiment_by_name(EXPERIMENT)
        rid = client.create_run(exp.experiment_id, run_name="latency-writer", tags={"bench": "latency"}).info.run_id
        logged_at: dict[int, float] = {}
        points: dict[int, tuple[float, int]] = {0: (1.0, log_point(client, rid, 0, 1.0))}
        cmd = syncer_cmd("sync", "--mlflow-tracking-uri", ws.uri, "--aim-repo", str(repo), "--interval", "10")
        cmd += ["--log-level", "debug", "--log-format", "json"]
        daemon = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=child_env()
        )
        dlog = Lines(daemon.stderr, logs / "daemon.log")
        reader = None
        try:
            up = dlog.wait_for(is_round, 600) and dlog.wait_for(lambda x: log_message(x).startswith("watching "), 60)
            if not up:
                raise RuntimeError(f"the daemon did not come up; see {logs}")
            reader = subprocess.Popen(
                poll_cmd(repo, rid, "ours", 0.05),
                stdout=subprocess.PIPE,
                stderr=open(logs / "reader.stderr", "w"),
                text=True,
                cwd=ROOT,
                env=child_env(),
            )
            rlog = Lines(reader.stdout, logs / "reader.log")
            if not rlog.wait_for(lambda x: isinstance(x, dict) and 0 in x.get("new", ()), 300):
                raise RuntimeError(f"the reader never saw step 0; see {logs}")
            time.sleep(1.0)
            step = 1
            phases = []
            for spec in args.phases:
                period, count = float(spec.split(":")[0]), int(spec.split(":")[1])
                l0 = load()
                t_start = time.monotonic()
                first_step = step
                for k in range(count):
                    delay = t_start + k * period - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    value = 1.0 / (step + 1)
                    points[step] = (value, log_point(client, rid, step, value))
                    logged_at[step] = time.monotonic()
                    step += 1
                t_end = time.monotonic()
                phases.append(
                    {
                        "period_s": period,
                        "points": count,
                        "steps": (first_step, step - 1),
                        "t": (t_start, t_end),
                        "load_start": l0,
                        "load_end": load(),
                        "achieved_period_s": round((t_end - t_start) / max(1, count - 1), 4),
                    }
                )
            wanted = set(logged_at)

            def seen() -> set[int]:
                s: set[int] = set()
                for _, x in rlog.items:
                    if isinstance(x, dict):
                        s.update(x.get("new", ()))
                return s

            deadline = time.monotonic() + 20
            while not wanted <= seen() and time.monotonic() < deadline:
                time.sleep(0.2)
            first_seen: dict[int, float] = {}
            for _, x in rlog.items:
                if isinstance(x, dict) and "new" in x:
                    for st in x["new"]:
                        first_seen.setdefault(st, x["t1"])
            for ph in phases:
                a, b = ph["steps"]
                lat = [first_seen[i] - logged_at[i] for i in range(a, b + 1) if i in first_seen]
                t_start, t_end = ph.pop("t")
                rounds = [x["round"] for t, x in dlog.items if is_round(x) and t_start <= t <= t_end + 2]
                ph.update(
                    latency_s=summ(lat),
                    missing=[i for i in range(a, b + 1) if i not in first_seen][:20],
                    rounds=len(rounds),
                    full_rounds=sum(1 for r in rounds if r["read"].get("full")),
                    round_seconds=summ([r["seconds"] for r in rounds]),
                    full_round_seconds=[r["seconds"] for r in rounds if r["read"].get("full")],
                )
            res["phases"] = phases
        finally:
            if reader is not None:
                res["reader"] = stop_child(reader)
            res["daemon"] = stop_child(daemon)
            dlog.join()
        res["aim_content"] = verify_points(repo, ours_run_hash(rid), points)
    res["load_end"] = load()
    shutil.rmtree(work, ignore_errors=True)
    return res
