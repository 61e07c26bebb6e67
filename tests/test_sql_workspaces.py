"""Workspaces over SQL (MLflow >= 3.10, `experiments.workspace`), on the database a real
workspace-mode server (`mlflow server --enable-workspaces`, tests/legacy_mlflow.py) writes, read
directly: every workspace by default, `--workspace` to choose; same-named experiments of two
workspaces land in two Aim experiments (`team-a/xnli`), the default workspace keeps bare names; a
workspace deleted with its experiments moved to the default one moves them in Aim too."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
import urllib.request

import pytest

from conftest import T0, read_aim, run_syncer
from test_sync_daemon import Daemon, wait_for

pytestmark = pytest.mark.slow


def _rest(uri: str, workspace: str, endpoint: str, body: dict | None = None, method: str = "POST") -> dict:
    req = urllib.request.Request(
        f"{uri}/api/{endpoint}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", "X-MLFLOW-WORKSPACE": workspace},
        method=method,
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"{}")


def _experiment_with_a_run(uri: str, workspace: str, name: str, points: list[tuple[int, float, int]]) -> str:
    exp = _rest(uri, workspace, "2.0/mlflow/experiments/create", {"name": name})["experiment_id"]
    run = _rest(uri, workspace, "2.0/mlflow/runs/create", {"experiment_id": exp, "start_time": T0, "run_name": "r"})
    run_id = run["run"]["info"]["run_id"]
    metrics = [{"key": "loss", "value": v, "timestamp": ts, "step": s} for s, v, ts in points]
    _rest(uri, workspace, "2.0/mlflow/runs/log-batch", {"run_id": run_id, "metrics": metrics})
    _rest(uri, workspace, "2.0/mlflow/runs/update", {"run_id": run_id, "status": "FINISHED", "end_time": T0 + 100})
    return run_id


def _backfill(uri: str, repo, *extra: str):
    """The server keeps the artifacts (`mlflow-artifacts:`), which a database read directly cannot
    reach (deploy/README.md: SYNCER_NO_ARTIFACTS there)."""
    return run_syncer("backfill", "--mlflow-tracking-uri", uri, "--aim-repo", str(repo), "--no-artifacts", *extra)


@pytest.fixture
def teams(mlflow_workspace_server):
    """Two new workspaces of the shared server and the same experiment name in each and in the
    default one (names unique to this test: the server is the session's)."""
    uri = mlflow_workspace_server.uri
    sfx = f"{os.getpid()}-{time.time_ns() % 10**9}"
    a, b = f"sqlws-a-{sfx}", f"sqlws-b-{sfx}"
    for ws in (a, b):
        _rest(uri, "default", "3.0/mlflow/workspaces", {"name": ws})
    name = f"xnli-{sfx}"
    runs = {}
    for i, ws in enumerate(("default", a, b)):
        points = [(s, float(10 * i + s), T0 + s) for s in range(4 + i)]
        runs[ws] = (_experiment_with_a_run(uri, ws, name, points), points)
    return mlflow_workspace_server, name, runs


def test_every_workspace_by_default_each_its_own_aim_experiment(teams, tmp_path):
    server, name, runs = teams
    default, a, b = runs
    p = _backfill(server.backend, tmp_path / "all", "--experiment", name)
    assert p.returncode == 0, p.stderr
    aim = read_aim(tmp_path / "all")
    want = {default: name, a: f"{a}/{name}", b: f"{b}/{name}"}
    for ws, (run, points) in runs.items():
        got = aim[run]
        assert got["experiment"] == want[ws], (ws, got["experiment"])
        assert got["params"]["mlflow"]["workspace"] == ws and got["params"]["mlflow"]["experiment_name"] == name
        loss = got["metrics"][("loss", ())]
        assert (loss["steps"], loss["values"]) == ([s for s, _, _ in points], [v for _, v, _ in points])
        assert loss["timestamps"] == [ts / 1000 for _, _, ts in points]
    assert len({aim[run]["experiment"] for run, _ in runs.values()}) == 3  # never merged

    # one workspace chosen: only its experiments
    p = _backfill(server.backend, tmp_path / "a", "--workspace", a)
    assert p.returncode == 0, p.stderr
    assert {r: v["experiment"] for r, v in read_aim(tmp_path / "a").items()} == {runs[a][0]: f"{a}/{name}"}


def test_an_unknown_workspace_is_bad_input_for_a_backfill(teams, tmp_path, caplog):
    from syncer.sources import ReadStats, StoreLocation
    from syncer.sources.sql import SqlSource

    server, _name, runs = teams
    missing = "sqlws-nowhere"
    p = run_syncer(
        "backfill", "--mlflow-tracking-uri", server.backend, "--aim-repo", str(tmp_path / "aim"), "--workspace", missing
    )
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1 and "unknown MLflow workspace(s)" in lines[0], p.stderr
    assert repr(missing) in lines[0] and not (tmp_path / "aim").exists()
    # a daemon: it may be made later, said once
    with caplog.at_level(logging.WARNING, logger="syncer"):
        for _ in range(2):
            SqlSource(StoreLocation.parse(server.backend), ReadStats(), must_exist=False, workspaces=(missing,)).close()
    assert [r.getMessage() for r in caplog.records].count(
        f"unknown MLflow workspace(s) in {server.backend}: {missing!r}: their experiments are synced once they exist"
    ) == 1


def test_a_workspace_deleted_into_the_default_one_moves_its_experiments(mlflow_workspace_server, tmp_path):
    """`DELETE /workspaces/<name>?mode=SET_DEFAULT` moves its experiments (same ids, their
    `last_update_time` unchanged) to the default workspace: a daemon that only lists what
    changed (no full listing meanwhile) moves their runs to the bare-named Aim experiment."""
    uri = mlflow_workspace_server.uri
    sfx = f"{os.getpid()}-{time.time_ns() % 10**9}"
    ws, name = f"sqlws-c-{sfx}", f"moved-{sfx}"
    _rest(uri, "default", "3.0/mlflow/workspaces", {"name": ws})
    run = _experiment_with_a_run(uri, ws, name, [(0, 1.0, T0)])
    repo = tmp_path / "aim"
    daemon = Daemon(
        mlflow_workspace_server.backend,
        repo,
        "--experiment",
        name,
        "--full-scan-interval",
        "3600",
        "--no-artifacts",
        interval=0.5,
    ).start()
    try:
        wait_for(lambda: read_aim(repo)[run]["experiment"] == f"{ws}/{name}", 120)
        _rest(uri, "default", f"3.0/mlflow/workspaces/{ws}?mode=SET_DEFAULT", method="DELETE")
        # the Aim experiment (structured DB) and the params (the run, through its index entry) are
        # written one after the other: wait for both
        moved = wait_for(
            lambda: (
                (got := read_aim(repo)[run])["experiment"] == name
                and got["params"]["mlflow"].get("workspace") == "default"
                and got
            ),
            120,
        )
        assert moved["params"]["mlflow"]["workspace"] == "default"
        assert moved["metrics"][("loss", ())]["values"] == [1.0]
        rc, _ = daemon.stop(signal.SIGTERM, timeout=60)
        assert rc == 0, daemon.text()
    finally:
        daemon.kill()
