#!/usr/bin/env python
"""Generate the stores of bench/scale.py: N finished Hugging Face Trainer-shaped runs plus one
RUNNING run with a long `loss` history, with the same content in an MLflow file store, a sqlite
database and a PostgreSQL database (the `mlflow server` kind serves a copy of the sqlite one).

What the runs hold: scale_content.py.

How each kind is written:

* file: the experiment through `MlflowClient` (MLflow writes its `meta.yaml`); each run folder
  directly, in `FileStore`'s formats: `meta.yaml` from MLflow's own `RunInfo` and
  `_make_persisted_run_info_dict` through MLflow's `write_yaml`, one file per param and tag
  (the value, no newline), one line `"<ts> <value> <step>\\n"` per point in `metrics/<key>`;
* sqlite / PostgreSQL: `MlflowClient(uri).create_experiment` creates the schema (MLflow's
  migrations) and the experiment; then `runs`, `tags`, `params`, `metrics`, `latest_metrics`
  rows are inserted in bulk through the `__table__` of MLflow's own SQLAlchemy models
  (`mlflow.store.tracking.dbmodels.models`), the rows `SqlAlchemyStore` itself would write
  (`latest_metrics`: the point with the largest (step, timestamp, value) per key, as
  `_update_latest_metrics_if_necessary` keeps it). PostgreSQL gets `VACUUM ANALYZE` after the
  load (a production database has statistics); sqlite is left as MLflow leaves it (no ANALYZE).

`verify()` reads sample runs back through `MlflowClient` (first, middle and last finished run,
and the RUNNING run: info, params, tags, latest metrics, two metric histories) and compares them
with what the generator meant to write, and with the file store's reading of the same runs when
given one. Used from bench/scale.py; also a command line::

    .venv/bin/python bench/gen_scale.py --kind file --runs 100 --out /tmp/s100
    .venv/bin/python bench/gen_scale.py --kind sqlite --runs 100 --out /tmp/s100.db
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from scale_content import EXPERIMENT, HISTORY, RUNNING_ID, all_specs, run_spec, running_spec

os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


# --------------------------------------------------------------------------- file store


def write_file_store(root: Path, n: int, history: int = HISTORY) -> dict[str, Any]:
    from mlflow import MlflowClient
    from mlflow.entities import LifecycleStage, RunInfo
    from mlflow.store.tracking.file_store import _make_persisted_run_info_dict
    from mlflow.utils.yaml_utils import write_yaml

    t0 = time.perf_counter()
    if root.exists():
        shutil.rmtree(root)
    client = MlflowClient(tracking_uri=str(root))
    exp_id = client.create_experiment(EXPERIMENT)
    exp_dir = root / exp_id
    for spec in all_specs(n, history):
        rid = spec["run_id"]
        run_dir = exp_dir / rid
        for sub in ("metrics", "params", "artifacts", "tags"):
            os.makedirs(run_dir / sub)
        info = RunInfo(
            run_id=rid,
            run_name=spec["name"],
            experiment_id=exp_id,
            artifact_uri=str(run_dir / "artifacts"),
            user_id="bench",
            status=spec["status"],
            start_time=spec["start_time"],
            end_time=spec["end_time"],
            lifecycle_stage=LifecycleStage.ACTIVE,
        )
        meta = _make_persisted_run_info_dict(info)
        meta["deleted_time"] = None
        write_yaml(str(run_dir), "meta.yaml", meta)
        for sub, kv in (("params", spec["params"]), ("tags", spec["tags"])):
            d = run_dir / sub
            for k, v in kv.items():
                with open(d / k, "w") as fh:
                    fh.write(v)
        lines: dict[str, list[str]] = {}
        for key, value, ts, step in spec["points"]:
            lines.setdefault(key, []).append(f"{ts} {value} {step}\n")
        for key, ls in lines.items():
            with open(run_dir / "metrics" / key, "w") as fh:
                fh.writelines(ls)
    return {"kind": "file", "uri": str(root), "experiment_id": exp_id, "seconds": round(time.perf_counter() - t0, 1)}


# --------------------------------------------------------------------------- SQL stores


def write_sql_store(
    uri: str, n: int, artifact_root: Path, history: int = HISTORY, batch_runs: int = 100
) -> dict[str, Any]:
    """Into an EMPTY database (sqlite file absent, or a fresh PostgreSQL database)."""
    import sqlalchemy as sa
    from mlflow import MlflowClient
    from mlflow.store.tracking.dbmodels import models as m

    t0 = time.perf_counter()
    client = MlflowClient(tracking_uri=uri)  # the schema: MLflow's own migrations
    exp_id = client.create_experiment(EXPERIMENT, artifact_location=str(artifact_root))
    t_schema = time.perf_counter() - t0
    engine = sa.create_engine(uri)
    if uri.startswith("sqlite"):

        @sa.event.listens_for(engine, "connect")
        def _fast(dbapi_con, _rec):  # bulk load only; MLflow's own settings apply afterwards
            dbapi_con.execute("PRAGMA synchronous=OFF")

    tables = (
        m.SqlRun.__table__,
        m.SqlTag.__table__,
        m.SqlParam.__table__,
        m.SqlMetric.__table__,
        m.SqlLatestMetric.__table__,
    )
    rows: dict[Any, list[dict[str, Any]]] = {t: [] for t in tables}
    counts = {t.name: 0 for t in tables}

    def flush(con) -> None:
        for t in tables:
            if rows[t]:
                con.execute(sa.insert(t), rows[t])
                counts[t.name] += len(rows[t])
                rows[t].clear()

    with engine.begin() as con:
        for k, spec in enumerate(all_specs(n, history)):
            rid = spec["run_id"]
            rows[tables[0]].append(
                {
                    "run_uuid": rid,
                    "name": spec["name"],
                    "source_type": "UNKNOWN",
                    "source_name": "",
                    "entry_point_name": "",
                    "user_id": "bench",
                    "status": spec["status"],
                    "start_time": spec["start_time"],
                    "end_time": spec["end_time"],
                    "deleted_time": None,
                    "source_version": "",
                    "lifecycle_stage": "active",
                    "artifact_uri": f"{artifact_root}/{rid}/artifacts",
                    "experiment_id": int(exp_id),
                }
            )
            rows[tables[1]].extend({"key": k2, "value": v, "run_uuid": rid} for k2, v in spec["tags"].items())
            rows[tables[2]].extend({"key": k2, "value": v, "run_uuid": rid} for k2, v in spec["params"].items())
            latest: dict[str, tuple[int, int, float]] = {}
            mrows = rows[tables[3]]
            for key, value, ts, step in spec["points"]:
                mrows.append(
                    {"key": key, "value": value, "timestamp": ts, "run_uuid": rid, "step": step, "is_nan": False}
                )
                cand = (step, ts, value)
                if key not in latest or cand > latest[key]:
                    latest[key] = cand
            rows[tables[4]].extend(
                {"key": key, "value": v, "timestamp": ts, "step": st, "is_nan": False, "run_uuid": rid}
                for key, (st, ts, v) in latest.items()
            )
            if (k + 1) % batch_runs == 0 or len(mrows) > 200_000:
                flush(con)
        flush(con)
    t_load = time.perf_counter() - t0 - t_schema
    if uri.startswith("postgresql"):
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as con:
            con.execute(sa.text("VACUUM ANALYZE"))
    engine.dispose()
    return {
        "kind": "sql",
        "uri": uri,
        "experiment_id": exp_id,
        "rows": counts,
        "schema_s": round(t_schema, 1),
        "load_s": round(t_load, 1),
        "seconds": round(time.perf_counter() - t0, 1),
    }


# --------------------------------------------------------------------------- verification


def _read_run(client: Any, rid: str, keys: tuple[str, ...]) -> dict[str, Any]:
    r = client.get_run(rid)
    hist = {}
    for k in keys:
        got = client.get_metric_history(rid, k)
        hist[k] = sorted((m.step, m.timestamp, m.value) for m in got)
    exp = client.get_experiment(r.info.experiment_id)
    return {
        "experiment": exp.name,
        "run_id": r.info.run_id,
        "run_name": r.info.run_name,
        "status": r.info.status,
        "start_time": r.info.start_time,
        "end_time": r.info.end_time,
        "user_id": r.info.user_id,
        "lifecycle_stage": r.info.lifecycle_stage,
        "params": dict(r.data.params),
        "tags": dict(r.data.tags),
        "metrics": dict(r.data.metrics),
        "history": hist,
    }


def _expected(spec: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    latest: dict[str, tuple[int, int, float]] = {}
    hist: dict[str, list] = {k: [] for k in keys}
    for key, value, ts, step in spec["points"]:
        if key not in latest or (step, ts, value) > latest[key]:
            latest[key] = (step, ts, value)
        if key in hist:
            hist[key].append((step, ts, value))
    return {
        "experiment": EXPERIMENT,
        "run_id": spec["run_id"],
        "run_name": spec["name"],
        "status": spec["status"],
        "start_time": spec["start_time"],
        "end_time": spec["end_time"],
        "user_id": "bench",
        "lifecycle_stage": "active",
        "params": spec["params"],
        "tags": spec["tags"],
        "metrics": {k: v[2] for k, v in latest.items()},
        "history": {k: sorted(v) for k, v in hist.items()},
    }


def verify(uri: str, n: int, history: int = HISTORY, against: str | None = None) -> dict[str, Any]:
    """Sample runs read back through MlflowClient equal the generator's content (and, with
    `against`, another store's reading of them). Raises AssertionError on a difference."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    other = MlflowClient(tracking_uri=against) if against else None
    checked = []
    for i in sorted({0, n // 2, n - 1}):
        spec, keys = run_spec(i, n), ("loss", "eval_de_accuracy")
        got = _read_run(client, spec["run_id"], keys)
        want = _expected(spec, keys)
        diff = [k for k in want if got[k] != want[k]]
        assert not diff, f"{uri}: run {i} differs in {diff}: {[(got[k], want[k]) for k in diff][:1]}"
        if other is not None:
            theirs = _read_run(other, spec["run_id"], keys)
            diff = [k for k in got if got[k] != theirs[k]]
            assert not diff, f"{uri} vs {against}: run {i} differs in {diff}"
        checked.append(spec["run_id"])
    spec = running_spec(history)
    got = _read_run(client, RUNNING_ID, ("eval_fr_loss",))
    want = _expected(spec, ("eval_fr_loss",))
    diff = [k for k in want if got[k] != want[k]]
    assert not diff, f"{uri}: the RUNNING run differs in {diff}"
    n_loss = len(client.get_metric_history(RUNNING_ID, "loss"))
    assert n_loss == history, f"{uri}: RUNNING run has {n_loss} loss points, not {history}"
    checked.append(RUNNING_ID)
    return {"checked_runs": checked, "against": against, "running_loss_points": n_loss}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", choices=("file", "sqlite", "postgresql"), required=True)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--history", type=int, default=HISTORY)
    ap.add_argument(
        "--out",
        required=True,
        help="file: the store folder; sqlite: the .db file; postgresql: a URI of an empty database",
    )
    ap.add_argument("--verify-against", default=None, help="another store's URI to compare sample runs with")
    a = ap.parse_args(argv)
    if a.kind == "file":
        info = write_file_store(Path(a.out).resolve(), a.runs, a.history)
    elif a.kind == "sqlite":
        p = Path(a.out).resolve()
        p.unlink(missing_ok=True)
        info = write_sql_store(f"sqlite:///{p}", a.runs, p.parent / (p.stem + "-artifacts"), a.history)
    else:
        info = write_sql_store(a.out, a.runs, Path("/tmp/scale-bench-artifacts"), a.history)
    info["verify"] = verify(info["uri"], a.runs, a.history, a.verify_against)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
