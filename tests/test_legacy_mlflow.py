"""The MLflow 2.x fixtures themselves (tests/legacy_mlflow.py): each version's own server answers
with its version, what its client logged is what MLflow 3's client reads back from that server,
and the databases it writes carry its schema revision. Fast once the venvs are cached."""

from __future__ import annotations

import json
import math
import sqlite3
import urllib.request

import pytest

from legacy_mlflow import LEGACY_VERSIONS, OLDEST_2X, SCHEMA_HEADS

_MAX = 1.7976931348623157e308  # MLflow's SQL stores keep +-inf as +-max float


def _as_stored(v: float) -> float:
    return math.copysign(_MAX, v) if math.isinf(v) else v


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def _check_read_back(uri: str, logged: dict, version: str) -> None:
    """MLflow 3's client reads from a 2.x server exactly what the 2.x client logged."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    assert logged["mlflow"] == version
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(logged["experiment"])
    assert exp is not None and exp.experiment_id == logged["experiment_id"]
    assert exp.tags["team"] == "nlp"
    found = {r.info.run_id: r for r in client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL)}
    assert set(found) == {r["run_id"] for r in logged["runs"].values()}
    for label, want in logged["runs"].items():
        run = found[want["run_id"]]
        assert (run.info.run_name, run.info.status, run.info.lifecycle_stage) == (
            want["name"],
            want["status"],
            want["lifecycle_stage"],
        ), label
        assert (run.info.start_time, run.info.end_time) == (want["start"], want["end"]), label
        assert run.data.params == want["params"], label
        assert {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")} == {
            k: v for k, v in want["tags"].items() if not k.startswith("mlflow.")
        }, label
        for key, points in want["metrics"].items():
            got = sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run.info.run_id, key))
            exp_points = sorted((s, ts, _as_stored(v)) for s, v, ts in points)
            assert [(s, ts) for s, ts, _ in got] == [(s, ts) for s, ts, _ in exp_points], (label, key)
            assert all(_same(a[2], b[2]) for a, b in zip(got, exp_points)), (label, key, got)
    finished = logged["runs"]["finished"]
    # not MlflowClient.list_artifacts: MLflow 3's asks for logged models, which a 2.x server lacks
    with urllib.request.urlopen(f"{uri}/api/2.0/mlflow/artifacts/list?run_id={finished['run_id']}&path=notes") as r:
        listed = [f["path"] for f in json.load(r)["files"]]
    assert listed == finished["artifacts"] == ["notes/predictions.txt"]
    assert found[logged["runs"]["updated"]["run_id"]].info.end_time is None  # update_run sets no end time
    assert [s for s, _, _ in logged["runs"]["finished"]["metrics"]["resumed"]] == [10, 20, 30, 15]


def test_server_answers_with_its_version_and_mlflow3_reads_what_its_client_logged(mlflow2, mlflow2_server, tmp_path):
    with urllib.request.urlopen(mlflow2_server.uri + "/version", timeout=10) as r:
        assert r.read().decode() == mlflow2.version
    logged = mlflow2.write(mlflow2_server.uri, tmp_path)
    _check_read_back(mlflow2_server.uri, logged, mlflow2.version)
    db = mlflow2_server.backend.removeprefix("sqlite:///")
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [(SCHEMA_HEADS[mlflow2.version],)]
    con.close()


@pytest.mark.parametrize("version", [OLDEST_2X, LEGACY_VERSIONS[0]])
def test_database_written_by_the_version_carries_its_schema_head(legacy_mlflow_factory, version, tmp_path):
    """The writer straight into a database (the oldest 2.x schema, and 2.9.2's); the other
    versions' heads are checked on their servers' databases above."""
    mlflow2 = legacy_mlflow_factory(version)
    db = tmp_path / "mlflow.db"
    logged = mlflow2.write(f"sqlite:///{db}", tmp_path)
    assert mlflow2.schema_head() == SCHEMA_HEADS[mlflow2.version]
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [(SCHEMA_HEADS[mlflow2.version],)]
    tables = {t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "logged_models" not in tables and ("datasets" in tables) == (version != OLDEST_2X)
    runs = dict(con.execute("SELECT run_uuid, lifecycle_stage FROM runs").fetchall())
    assert runs == {r["run_id"]: r["lifecycle_stage"] for r in logged["runs"].values()}
    n_points = sum(len(p) for r in logged["runs"].values() for p in r["metrics"].values())
    assert con.execute("SELECT count(*) FROM metrics").fetchone() == (n_points,)
    con.close()


def test_newest_2x_server_on_postgresql(legacy_mlflow_factory, postgres, tmp_path):
    """The newest 2.x on a PostgreSQL backend: the server creates its schema there, MLflow 3
    reads what the 2.x client logged."""
    newest = legacy_mlflow_factory(LEGACY_VERSIONS[-1])
    url = postgres.new_database()
    server = newest.server(tmp_path / "server", url)
    try:
        logged = newest.write(server.uri, tmp_path)
        _check_read_back(server.uri, logged, newest.version)
    finally:
        server.stop()
    head = postgres.sql("SELECT version_num FROM alembic_version", url.rsplit("/", 1)[1])
    assert head == SCHEMA_HEADS[newest.version]


def test_workspace_server_keeps_same_named_experiments_apart(mlflow_workspace_server):
    from mlflow.tracking import MlflowClient

    uri = mlflow_workspace_server.uri
    with urllib.request.urlopen(uri + "/api/3.0/mlflow/server-info", timeout=10) as r:
        assert json.load(r)["workspaces_enabled"] is True
    names = {w.name for w in MlflowClient(uri).list_workspaces()}
    ids = {}
    for ws in ("smoke-a", "smoke-b"):
        if ws not in names:
            MlflowClient(uri).create_workspace(ws)
        body = json.dumps({"name": "xnli-smoke"}).encode()
        req = urllib.request.Request(
            uri + "/api/2.0/mlflow/experiments/create",
            data=body,
            headers={"Content-Type": "application/json", "X-MLFLOW-WORKSPACE": ws},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            ids[ws] = json.load(r)["experiment_id"]
    assert ids["smoke-a"] != ids["smoke-b"]
    db = mlflow_workspace_server.backend.removeprefix("sqlite:///")
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rows = con.execute("SELECT workspace, experiment_id FROM experiments WHERE name = 'xnli-smoke'").fetchall()
    con.close()
    assert sorted(rows) == [("smoke-a", int(ids["smoke-a"])), ("smoke-b", int(ids["smoke-b"]))]


@pytest.mark.parametrize("version", [*LEGACY_VERSIONS, OLDEST_2X])
def test_constraints_are_pinned(version):
    from legacy_mlflow import constraints_file

    lines = [ln for ln in constraints_file(version).read_text().splitlines() if ln and not ln.startswith("#")]
    assert f"mlflow=={version}" in lines
    assert all("==" in ln for ln in lines), [ln for ln in lines if "==" not in ln]
    sqlalchemy = next(ln for ln in lines if ln.lower().startswith("sqlalchemy=="))
    assert tuple(int(x) for x in sqlalchemy.split("==")[1].split(".")[:2]) < (2, 1)
