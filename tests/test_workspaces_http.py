"""An MLflow server in workspace mode (3.17, `mlflow server --enable-workspaces`) read over HTTP:
every workspace by default, `--workspace` to choose; each request carries its workspace, so
same-named experiments of two workspaces never merge in Aim (`team-a/xnli`; the default workspace
keeps the bare name); quick rounds cost what is new; a deleted workspace moves (SET_DEFAULT) or
removes (CASCADE) its experiments."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from syncer.config import Config
from syncer.runner import open_driver

from conftest import T0, log_points, read_aim, run_syncer

pytestmark = pytest.mark.slow


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _in(workspace: str):
    """The test's own client calls in one workspace (process-wide in MLflow: the test is the only
    caller here)."""
    from mlflow.utils.workspace_context import WorkspaceContext

    return WorkspaceContext(workspace)


def _run(uri: str, workspace: str, experiment: str, offset: float, tmp: Path, *, running: bool = False) -> dict:
    """An experiment (made if new) with one run in `workspace`: 5 points of `loss`, a text artifact."""
    import mlflow

    client = _client(uri)
    with _in(workspace):
        found = client.get_experiment_by_name(experiment)
        exp = found.experiment_id if found else client.create_experiment(experiment)
        run = client.create_run(exp, run_name=f"run-{workspace}", start_time=T0).info.run_id
        points = [(s, offset + 1.0 / (s + 1), T0 + 10 * s) for s in range(5)]
        log_points(client, run, "loss", points)
        note = tmp / f"note-{workspace}.txt"
        note.write_text(f"written in {workspace}\n")
        mlflow.set_tracking_uri(uri)  # mlflow-artifacts:/ is resolved with the global tracking URI
        client.log_artifact(run, str(note), "notes")
        if not running:
            client.set_terminated(run, "FINISHED", end_time=T0 + 1000)
    return {"run_id": run, "experiment_id": exp, "points": points, "workspace": workspace}


def _workspaces(uri: str, *names: str) -> None:
    client = _client(uri)
    for name in names:
        client.create_workspace(name)


def _loss(aim_run: dict) -> list[tuple[int, float, float]]:
    (m,) = aim_run["metrics"].values()
    return list(zip(m["steps"], m["values"], m["timestamps"]))


def test_same_named_experiments_of_two_workspaces_never_merge(mlflow_workspace_server, tmp_path):
    uri = mlflow_workspace_server.uri
    u = uuid.uuid4().hex[:8]
    a, b, name = f"a-{u}", f"b-{u}", f"xnli-{u}"
    _workspaces(uri, a, b)
    runs = [_run(uri, ws, name, i, tmp_path) for i, ws in enumerate(("default", a, b))]
    assert len({r["experiment_id"] for r in runs}) == 3

    repo = tmp_path / "aim"
    p = run_syncer("backfill", "--mlflow-tracking-uri", uri, "--aim-repo", str(repo), "--experiment", name)
    assert p.returncode == 0, p.stdout + p.stderr
    assert " WARNING " not in p.stderr, p.stderr
    aim = read_aim(repo)
    want = {"default": name, a: f"{a}/{name}", b: f"{b}/{name}"}
    for r in runs:
        got = aim[r["run_id"]]
        assert got["experiment"] == want[r["workspace"]]
        assert got["params"]["mlflow"]["workspace"] == r["workspace"]
        assert _loss(got) == [(s, v, ts / 1000) for s, v, ts in r["points"]]  # its own points only
        assert got["objects"] == ["notes/note-" + r["workspace"]]  # its artifact, fetched in its workspace
    assert {r["experiment"] for r in aim.values()} == set(want.values())

    one = tmp_path / "one"  # a workspace chosen (the env's way of saying --workspace)
    p = run_syncer("backfill", "--mlflow-tracking-uri", uri, "--aim-repo", str(one), env={"SYNCER_WORKSPACES": a})
    assert p.returncode == 0, p.stdout + p.stderr
    assert {r["experiment"] for r in read_aim(one).values()} == {f"{a}/{name}"}

    nowhere = tmp_path / "nowhere"
    p = run_syncer("backfill", "--mlflow-tracking-uri", uri, "--aim-repo", str(nowhere), "--workspace", f"no-{u}")
    assert p.returncode == 2 and f"unknown MLflow workspace(s) at {uri}: 'no-{u}'" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and not nowhere.exists()


def _driver(uri: str, repo: Path, artifacts: bool = False, **cfg):
    return open_driver(
        Config(tracking_uri=uri, aim_repo=repo, artifacts=artifacts, full_scan_interval=3600, **cfg),
        strict_experiments=False,
        must_exist=True,
        role="daemon",
    )


def test_quick_rounds_cost_what_is_new_in_each_workspace(mlflow_workspace_server, tmp_path):
    uri = mlflow_workspace_server.uri
    u = uuid.uuid4().hex[:8]
    a, b = f"qa-{u}", f"qb-{u}"
    _workspaces(uri, a, b)
    live = _run(uri, a, "xnli", 0, tmp_path, running=True)
    _run(uri, b, "xnli", 1, tmp_path)
    s = _driver(uri, tmp_path / "aim", workspaces=(a, b))
    try:
        first = s.round()
        assert not first.errors and first.points == 10, first.as_dict()
        idle = s.round()
        # the workspaces, then in each: its experiments, two searches
        assert idle.read["requests"] == 1 + 2 * 3 and idle.read["histories"] == 0, idle.as_dict()
        with _in(a):
            log_points(_client(uri), live["run_id"], "loss", [(5, 0.5, T0 + 60)])
        one = s.round()
        assert one.points == 1 and one.read["requests"] == 1 + 2 * 3 + 1, one.as_dict()
    finally:
        s.close()
    aim = read_aim(tmp_path / "aim")
    assert _loss(aim[live["run_id"]])[-1] == (5, 0.5, (T0 + 60) / 1000)
    assert aim[live["run_id"]]["experiment"] == f"{a}/xnli"


def test_a_deleted_workspace_moves_or_removes_its_experiments(mlflow_workspace_server, tmp_path):
    """SET_DEFAULT: the experiments move to `default` (the same ids; MLflow leaves their
    last_update_time as it was): their runs move to the Aim experiment of the bare name, by the
    next round; MLflow no longer serves their artifacts (kept under the deleted workspace): what
    was copied stays, with one warning. CASCADE: experiments and runs are deleted from MLflow's
    database, like `mlflow gc`: their Aim runs stay as they were. Neither is a run's error."""
    uri = mlflow_workspace_server.uri
    u = uuid.uuid4().hex[:8]
    c, d = f"c-{u}", f"d-{u}"
    _workspaces(uri, c, d)
    moved = _run(uri, c, f"moved-{u}", 0, tmp_path)
    gone = _run(uri, d, f"gone-{u}", 1, tmp_path)
    s = _driver(uri, tmp_path / "aim", artifacts=True, experiments=(f"moved-{u}", f"gone-{u}"))
    try:
        assert not s.round().errors
        aim = read_aim(tmp_path / "aim")
        assert aim[moved["run_id"]]["experiment"] == f"{c}/moved-{u}"
        assert aim[gone["run_id"]]["experiment"] == f"{d}/gone-{u}"
        _client(uri).delete_workspace(c, mode="SET_DEFAULT")
        _client(uri).delete_workspace(d, mode="CASCADE")
        quick = s.round()
        assert not quick.read["full"] and not quick.errors and quick.runs_written == 1, quick.as_dict()
    finally:
        s.close()
    aim = read_aim(tmp_path / "aim")
    assert aim[moved["run_id"]]["experiment"] == f"moved-{u}"
    assert aim[moved["run_id"]]["params"]["mlflow"]["workspace"] == "default"
    assert _loss(aim[moved["run_id"]]) == [(s, v, ts / 1000) for s, v, ts in moved["points"]]
    assert aim[moved["run_id"]]["objects"] == [f"notes/note-{c}"]
    assert aim[gone["run_id"]]["experiment"] == f"{d}/gone-{u}" and not aim[gone["run_id"]]["archived"]
