"""Points logged below the last step already read (a run resumed from a checkpoint logs its steps
again; a client replays a buffer with its own, older timestamps) arrive on every kind of store,
at the cost the read counters (`RoundStats.read`) show: the late key only, the whole history of
that key at most once, nothing in an idle round. At a step Aim has, the later timestamp wins.

Over an MLflow server nothing the listing returns moves for such a point (its search results
carry each key's greatest (step, timestamp, value) and no count): there it arrives when the key's
latest point moves without going beyond the last step read (the resumed run logs its old last
step again), or, for a run resumed after it ended, when it ends."""

from __future__ import annotations

import json

import pytest
from syncer.config import Config
from syncer.runner import open_driver
from syncer.sources.cursors import OrderCursor

from conftest import STORE_KINDS, T0, client_for, log_points, read_aim, store_uri

H = 300  # loss at steps 10, 20, ..., 3000: reading it all again would show in the counters
LAST_TS = T0 + 1000 * H
LATE = {  # (step, value, timestamp): a new step below the last, and a step Aim has
    "newer": [(15, 99.0, LAST_TS + 5000), (20, 77.0, LAST_TS + 5000)],  # logged again, later clock
    "older": [(15, 99.0, T0 + 1500), (20, 77.0, T0 + 1500)],  # replayed with its own, older clock
}


@pytest.fixture(params=STORE_KINDS)
def store(request, tmp_path):
    server = request.getfixturevalue("mlflow_server") if request.param == "server" else None
    pg = request.getfixturevalue("postgres") if request.param == "postgres" else None
    uri = store_uri(request.param, tmp_path, server, pg)
    client = client_for(uri)
    location = (tmp_path / "artifacts").as_uri() if not uri.startswith("http") else None
    exp = client.create_experiment(f"late-{request.param}-{tmp_path.name}", artifact_location=location)
    return request.param, uri, client, exp


def _syncer(uri, tmp_path, exp_name):
    cfg = Config(tracking_uri=uri, aim_repo=tmp_path / "aim", experiments=(exp_name,))
    return open_driver(cfg, strict_experiments=False, must_exist=True, role="daemon")


def _run(client, exp, *, finished: bool) -> tuple[str, dict[str, list[tuple[int, float, int]]]]:
    run = client.create_run(exp, run_name="resumed", start_time=T0).info.run_id
    logged = {
        "loss": [(10 * i, float(i), T0 + 1000 * i) for i in range(1, H + 1)],
        "acc": [(10 * i, 0.5 + i, T0 + 1000 * i) for i in range(1, 4)],
    }
    for key, points in logged.items():
        log_points(client, run, key, points)
    if finished:
        client.set_terminated(run, "FINISHED", end_time=LAST_TS + 1000)
    return run, logged


def _log(client, run, logged, key, points):
    log_points(client, run, key, points)
    logged[key] = logged[key] + points


def _assert_exact(aim_path, run, logged, *, kind: str) -> None:
    """Aim holds one point per MLflow step: the one with the later timestamp (a file store reads
    only the lines after its offset, so there a back-dated point read alone replaces its step)."""
    got = read_aim(aim_path)[run]["metrics"]
    for key, points in logged.items():
        want: dict[int, tuple[float, int]] = {}
        for i, (step, value, ts) in enumerate(points):
            late = i >= H and kind == "file"
            if step not in want or ts >= want[step][1] or late:
                want[step] = (value, ts)
        m = got[(key, ())]
        steps = sorted(want)
        assert m["steps"] == steps, key
        assert m["values"] == [want[s][0] for s in steps], key
        assert m["timestamps"] == [want[s][1] / 1000 for s in steps], key


def _touched(kind, uri, exp, run) -> list[str]:
    """What the daemon's file events name after a write to a run of a file store (a finished
    run's folder is not looked at by a quick round otherwise)."""
    if kind != "file":
        return []
    return [f"{uri}/{exp}/{run}/meta.yaml", f"{uri}/{exp}/{run}/metrics/loss"]


def _idle(s) -> None:
    st = s.round()
    assert st.read["histories"] == 0 and st.read["points"] == 0 and st.points == 0, st.as_dict()


@pytest.mark.parametrize("late", ["newer", "older"])
def test_a_point_logged_below_the_last_step_of_a_running_run_arrives(store, tmp_path, late):
    """Steps 10 ... 3000 synced, then step 15 (and step 20 again) logged: the next round has them."""
    kind, uri, client, exp = store
    run, logged = _run(client, exp, finished=False)
    s = _syncer(uri, tmp_path, client.get_experiment(exp).name)
    try:
        first = s.round()
        assert first.read["points"] == H + 3, first.as_dict()
        _idle(s)
        _log(client, run, logged, "loss", LATE[late])
        st = s.round()
        if kind == "server":  # nothing the server lists moved: read when the key's latest point moves
            assert st.read["histories"] == 0, st.as_dict()
            _log(client, run, logged, "loss", [(10 * H, float(H), LAST_TS + 9000)])  # its old last step again
            st = s.round()
        assert st.read["histories"] == 1, st.as_dict()  # that key only
        if late == "newer" or kind == "file":  # the new points only, not a page of the history
            assert st.read["points"] == len(logged["loss"]) - H, st.as_dict()
            assert st.read["rows"] < 100, st.as_dict()
        else:  # before the cursor in every order: the key once more, whole
            assert st.read["points"] == len(logged["loss"]), st.as_dict()
        _idle(s)
        _idle(s)
        _assert_exact(tmp_path / "aim", run, logged, kind=kind)
        assert sum(r["points"] for r in s.state.report()) == sum(map(len, logged.values()))  # each counted once
    finally:
        s.close()


@pytest.mark.parametrize("late", ["newer", "older"])
def test_a_finished_run_resumed_gets_its_steps_logged_again(store, tmp_path, late):
    """A FINISHED run reopened (what `mlflow.start_run(run_id=...)` does), late points logged,
    ended again: by the end of the run at the latest on a server, by the next round elsewhere."""
    kind, uri, client, exp = store
    run, logged = _run(client, exp, finished=True)
    s = _syncer(uri, tmp_path, client.get_experiment(exp).name)
    try:
        s.round()
        _idle(s)
        touched = _touched(kind, uri, exp, run)
        client.update_run(run, status="RUNNING")
        st = s.round(paths=touched)
        assert st.runs_written == 1 and st.read["points"] == 0, st.as_dict()
        if kind == "server":  # each key looked at from its cursor's place in MLflow's order: nothing there
            assert st.read["histories"] == 2 and st.read["rows"] == 0, st.as_dict()
        else:
            assert st.read["histories"] == 0, st.as_dict()
        _log(client, run, logged, "loss", LATE[late])
        st = s.round(paths=touched)
        if kind == "server":
            assert st.read["histories"] == 0, st.as_dict()
            client.set_terminated(run, "FINISHED", end_time=LAST_TS + 20_000)
            st = s.round(paths=touched)
            assert st.read["histories"] == 2, st.as_dict()  # the keys read while the run was resumed
        else:
            assert st.read["histories"] == 1, st.as_dict()
        whole = late == "older" and kind != "file"
        assert st.read["points"] == (H + 2 if whole else 2), st.as_dict()
        if not whole:
            assert st.read["rows"] < 100, st.as_dict()
        if kind != "server":
            client.set_terminated(run, "FINISHED", end_time=LAST_TS + 20_000)
            st = s.round(paths=touched)
            assert st.runs_written == 1 and st.read["histories"] == 0, st.as_dict()
        _idle(s)
        _assert_exact(tmp_path / "aim", run, logged, kind=kind)
    finally:
        s.close()


def test_cursors_stored_before_counts_existed_keep_working_and_repair_what_they_missed(tmp_path):
    """A state written before cursors kept the listing's point count: an unchanged key is not read
    (its count equals the points its cursor read), a key that missed a late point is read once."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = client_for(uri)
    exp = client.create_experiment("old-state")
    run, logged = _run(client, exp, finished=False)
    s = _syncer(uri, tmp_path, "old-state")
    try:
        s.round()

        def strip() -> None:  # the cursors as the previous version stored them
            rows = s.state.db.execute("SELECT key, cursor FROM metrics WHERE run_id=?", (run,)).fetchall()
            for key, text in rows:
                old = {k: v for k, v in json.loads(text).items() if k not in ("seen", "resumed")}
                s.state.db.execute("UPDATE metrics SET cursor=? WHERE run_id=? AND key=?", (json.dumps(old), run, key))

        strip()
        _idle(s)
        strip()
        _log(client, run, logged, "loss", LATE["older"])  # what the previous version never read
        st = s.round()
        assert st.read["histories"] == 1 and st.read["points"] == H + 2, st.as_dict()
        _idle(s)
        _assert_exact(tmp_path / "aim", run, logged, kind="sqlite")
    finally:
        s.close()


def test_a_read_from_the_start_cut_short_goes_on_in_the_next_round(tmp_path):
    """The key read again from its start commits its cursor as it goes (a long history, a crash
    halfway): the next round reads on from there, even though no mark moves any more."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = client_for(uri)
    exp = client.create_experiment("cut-short")
    run, logged = _run(client, exp, finished=False)
    s = _syncer(uri, tmp_path, "cut-short")
    try:
        s.round()
        _log(client, run, logged, "loss", LATE["older"][:1])  # step 15 at T0 + 1500: second in MLflow's order
        # what a round that stopped after re-sending the first point of the key's history left
        mark = (LAST_TS, 10 * H, float(H))
        halfway = OrderCursor(ts=T0 + 1000, step=10, value=1.0, max_step=10, points=1, mark=mark, seen=H + 1)
        s.state.save_cursors(run, [("loss", halfway)])
        st = s.round()
        assert st.read["histories"] == 1 and st.read["points"] == H, st.as_dict()  # the rest, once
        _idle(s)
        _assert_exact(tmp_path / "aim", run, logged, kind="sqlite")
    finally:
        s.close()
