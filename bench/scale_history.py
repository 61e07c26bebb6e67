"""History options over HTTP (`scale.py history-options`): through a real `mlflow server` over a
copy of the sqlite store, the cost of reading the RUNNING run's new `loss` points one way or the
other (what syncer's HTTP source chooses between; measured through syncer's own REST access)."""

from __future__ import annotations

import base64
import json
import shutil
import time
from pathlib import Path
from typing import Any

from benchkit import fresh_dir, git_state, load, now_iso, rest_internals, summ, tree_cpu
from scale_content import HISTORY, RUNNING_ID
from scale_stores import Stores, WorkStore

INT32_MAX = 2**31 - 1


def history_options_part(stores: Stores, out: Path, args) -> dict[str, Any]:
    """Through a real `mlflow server` (over a copy of the sqlite store), reading the new points of
    the RUNNING run's 50,000-point `loss`: a get-history page from an offset (the page token is
    MLflow's base64 {"offset": N}), vs get-history-bulk-interval from a start step; and, for
    scale, reading the whole history with get-history pages of 25,000. Per request: wall (the
    client's, server included), the client's CPU, the server's CPU (its process tree)."""
    from mlflow import MlflowClient

    n = args.size
    work = fresh_dir(out / "work" / f"history-{n}")
    res: dict[str, Any] = {
        "part": "history-options",
        "runs": n,
        "started": now_iso(),
        "git": git_state(),
        "load_start": load(),
        "reps": args.reps,
    }
    with WorkStore("server", n, stores, work) as ws:
        client = MlflowClient(tracking_uri=ws.uri)
        rest = rest_internals(client)
        pid = ws.serving_pid()
        total = HISTORY

        def token(offset: int) -> str:
            return base64.b64encode(json.dumps({"offset": offset}).encode()).decode()

        cases = {}
        for k in args.new:
            cases[f"get-history page from offset, {k} new"] = (
                lambda k=k: len(rest.history_page(RUNNING_ID, "loss", 25_000, token(total - k))),
                k,
            )
            cases[f"bulk-interval from start step, {k} new"] = (
                lambda k=k: len(rest.bulk_interval(RUNNING_ID, "loss", total - k, INT32_MAX, 2500)),
                k,
            )
        cases["get-history, whole history (2 pages of 25,000)"] = (lambda: sum(len(p) for p in _all_pages(rest)), total)
        cases["bulk-interval, whole range (sampled to 2,500)"] = (
            lambda: len(rest.bulk_interval(RUNNING_ID, "loss", 0, INT32_MAX, 2500)),
            2500,
        )
        for fn, _ in cases.values():  # warm the server (imports, caches)
            fn()
        samples: dict[str, dict[str, list[float]]] = {
            c: {"wall": [], "client_cpu": [], "server_cpu": []} for c in cases
        }
        got: dict[str, int] = {}
        for _ in range(args.reps):  # interleaved: one of each per repetition
            for name, (fn, _k) in cases.items():
                s0, c0, t0 = tree_cpu(pid), time.process_time(), time.perf_counter()
                got[name] = fn()
                t1, c1, s1 = time.perf_counter(), time.process_time(), tree_cpu(pid)
                samples[name]["wall"].append(t1 - t0)
                samples[name]["client_cpu"].append(c1 - c0)
                samples[name]["server_cpu"].append(s1 - s0)
        res["cases"] = {
            name: {"points_returned": got[name], **{k: summ(v) for k, v in d.items()}} for name, d in samples.items()
        }
    res["load_end"] = load()
    shutil.rmtree(work, ignore_errors=True)
    return res


def _all_pages(rest) -> list:
    pages, tok = [], None
    while True:
        page = rest.history_page(RUNNING_ID, "loss", 25_000, tok)
        pages.append(page)
        tok = page.token
        if not tok:
            return pages
