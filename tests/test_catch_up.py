"""A daemon that meets a store it never synced catches up in slices (`RoundDriver.slice_s`): each
round writes what cannot wait first (a RUNNING run's new points), then runs never synced for at
most a slice; the rest waits in the backlog for the next rounds, until everything is exact. A stop
lands at a safe point in the middle of it."""

from __future__ import annotations

import pytest
from syncer.config import Config
from syncer.errors import Stopped
from syncer.runner import open_driver
from syncer.sink import aim_run_hash

from conftest import T0, client_for, log_points, read_aim

FINISHED, POINTS = 30, 300


def _store(tmp_path):
    uri = str(tmp_path / "mlruns")
    client = client_for(uri)
    exp = client.create_experiment("catch-up")
    logged: dict[str, list] = {}
    for r in range(FINISHED):
        run = client.create_run(exp, run_name=f"old-{r}", start_time=T0 + r).info.run_id
        pts = [(s, r + s / POINTS, T0 + s) for s in range(POINTS)]
        log_points(client, run, "loss", pts)
        client.set_terminated(run, "FINISHED", end_time=T0 + POINTS)
        logged[run] = pts
    live = client.create_run(exp, run_name="live", start_time=T0).info.run_id
    log_points(client, live, "loss", [(0, 0.5, T0)])
    logged[live] = [(0, 0.5, T0)]
    return uri, client, live, logged


def _exact(repo, logged) -> None:
    aim = read_aim(repo)
    assert set(aim) == set(logged)
    for run_id, pts in logged.items():
        m = aim[run_id]["metrics"][("loss", ())]
        assert (m["steps"], m["values"]) == ([s for s, _, _ in pts], [v for _, v, _ in pts]), run_id


@pytest.mark.slow
def test_a_daemon_catches_up_in_slices_and_keeps_a_running_run_current(tmp_path):
    uri, client, live, logged = _store(tmp_path)
    repo = tmp_path / "aim"
    driver = open_driver(
        Config(tracking_uri=uri, aim_repo=repo), strict_experiments=False, must_exist=True, role="daemon", workers=1
    )
    driver.slice_s = 0.0  # every round: what cannot wait, then one batch of the backlog
    try:
        first = driver.round()
        assert first.backlog > 0 and first.runs_written < FINISHED + 1
        assert aim_run_hash(live) in driver.pool  # the RUNNING run was written first, and is kept open
        rounds = 1
        step = 1
        while driver.backlog:
            # the run keeps logging meanwhile: each round has its new points, whatever is left
            log_points(client, live, "loss", [(step, step / 10, T0 + step)])
            logged[live].append((step, step / 10, T0 + step))
            before = len(driver.backlog)
            st = driver.round()
            assert st.backlog < before  # progress every round
            assert driver.state.cursors(live)["loss"].points == step + 1  # the live run is current
            step += 1
            rounds += 1
            assert rounds < 60
        assert rounds > 2
        _exact(repo, logged)
        again = driver.round(full=True)
        assert again.points == 0 and again.backlog == 0
    finally:
        driver.close()


@pytest.mark.slow
def test_a_stop_in_the_middle_of_catching_up_lands_at_a_safe_point(tmp_path):
    uri, _client, _live, logged = _store(tmp_path)
    repo = tmp_path / "aim"
    cfg = Config(tracking_uri=uri, aim_repo=repo)
    driver = open_driver(cfg, strict_experiments=False, must_exist=True, role="daemon", workers=1)
    written: list[str] = []
    sync = driver.pipeline.sync

    def stop_after_a_few(work, names, stats):  # SIGTERM's handler sets the same event
        sync(work, names, stats)
        written.append(work.run.run_id)
        if len(written) == 7:
            driver.stop.set()

    driver.pipeline.sync = stop_after_a_few  # type: ignore[method-assign]
    try:
        with pytest.raises(Stopped):
            driver.round()
    finally:
        driver.close()
    assert len(written) == 7
    cursors = {r for r in logged if read_cursor_points(cfg, r)}
    assert cursors == set(written)  # what was written before the stop is committed, nothing more

    driver = open_driver(cfg, strict_experiments=False, must_exist=True, role="daemon", workers=1)
    try:
        while True:
            st = driver.round()
            if not st.backlog:
                break
        _exact(repo, logged)
    finally:
        driver.close()


def read_cursor_points(cfg: Config, run_id: str) -> int:
    from syncer.state import State

    st = State(cfg.state_file, source="")
    try:
        rows = st.db.execute("SELECT SUM(points) FROM metrics WHERE run_id=?", (run_id,)).fetchone()
        return int(rows[0] or 0)
    finally:
        st.close()
