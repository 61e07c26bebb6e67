"""Runs logged with whatever MLflow client runs this script (an MLflow 2.x venv of
tests/legacy_mlflow.py, or the project's own), into a server or a database. Writes what it logged
to OUT as JSON (NaN and infinities as Python's json writes them).

    python tests/legacy_mlflow_writer.py populate --uri URI --out OUT.json [--experiment NAME] [--artifacts DIR]
    python tests/legacy_mlflow_writer.py points RUN_ID KEY STEP:VALUE:TS [...] --uri URI --out OUT.json
    python tests/legacy_mlflow_writer.py end RUN_ID STATUS --uri URI --out OUT.json   (update_run: no end time)
    python tests/legacy_mlflow_writer.py runs N --uri URI --out OUT.json [--experiment NAME]

`populate` logs one experiment (tags) with: a finished run (params, tags, several keys with
explicit steps and timestamps, NaN/inf/-inf, two points at one step, a key with a late lower step
logged after higher ones with a later timestamp and one with an older timestamp, a system metric, a
dataset input where the client has them, a text artifact with --artifacts), a failed run with a
nested child, a deleted run, a run left RUNNING, and a run ended with `update_run` (status
FINISHED, no end time). `runs` logs N finished runs of 3 points each (`loss`, steps 0-2): more runs
than MLflow <= 2.10's get-history-bulk takes at once (20).
OUT of populate: {"mlflow": version, "experiment": name, "experiment_id": id,
      "runs": {label: {"run_id", "name", "status", "start", "end", "lifecycle_stage", "params",
                       "tags", "metrics": {key: [[step, value, timestamp_ms], ...] in logging order},
                       and for "finished": "datasets" and "artifacts" where logged}}}
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

T0 = 1_600_000_000_000  # 2020-09-13, ms: runs logged "long ago"
INF = float("inf")


def log_points(client: MlflowClient, run_id: str, key: str, points: list, logged: dict) -> None:
    """points: [step, value, ts] logged in order (batches of 1000, as clients do)."""
    for i in range(0, len(points), 1000):
        part = points[i : i + 1000]
        client.log_batch(run_id, metrics=[Metric(key, float(v), int(ts), int(s)) for s, v, ts in part])
    logged.setdefault(key, []).extend([[int(s), float(v), int(ts)] for s, v, ts in points])


def new_run(client, exp_id, label, runs, *, name, start, tags=None, params=None) -> str:
    tags = dict(tags or {})
    run = client.create_run(exp_id, start_time=start, tags=tags, run_name=name)
    run_id = run.info.run_id
    if params:
        client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
    runs[label] = dict(
        run_id=run_id,
        name=name,
        status="RUNNING",
        start=start,
        end=None,
        lifecycle_stage="active",
        params=dict(params or {}),
        tags=tags,
        metrics={},
    )
    return run_id


def populate(client: MlflowClient, uri: str, experiment: str, artifacts: str | None) -> dict:
    location = None
    if artifacts and not uri.startswith(("http://", "https://")):  # a database: not ./mlruns of the cwd
        location = "file://" + os.path.abspath(os.path.join(artifacts, "store"))
    exp_id = client.create_experiment(
        experiment, artifact_location=location, tags={"team": "nlp", "mlflow.note.content": "legacy ✓"}
    )
    runs: dict[str, dict] = {}

    # 1. finished: params, tags, several keys, special values, a late lower step
    params = {"learning_rate": "5e-05", "batch_size": "8", "model": "bert-base-multilingual-cased", "long": "x" * 400}
    rid = new_run(client, exp_id, "finished", runs, name="bert-base", start=T0, tags={"team": "nlp"}, params=params)
    m = runs["finished"]["metrics"]
    log_points(client, rid, "loss", [[s, 1.0 / (s + 1), T0 + 1000 * s + 7] for s in range(50)], m)
    for lang in ("en", "de"):
        log_points(
            client, rid, f"eval_{lang}_accuracy", [[s, 0.3 + s / 100, T0 + 1000 * s + 500] for s in (0, 20, 40)], m
        )
    log_points(
        client, rid, "weird", [[0, float("nan"), T0 + 1], [1, INF, T0 + 2], [2, -INF, T0 + 3], [3, 0.0, T0 + 4]], m
    )
    log_points(client, rid, "dup", [[5, 1.0, T0 + 100], [5, 2.0, T0 + 200], [6, 3.0, T0 + 300]], m)
    # a run resumed from a checkpoint: steps 10, 20, 30, then 15 again, with a later timestamp ...
    log_points(client, rid, "resumed", [[10, 1.0, T0 + 10], [20, 2.0, T0 + 20], [30, 3.0, T0 + 30]], m)
    log_points(client, rid, "resumed", [[15, 1.5, T0 + 40]], m)
    # ... and a buffer replayed with its own, older timestamps
    log_points(client, rid, "replayed", [[10, 1.0, T0 + 10], [20, 2.0, T0 + 20], [30, 3.0, T0 + 30]], m)
    log_points(client, rid, "replayed", [[15, 1.5, T0 + 5]], m)
    log_points(client, rid, "system/cpu_utilization_percentage", [[0, 12.5, T0 + 50], [1, 13.5, T0 + 60]], m)
    if hasattr(client, "log_inputs"):  # MLflow >= 2.4
        from mlflow.entities import Dataset, DatasetInput, InputTag

        ds = Dataset(name="xnli-en-train", digest="abc123", source_type="local", source='{"uri": "data/en.jsonl"}')
        client.log_inputs(rid, [DatasetInput(ds, [InputTag("mlflow.data.context", "training")])])
        runs["finished"]["datasets"] = [{"name": "xnli-en-train", "digest": "abc123", "context": "training"}]
    if artifacts:  # through the server's artifact proxy (mlflow-artifacts:/), or into the folder
        os.makedirs(artifacts, exist_ok=True)
        path = os.path.join(artifacts, "predictions.txt")
        with open(path, "w") as f:
            f.write("premise\thypothesis\tpred\nDer Hund\tEin Tier\tentailment\n")
        client.log_artifact(rid, path, "notes")
        runs["finished"]["artifacts"] = ["notes/predictions.txt"]
    client.log_batch(rid, tags=[RunTag("stage", "final")])
    runs["finished"]["tags"]["stage"] = "final"
    client.set_terminated(rid, "FINISHED", end_time=T0 + 3_600_000)
    runs["finished"].update(status="FINISHED", end=T0 + 3_600_000)

    # 2. failed, with a nested child
    pid = new_run(client, exp_id, "failed", runs, name="xlm-roberta", start=T0 + 10_000_000, params={"lr": "2e-05"})
    log_points(client, pid, "train_loss", [[1, 0.5, T0 + 10_000_100]], runs["failed"]["metrics"])
    cid = new_run(client, exp_id, "child", runs, name="fold-1", start=T0 + 10_000_200, tags={"mlflow.parentRunId": pid})
    log_points(client, cid, "val/acc", [[1, 0.7, T0 + 10_000_300]], runs["child"]["metrics"])
    client.set_terminated(cid, "FINISHED", end_time=T0 + 10_000_400)
    runs["child"].update(status="FINISHED", end=T0 + 10_000_400)
    client.set_terminated(pid, "FAILED", end_time=T0 + 10_500_000)
    runs["failed"].update(status="FAILED", end=T0 + 10_500_000)

    # 3. deleted
    did = new_run(client, exp_id, "deleted", runs, name="deleted-run", start=T0 + 20_000_000)
    log_points(client, did, "loss", [[0, 1.0, T0 + 20_000_001]], runs["deleted"]["metrics"])
    client.set_terminated(did, "KILLED", end_time=T0 + 20_000_002)
    client.delete_run(did)
    runs["deleted"].update(status="KILLED", end=T0 + 20_000_002, lifecycle_stage="deleted")

    # 4. still running
    rr = new_run(client, exp_id, "running", runs, name="still-running", start=T0 + 30_000_000)
    log_points(client, rr, "loss", [[0, 1.0, T0 + 30_000_001], [1, 0.9, T0 + 30_000_002]], runs["running"]["metrics"])

    # 5. ended through update_run: FINISHED without an end time
    uid = new_run(client, exp_id, "updated", runs, name="ended-by-update", start=T0 + 40_000_000)
    log_points(client, uid, "loss", [[0, 0.4, T0 + 40_000_001]], runs["updated"]["metrics"])
    client.update_run(uid, status="FINISHED")
    runs["updated"].update(status="FINISHED", end=client.get_run(uid).info.end_time)
    return {"experiment": experiment, "experiment_id": exp_id, "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=("populate", "points", "end", "runs"))
    ap.add_argument("args", nargs="*")
    ap.add_argument("--uri", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--experiment", default=None)
    ap.add_argument("--artifacts", default=None)
    a = ap.parse_args()
    mlflow.set_tracking_uri(a.uri)  # 2.x resolves mlflow-artifacts:/ with the global URI, not the client's
    client = MlflowClient(tracking_uri=a.uri)
    if a.command == "populate":
        name = a.experiment or f"legacy {mlflow.__version__} ✓ {time.time_ns()}"
        out = populate(client, a.uri, name, a.artifacts)
    elif a.command == "points":
        run_id, key, *pts = a.args
        points = [[int(s), float(v), int(t)] for s, v, t in (p.split(":") for p in pts)]
        logged: dict = {}
        log_points(client, run_id, key, points, logged)
        out = {"run_id": run_id, "metrics": logged}
    elif a.command == "runs":
        exp_id = client.create_experiment(a.experiment or f"many {mlflow.__version__} {time.time_ns()}")
        points = [[s, 1.0 / (s + 1), T0 + s] for s in range(3)]
        ids = []
        for i in range(int(a.args[0])):
            run_id = client.create_run(exp_id, start_time=T0 + i, run_name=f"run-{i}").info.run_id
            log_points(client, run_id, "loss", points, {})
            client.set_terminated(run_id, "FINISHED", end_time=T0 + 100_000)
            ids.append(run_id)
        out = {"experiment_id": exp_id, "run_ids": ids, "metrics": {"loss": points}}
    else:
        run_id, status = a.args
        client.update_run(run_id, status=status)
        out = {"run_id": run_id, "status": status, "end": client.get_run(run_id).info.end_time}
    out["mlflow"] = mlflow.__version__
    with open(a.out, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
