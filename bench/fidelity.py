"""Fidelity, point by point: an Aim repo against the MLflow store it was made from.

For every MLflow run, the Aim run whose ``run["mlflow"]["run_id"]`` is its id (aimlflow's repos:
the ``mlflow_run_id`` param) must exist, once, and hold the same multiset of (step, value,
timestamp ms) over all its metrics, values compared bit for bit, Aim's float seconds as
``round(t * 1000)``. Names and contexts are not compared, so the check holds with or without
context mapping. Used by backfill.py (``verify(mlflow_points(uri), repo)``)."""

from __future__ import annotations

import struct
from collections import Counter


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
