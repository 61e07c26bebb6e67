"""MLflow 2.x servers (each in its own venv, runs logged by its own client, tests/legacy_mlflow.py):
`syncer backfill` and `syncer sync` exit 0 with exactly what was logged, using only what each
server offers (no logged models before 3.0, get-history-bulk of at most 20 runs up to 2.10 and
none before 2.2, get-history-bulk-interval from 2.11, no NOT IN before 2.3); a round costs what
is new, counted in requests as on MLflow 3."""

from __future__ import annotations

import math
import signal
from pathlib import Path

import pytest
from syncer.config import Config
from syncer.runner import open_driver

from conftest import read_aim, run_syncer
from legacy_mlflow import LEGACY_VERSIONS, OLDEST_2X
from test_sync_daemon import Daemon, wait_for

pytestmark = pytest.mark.slow

VERSIONS = (OLDEST_2X, *LEGACY_VERSIONS)
# more runs than MLflow <= 2.10 takes in one get-history-bulk request (20), in each of 2 workers, and
# more than fit in one request line to gunicorn (MLflow 2.x's server: 4,094 bytes, ~94 run ids)
MANY = 100
_MAX = 1.7976931348623157e308  # MLflow's SQL stores keep +-inf as +-max float


def _cap(version: str) -> int:
    """Run ids in one get-history-bulk request (0: the server has none)."""
    v = tuple(int(x) for x in version.split(".")[:2])
    return 0 if v < (2, 2) else 20 if v < (2, 11) else 100


@pytest.fixture(scope="module", params=VERSIONS, ids=lambda v: f"mlflow-{v}")
def legacy(request, legacy_mlflow_factory, tmp_path_factory):
    """(that MLflow, its `mlflow server` on sqlite), shared by this module's tests."""
    mlflow = legacy_mlflow_factory(request.param)
    server = mlflow.server(tmp_path_factory.mktemp(f"mlflow2-servers-{request.param}"))
    yield mlflow, server
    server.stop()


def _series(points: list[list]) -> tuple:
    """What Aim holds of one MLflow key: one point per step, the later timestamp winning; values
    as the server's SQL store returns them (NaN compared as text)."""
    at: dict[int, tuple[float, int]] = {}
    for step, value, ts in points:
        if step not in at or ts >= at[step][1]:
            at[step] = (math.copysign(_MAX, value) if math.isinf(value) else value, ts)
    steps = sorted(at)
    return (
        tuple(steps),
        tuple("nan" if math.isnan(at[s][0]) else at[s][0] for s in steps),
        tuple(at[s][1] / 1000 for s in steps),
    )


def _aim_series(run: dict) -> list[tuple]:
    return sorted(
        (
            (tuple(m["steps"]), tuple("nan" if math.isnan(v) else v for v in m["values"]), tuple(m["timestamps"]))
            for m in run["metrics"].values()
        ),
        key=repr,
    )


def assert_exact(aim: dict, logged: dict, many: dict) -> None:
    """Every run of the writer's populate and runs N, with every point, status and stage."""
    want_ids = {r["run_id"] for r in logged["runs"].values()} | set(many["run_ids"])
    assert want_ids <= set(aim), want_ids - set(aim)
    for label, want in logged["runs"].items():
        run = aim[want["run_id"]]
        assert run["name"] == want["name"], label
        assert run["params"]["mlflow"]["status"] == want["status"], label
        assert run["archived"] is (want["lifecycle_stage"] == "deleted"), label
        assert run["active"] is (want["status"] == "RUNNING"), label
        assert run["experiment"] == logged["experiment"], label
        assert _aim_series(run) == sorted((_series(p) for p in want["metrics"].values()), key=repr), label
    loss = [_series(many["metrics"]["loss"])]
    for run_id in many["run_ids"]:
        assert _aim_series(aim[run_id]) == loss, run_id
        assert aim[run_id]["params"]["mlflow"]["status"] == "FINISHED"


def _problems(text: str) -> list[str]:
    return [line for line in text.splitlines() if " WARNING " in line or " ERROR " in line or "Traceback" in line]


def _driver(uri: str, repo: Path, *experiments: str):
    cfg = Config(tracking_uri=uri, aim_repo=repo, experiments=experiments, artifacts=False, full_scan_interval=3600)
    return open_driver(cfg, strict_experiments=True, must_exist=True, role="daemon")


def _round_costs(version: str, uri: str, repo: Path, many: dict, logged: dict, write_point) -> None:
    """Counted in requests: a first read of many runs takes ceil(runs / what the server accepts)
    get-history-bulk requests (one get-history per run where it has none), nothing for logged
    models; an idle quick round 3 (the experiments, two searches), one new point one more: as on
    MLflow 3 (tests/test_incremental.py)."""
    s = _driver(uri, repo / "many", many["experiment_id"])
    try:
        first = s.round()
        cap = _cap(version)
        histories = {0: MANY, 20: 5, 100: 2}[cap]  # 100: ids up to what a request line holds (94)
        assert not first.errors and first.points == 3 * MANY, first.as_dict()
        assert first.read["requests"] == 1 + 1 + histories, first.as_dict()  # experiments, one search
        idle = s.round()
        assert not idle.read["full"] and idle.read["requests"] == 3 and idle.read["histories"] == 0, idle.as_dict()
    finally:
        s.close()
    s = _driver(uri, repo / "one", logged["experiment_id"])
    try:
        assert not s.round().errors
        write_point()
        one = s.round()
        assert not one.errors and one.points == 1, one.as_dict()
        assert one.read["requests"] == 3 + 1 and one.read["histories"] == 1, one.as_dict()
        assert s.round().read["requests"] == 3
    finally:
        s.close()


def test_backfill_and_sync_exit_0_with_exactly_what_was_logged(legacy, tmp_path):
    """Before: every run ended in 'cannot list logged models' (exit 1, the daemon never healthy),
    and 2.9.2 refused get-history-bulk of more than 20 runs (exit 2)."""
    mlflow, server = legacy
    logged = mlflow.write(server.uri, tmp_path / "w")
    many = mlflow.write(server.uri, tmp_path / "w", "runs", str(MANY))
    running = logged["runs"]["running"]

    def log(*points: tuple[int, float]) -> None:
        ts = running["metrics"]["loss"][-1][2] + 1000
        new = [[s, v, ts + i] for i, (s, v) in enumerate(points)]
        mlflow.write(
            server.uri, tmp_path / "w", "points", running["run_id"], "loss", *(f"{s}:{v}:{t}" for s, v, t in new)
        )
        running["metrics"]["loss"] += new

    _round_costs(mlflow.version, server.uri, tmp_path / "counted", many, logged, lambda: log((2, 0.8)))

    repo = tmp_path / "aim"
    picked = ("--experiment", logged["experiment_id"], "--experiment", many["experiment_id"])
    p = run_syncer("backfill", "--mlflow-tracking-uri", server.uri, "--aim-repo", str(repo), *picked, "--workers", "2")
    assert p.returncode == 0, p.stdout + p.stderr
    assert not _problems(p.stderr), p.stderr
    assert "run(s) with errors" not in p.stdout + p.stderr
    assert_exact(read_aim(repo), logged, many)

    # the daemon: more points for the RUNNING run, which then ends without an end time
    health = tmp_path / "health"
    d = Daemon(server.uri, repo, *picked, "--health-file", str(health), interval=1).start()
    try:
        log((3, 0.7), (4, 0.6))
        ended = mlflow.write(server.uri, tmp_path / "w", "end", running["run_id"], "FINISHED")
        running.update(status="FINISHED", end=ended["end"])

        def caught_up() -> dict | None:
            aim = read_aim(repo)
            run = aim[running["run_id"]]
            return aim if run["active"] is False and len(next(iter(run["metrics"].values()))["steps"]) == 5 else None

        aim = wait_for(caught_up, 120)
        assert_exact(aim, logged, many)
        health.unlink()
        wait_for(health.exists, 60)  # a round without errors since
        rc, took = d.stop(signal.SIGTERM)
        assert rc == 0 and took < 10, (rc, took, d.text())
        assert not _problems(d.text()), d.text()
    finally:
        d.kill()
