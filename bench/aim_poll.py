#!/usr/bin/env python
"""Reading one metric of one run back from Aim, through Aim's SDK, as a child process:

    aim_poll.py poll --repo R --run-id ID --hash-from ours|aimlflow [--index] [--poll-sleep 0.05]
    aim_poll.py dump --repo R --hash H [--metric loss]

`poll` (the latency parts' reader): every `--poll-sleep` s a fresh `aim.Repo(path)` (closed
after each poll; `Repo.from_path` would pool and cache), `repo.get_run(hash).get_metric(metric,
Context({})).data`, printing one JSON line with CLOCK_MONOTONIC stamps (shared by all
processes) per poll that saw new steps, and a heartbeat every 50 polls. Aim lists a run only
once `.aim/meta/index` holds it; our syncer indexes every run it writes, aimlflow never does, so
with `--index` the reader indexes the run itself (`RepoIndexManager.index`, what `aim up` does)
whenever `get_run` or `get_metric` finds nothing.

`dump` prints the metric as JSON {steps, values, times}; `read_back()` / `verify_points()` run
it from the bench process and compare with what was logged."""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchkit import BENCH, PY, ROOT, child_env, ours_run_hash, pct

METRIC = "loss"


def poll_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="aim_poll.py poll")
    ap.add_argument("--repo", required=True)
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--hash-from", choices=("ours", "aimlflow"), required=True)
    ap.add_argument("--index", action="store_true", help="index the run when Aim does not list it")
    ap.add_argument("--poll-sleep", type=float, default=0.05)
    ap.add_argument("--metric", default=METRIC)
    a = ap.parse_args(argv)

    import logging

    logging.disable(logging.WARNING)  # aim's "corrupted run" and similar chatter while a writer works
    from aim.sdk.repo import Repo
    from aim.storage.context import Context

    root = os.path.abspath(a.repo)
    aim_dir = os.path.join(root, ".aim")

    def run_hash() -> str | None:
        if a.hash_from == "ours":
            return ours_run_hash(a.run_id)
        try:
            with open(os.path.join(aim_dir, "mlflow_logs_cache")) as fh:
                return json.load(fh).get(a.run_id)
        except (OSError, ValueError):
            return None

    def emit(doc):
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()

    h = None
    seen: set[int] = set()
    polls, poll_s, indexed, errors = 0, [], 0, 0
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop:
        t0 = time.monotonic()
        steps = None
        h = h or run_hash()
        if h is not None and os.path.isdir(aim_dir):
            repo = None
            try:
                repo = Repo(root)  # fresh every poll: never Repo.from_path (pooled, cached)
                Repo._all_run_hashes.cache_clear()
                run = repo.get_run(h)
                metric = run.get_metric(a.metric, Context({})) if run is not None else None
                if metric is None and a.index and os.path.isdir(os.path.join(aim_dir, "meta", "chunks", h)):
                    from aim.sdk.index_manager import RepoIndexManager

                    # what aim up's index manager does; one manager per repo path for the whole process
                    # (each new one holds an inotify instance for good)
                    RepoIndexManager.get_index_manager(repo).index(h)
                    indexed += 1
                    repo.container_pool.clear()
                    run = repo.get_run(h)
                    metric = run.get_metric(a.metric, Context({})) if run is not None else None
                if metric is not None:
                    steps = metric.data.view(["val"]).numpy()[0].tolist()
            except Exception as e:  # a writer mid-flush; try again next poll
                errors += 1
                if errors <= 5:
                    emit({"error": f"{type(e).__name__}: {e}"})
            finally:
                if repo is not None:
                    repo.close()
        t1 = time.monotonic()
        polls += 1
        poll_s.append(t1 - t0)
        if steps:
            new = sorted(set(steps) - seen)
            if new:
                seen.update(new)
                emit({"t0": t0, "t1": t1, "new": new, "hash": h})
        if polls % 50 == 0:
            emit({"polls": polls, "poll_p50": statistics.median(poll_s[-50:]), "indexed": indexed, "errors": errors})
        time.sleep(a.poll_sleep)
    emit(
        {
            "polls": polls,
            "poll_p50": statistics.median(poll_s) if poll_s else None,
            "poll_all_p50": statistics.median(poll_s) if poll_s else None,
            "poll_all_p95": pct(poll_s, 95) if poll_s else None,
            "indexed": indexed,
            "errors": errors,
            "final": True,
        }
    )
    return 0


def poll_cmd(repo: Path, run_id: str, hash_from: str, poll_sleep: float, index: bool = False) -> list[str]:
    """The reader's command line (run it with child_env())."""
    cmd = [str(PY), str(BENCH / "aim_poll.py"), "poll", "--repo", str(repo), "--run-id", run_id]
    cmd += ["--hash-from", hash_from, "--poll-sleep", str(poll_sleep)]
    return cmd + (["--index"] if index else [])


def dump_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="aim_poll.py dump")
    ap.add_argument("--repo", required=True)
    ap.add_argument("--hash", required=True)
    ap.add_argument("--metric", default=METRIC)
    a = ap.parse_args(argv)
    from aim.sdk.repo import Repo
    from aim.storage.context import Context

    repo = Repo(os.path.abspath(a.repo))
    steps, (vals, _epochs, times) = repo.get_run(a.hash).get_metric(a.metric, Context({})).data.numpy()
    print(json.dumps({"steps": steps.tolist(), "values": vals.tolist(), "times": times.tolist()}))
    repo.close()
    return 0


def read_back(repo: Path, run_hash: str) -> dict[str, Any]:
    """{steps, values, times} of `loss` as Aim holds it, or {error}."""
    p = subprocess.run(
        [str(PY), str(BENCH / "aim_poll.py"), "dump", "--repo", str(repo), "--hash", run_hash],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env(),
    )
    return json.loads(p.stdout) if p.returncode == 0 else {"error": p.stderr[-500:]}


def verify_points(repo: Path, run_hash: str, logged: dict[int, tuple[float, int]]) -> dict[str, Any]:
    """Compare what Aim holds for `loss` with what was logged: {step: (value, timestamp ms)}."""
    d = read_back(repo, run_hash)
    if "error" in d:
        return {"ok": False, "error": d["error"]}
    got = {st: (v, round(t * 1000)) for st, v, t in zip(d["steps"], d["values"], d["times"])}
    dupes = len(d["steps"]) - len(got)
    values_ok = sorted(got) == sorted(logged) and all(got[k][0] == logged[k][0] for k in logged)
    ts_ok = values_ok and all(got[k][1] == logged[k][1] for k in logged)
    return {
        "ok": values_ok and ts_ok and not dupes,
        "aim_points": len(d["steps"]),
        "logged_points": len(logged),
        "steps_and_values_equal": values_ok,
        "mlflow_timestamps_kept": ts_ok,
        "duplicate_steps": dupes,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"poll": poll_main, "dump": dump_main}
    if not argv or argv[0] not in commands:
        asked = argv[:1] in (["-h"], ["--help"])
        print(__doc__, file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
