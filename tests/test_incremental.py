"""A round costs what is new, on every kind of store (file, sqlite, PostgreSQL, an MLflow
server): proven with the round's read counters (`RoundStats.read`), never with the clock."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from syncer.config import Config
from syncer.runner import open_driver

from conftest import STORE_KINDS, T0, client_for, log_points, read_aim, store_uri

HISTORY = 5_000  # a long history: reading it again would show in the counters


@pytest.fixture(params=STORE_KINDS)
def store(request, tmp_path):
    server = request.getfixturevalue("mlflow_server") if request.param == "server" else None
    pg = request.getfixturevalue("postgres") if request.param == "postgres" else None
    uri = store_uri(request.param, tmp_path, server, pg)
    client = client_for(uri)
    location = (tmp_path / "artifacts").as_uri() if not uri.startswith("http") else None
    exp = client.create_experiment(f"incremental-{request.param}-{tmp_path.name}", artifact_location=location)
    return request.param, uri, client, exp


def _syncer(uri, tmp_path, exp_name, **cfg):
    return open_driver(
        Config(tracking_uri=uri, aim_repo=tmp_path / "aim", experiments=(exp_name,), **cfg),
        strict_experiments=False,
        must_exist=True,
        role="daemon",
    )


def _finished_run(client, exp, name, n=20, start=T0):
    run = client.create_run(exp, run_name=name, start_time=start).info.run_id
    client.log_param(run, "lr", "0.001")
    client.set_tag(run, "team", "nlp")
    log_points(client, run, "loss", [(s, 1.0 / (s + 1), start + s) for s in range(n)])
    client.set_terminated(run, "FINISHED", end_time=start + 10_000)
    return run


def test_unchanged_store_reads_no_metadata_and_no_history(store, tmp_path):
    kind, uri, client, exp = store
    name = client.get_experiment(exp).name
    runs = [_finished_run(client, exp, f"r{i}") for i in range(3)]
    s = _syncer(uri, tmp_path, name)
    try:
        first = s.round()
        assert first.runs_written == 3 and first.read["histories"] == 3 and first.read["points"] == 60
        for full in (False, True):  # a quick round, then a full listing: nothing is read again
            again = s.round(full=full)
            assert again.read["full"] is full
            assert again.runs_written == 0 and again.points == 0, again.as_dict()
            assert again.read["runs_read"] == 0 and again.read["histories"] == 0 and again.read["points"] == 0
            if kind == "server" and not full:  # the experiments, then two searches: RUNNING, ended since
                assert again.read["requests"] == 3, again.as_dict()
        assert set(read_aim(tmp_path / "aim")) == set(runs)
    finally:
        s.close()


def test_a_new_runs_keys_are_read_together_and_exactly(store, tmp_path):
    """A run's first read fetches all its keys at once (one query on SQL stores, requests side by
    side on a server): every point lands once, and later points still come by the cursors."""
    kind, uri, client, exp = store
    name = client.get_experiment(exp).name
    run = client.create_run(exp, run_name="wide", start_time=T0).info.run_id
    keys = [f"k{i}" for i in range(8)]
    for j, key in enumerate(keys):
        log_points(client, run, key, [(s, float(s * j), T0 + s) for s in range(300)])
    one_key = None
    if kind in ("sqlite", "postgres"):  # the same first round for a run with one key
        other = client.create_experiment(f"one-key-{tmp_path.name}")
        log_points(client, client.create_run(other).info.run_id, "k0", [(0, 1.0, T0)])
        base = _syncer(uri, tmp_path / "base", client.get_experiment(other).name)
        try:
            one_key = base.round().read["requests"]
        finally:
            base.close()
    s = _syncer(uri, tmp_path, name)
    try:
        first = s.round()
        assert first.points == 8 * 300 and first.read["histories"] == 8
        if one_key is not None:  # one query for the eight histories, not one (or two) per key
            assert first.read["requests"] == one_key, (first.as_dict(), one_key)
        for key in keys[:2]:
            log_points(client, run, key, [(300, 1.0, T0 + 300)])
        st = s.round()
        assert st.points == 2 and st.read["points"] == 2, st.as_dict()
        got = read_aim(tmp_path / "aim")[run]["metrics"]
        for j, key in enumerate(keys):
            want = list(range(301 if j < 2 else 300))
            assert got[(key, ())]["steps"] == want
            assert got[(key, ())]["values"][:300] == [float(x * j) for x in range(300)]
    finally:
        s.close()


def test_one_new_point_on_a_long_history_reads_one_point(store, tmp_path):
    kind, uri, client, exp = store
    name = client.get_experiment(exp).name
    run = client.create_run(exp, run_name="long", start_time=T0).info.run_id
    log_points(client, run, "loss", [(s, float(s), T0 + s) for s in range(HISTORY)])
    s = _syncer(uri, tmp_path, name)
    try:
        assert s.round().points == HISTORY
        log_points(client, run, "loss", [(HISTORY, 1.0, T0 + HISTORY)])
        st = s.round()
        assert st.points == 1 and st.read["points"] == 1 and st.read["histories"] == 1, st.as_dict()
        assert st.read["runs_read"] == 0  # metadata unchanged: params and tags not read
        if kind != "file":  # no page of the history: only the rows at the cursor's step and after
            assert st.read["rows"] < 100, st.as_dict()
        steps = read_aim(tmp_path / "aim")[run]["metrics"][("loss", ())]["steps"]
        assert steps == list(range(HISTORY + 1))
    finally:
        s.close()


def test_backdated_point_arrives(store, tmp_path):
    """A writer whose clock is behind logs a new step with an earlier timestamp than the last
    point read: it arrives, with its own timestamp, counted once."""
    kind, uri, client, exp = store
    name = client.get_experiment(exp).name
    run = client.create_run(exp, run_name="skewed", start_time=T0).info.run_id
    log_points(client, run, "loss", [(s, float(s), T0 + 1000 + s) for s in range(10)])
    s = _syncer(uri, tmp_path, name)
    try:
        s.round()
        log_points(client, run, "loss", [(10, 10.0, T0 + 5)])  # step 10, timestamp before all others
        st = s.round()
        assert st.points == 1 and st.read["points"] == 1, st.as_dict()
        m = read_aim(tmp_path / "aim")[run]["metrics"][("loss", ())]
        assert m["steps"] == list(range(11)) and m["timestamps"][-1] == (T0 + 5) / 1000
        status = s.state.report()
        assert sum(r["points"] for r in status) == 11  # MLflow's points, each counted once
    finally:
        s.close()


def test_run_created_and_finished_between_two_rounds_arrives(store, tmp_path):
    """Found by the quick round: a run started now, and one imported with an old start time
    (a server's search can only filter by time: that one arrives by the full listing)."""
    kind, uri, client, exp = store
    name = client.get_experiment(exp).name
    _finished_run(client, exp, "old")
    s = _syncer(uri, tmp_path, name)
    try:
        s.round()
        quick = _finished_run(client, exp, "quick", start=int(time.time() * 1000))
        imported = _finished_run(client, exp, "imported", start=T0 + 50_000)
        st = s.round()
        assert not st.read["full"], st.as_dict()
        assert st.runs_written == (1 if kind == "server" else 2), st.as_dict()
        if kind == "server":
            s.listing.full_every_s = 0.0
            assert s.round().runs_written == 1
        aim = read_aim(tmp_path / "aim")
        for run in (quick, imported):
            assert aim[run]["active"] is False and len(aim[run]["metrics"][("loss", ())]["steps"]) == 20
    finally:
        s.close()


def test_a_run_ended_without_an_end_time_arrives_finished_in_the_next_quick_round(store, tmp_path):
    """`MlflowClient.update_run(status=...)` ends a run and leaves its end time empty: neither
    "RUNNING" nor "ended since" finds it, yet Aim must not show it running until a full listing."""
    kind, uri, client, exp = store
    name = client.get_experiment(exp).name
    run = client.create_run(exp, run_name="updated", start_time=T0).info.run_id
    log_points(client, run, "loss", [(s, float(s), T0 + s) for s in range(5)])
    s = _syncer(uri, tmp_path, name)
    try:
        s.round()
        assert read_aim(tmp_path / "aim")[run]["active"] is True
        client.update_run(run, status="KILLED")
        assert client.get_run(run).info.end_time is None
        st = s.round()
        assert not st.read["full"] and st.runs_written == 1, st.as_dict()
        assert st.read["runs_listed"] == 1 and st.read["histories"] == 0, st.as_dict()
        got = read_aim(tmp_path / "aim")[run]
        assert got["active"] is False and len(got["metrics"][("loss", ())]["steps"]) == 5
        again = s.round()  # and it is not asked for again
        assert not again.read["full"] and again.read["runs_listed"] == 0, again.as_dict()
    finally:
        s.close()


def test_deleted_restored_and_edited_runs_arrive_by_the_full_listing(store, tmp_path):
    kind, uri, client, exp = store
    name = client.get_experiment(exp).name
    runs = [_finished_run(client, exp, f"r{i}") for i in range(3)]
    s = _syncer(uri, tmp_path, name)
    try:
        s.round()
        client.delete_run(runs[0])
        client.set_tag(runs[1], "team", "vision")  # a finished run's tag edited
        client.log_param(runs[2], "warmup", "10")  # and a param added
        s.round()  # a quick round may or may not see these; the full listing must
        s.listing.full_every_s = 0.0
        st = s.round()
        assert st.read["full"] is True
        aim = read_aim(tmp_path / "aim")
        assert aim[runs[0]]["archived"] is True and aim[runs[1]]["params"]["tags"] == {"team": "vision"}
        assert "team=vision" in aim[runs[1]]["labels"]
        assert aim[runs[2]]["params"]["hparams"] == {"lr": 0.001, "warmup": 10}
        client.restore_run(runs[0])
        st = s.round()
        assert read_aim(tmp_path / "aim")[runs[0]]["archived"] is False
        assert st.read["histories"] == 0  # metadata only: no history read again
    finally:
        s.close()


def test_crashed_running_runs_cost_nothing_once_quiet(store, tmp_path):
    """MLflow leaves a crashed run RUNNING for good: once quiet, quick rounds skip it."""
    kind, uri, client, exp = store
    name = client.get_experiment(exp).name
    crashed = client.create_run(exp, run_name="crashed", start_time=T0).info.run_id
    log_points(client, crashed, "loss", [(0, 1.0, T0)])
    s = _syncer(uri, tmp_path, name)
    try:
        s.round()
        s.listing.dormant_after_s = 0.0
        st = s.round()
        assert st.read["runs_listed"] <= 1 and st.read["histories"] == 0
        st = s.round()
        assert st.read["runs_read"] == 0 and st.read["histories"] == 0 and st.runs_written == 0
        if kind != "server":  # the server's RUNNING search still names it (its filter leaves it out)
            assert st.read["runs_listed"] == 0, st.as_dict()
        if kind != "file":  # someone marks it failed: a quick round sees it (a file store: the full listing)
            client.set_terminated(crashed, "FAILED")
            st = s.round()
            assert not st.read["full"] and st.runs_written == 1, st.as_dict()
            assert read_aim(tmp_path / "aim")[crashed]["active"] is False
        log_points(client, crashed, "loss", [(1, 2.0, T0 + 1)])  # it logs again: seen by the full listing
        s.listing.full_every_s = 0.0
        assert s.round().points == 1
    finally:
        s.close()


def test_points_at_an_earlier_step_logged_later_arrive(tmp_path):
    """A training resumed from an earlier checkpoint logs steps below the latest again, later:
    the later points win in Aim. (Read where the store keeps MLflow's order: files, SQL.)"""
    for kind in ("file", "sqlite"):
        uri = store_uri(kind, tmp_path / kind)
        (tmp_path / kind).mkdir(exist_ok=True)
        client = client_for(uri)
        exp = client.create_experiment("resume", artifact_location=(tmp_path / kind / "a").as_uri())
        run = client.create_run(exp, run_name="resumed", start_time=T0).info.run_id
        log_points(client, run, "loss", [(s, 1.0, T0 + s) for s in range(10)])
        s = open_driver(
            Config(tracking_uri=uri, aim_repo=tmp_path / kind / "aim"),
            strict_experiments=False,
            must_exist=True,
            role="daemon",
        )
        try:
            s.round()
            # steps 5..10 again, later: 5..9 re-logged, 10 new (the key's latest point moves)
            log_points(client, run, "loss", [(st, 2.0, T0 + 100 + st) for st in range(5, 11)])
            assert s.round().read["points"] == 6
            m = read_aim(tmp_path / kind / "aim")[run]["metrics"][("loss", ())]
            assert m["steps"] == list(range(11)) and m["values"] == [1.0] * 5 + [2.0] * 6, kind
        finally:
            s.close()


@pytest.mark.slow
def test_sigterm_is_honoured_within_10_s_in_the_first_round_of_a_large_store(tmp_path):
    """The daemon's first round over a store of 120 Trainer-shaped runs (a full listing, then
    every run written) takes far longer than 10 s here; SIGTERM stops it at a safe point."""
    import signal
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.gen_store import generate_store

    from test_sync_daemon import Daemon

    info = generate_store(tmp_path / "mlruns", runs=120, steps=400)
    d = Daemon(info["tracking_uri"], tmp_path / "aim", interval=60).start()
    try:
        time.sleep(1.5)  # into the first round
        rc, took = d.stop(signal.SIGTERM, timeout=30)
        assert rc == 0 and took < 10, (rc, took, d.text())
        assert "round cut short" in d.text(), d.text()  # it was stopped in the middle, not after
    finally:
        d.kill()


def test_experiments_made_renamed_or_deleted_between_quick_rounds_arrive(store, tmp_path):
    """Experiments are read again only when the store says they moved (on a file store, its
    folders' stats); a new experiment's runs, and the runs of one renamed or deleted, arrive in
    a quick round, though their own start and end times are old."""
    kind, uri, client, exp = store
    run = _finished_run(client, exp, "r0")
    later = f"later-{kind}-{tmp_path.name}"
    s = open_driver(
        Config(tracking_uri=uri, aim_repo=tmp_path / "aim", experiments=(exp, later), full_scan_interval=1e9),
        strict_experiments=False,
        must_exist=True,
        role="daemon",
    )
    try:
        assert s.round().runs_written == 1
        if kind == "file":  # unchanged folders: MLflow's experiment reader is not asked again
            assert s.round().read["requests"] == 0
        location = (tmp_path / "artifacts-later").as_uri() if kind != "server" else None
        new_exp = client.create_experiment(later, artifact_location=location)
        new_run = _finished_run(client, new_exp, "r1")
        st = s.round()
        assert not st.read["full"] and st.runs_written == 1, st.as_dict()
        assert read_aim(tmp_path / "aim")[new_run]["experiment"] == later

        client.rename_experiment(exp, f"renamed-{kind}")
        client.set_experiment_tag(exp, "team", "nlp")
        assert {e.id: e.tags for e in s.source.experiments()}[exp].get("team") == "nlp"
        client.delete_experiment(new_exp)
        st = s.round()
        assert not st.read["full"] and st.runs_written == 2, st.as_dict()
        got = read_aim(tmp_path / "aim")
        assert got[run]["experiment"] == f"renamed-{kind}" and not got[run]["archived"]
        assert got[new_run]["archived"]  # its experiment was deleted
        again = s.round()
        assert again.runs_written == 0 and again.read["runs_read"] == 0, again.as_dict()
    finally:
        s.close()


def test_a_round_stopped_in_the_middle_of_a_key_resumes_where_it_stopped(store, tmp_path, monkeypatch):
    """Cursors committed before a key is read to its end (a stop, or every COMMIT_EVERY_POINTS)
    must say so: the next round reads the rest of the key, nothing lost, nothing doubled."""
    import syncer.pipeline
    from syncer.errors import Stopped

    kind, uri, client, exp = store
    name = client.get_experiment(exp).name
    n = 25_000  # three chunks of the source
    run = client.create_run(exp, run_name="big", start_time=T0).info.run_id
    log_points(client, run, "loss", [(s, float(s), T0 + s) for s in range(n)])
    client.set_terminated(run, "FINISHED", end_time=T0 + n)
    monkeypatch.setattr(syncer.pipeline, "COMMIT_EVERY_POINTS", 1)  # commit after every chunk
    s = _syncer(uri, tmp_path, name)
    commits = []
    save = s.state.save_cursors

    def save_then_stop(run_id, cursors, *names):  # a SIGTERM arriving right after the first commit
        save(run_id, cursors, *names)
        commits.append(cursors)
        s.stop.set()

    s.state.save_cursors = save_then_stop
    try:
        with pytest.raises(Stopped):
            s.round()
        assert len(commits) == 1 and 0 < commits[0][-1][1].points < n
    finally:
        s.close()
    s = _syncer(uri, tmp_path, name)
    try:
        st = s.round()
        assert st.points == n - commits[0][-1][1].points, st.as_dict()
        m = read_aim(tmp_path / "aim")[run]["metrics"][("loss", ())]
        assert m["steps"] == list(range(n)) and m["values"] == [float(x) for x in range(n)]
        assert sum(r["points"] for r in s.state.report()) == n
        assert s.round().points == 0
    finally:
        s.close()


def test_a_servers_new_runs_are_read_a_key_for_many_runs_at_a_time(mlflow_server, tmp_path, monkeypatch):
    """Over HTTP the requests, not the points, are the cost: runs read for the first time get
    each key's histories for many runs in one request (MLflow's get-history-bulk), split when the
    server cuts a batch short; every point arrives exactly (NaN, +-inf, two points at a step)."""
    import math

    import syncer.sources.http as http
    import syncer.sources.http_history as http_history

    uri = mlflow_server.uri
    client = client_for(uri)
    name = f"bulk-{tmp_path.name}"
    exp = client.create_experiment(name)
    logged = {}
    for r in range(6):
        run = client.create_run(exp, run_name=f"r{r}", start_time=T0).info.run_id
        pts = {k: [(s, float(r * 100 + s), T0 + 10 * s + j) for s in range(30)] for j, k in enumerate(("a", "b"))}
        if r == 0:
            pts["a"][3] = (3, math.nan, T0 + 30)
            pts["a"][4] = (4, math.inf, T0 + 40)
            pts["b"].append((29, -1.0, T0 + 999))  # a second point at step 29, later: it wins in Aim
        for k, p in pts.items():
            log_points(client, run, k, p)
        client.set_terminated(run, "FINISHED", end_time=T0 + 1000)
        logged[run] = pts
    monkeypatch.setattr(http_history, "BULK_POINTS", 100)  # 6 runs x 30 points: cut short, then halves of 90

    def first_round(repo: Path, together: bool):
        monkeypatch.setattr(http.HttpSource, "prefetch_runs", http_history.BULK_RUNS if together else 1)
        s = _syncer(uri, repo, name)
        try:
            return s.round()
        finally:
            s.close()

    one_by_one = first_round(tmp_path / "one", together=False)
    together = first_round(tmp_path, together=True)
    assert (
        together.read["points"] == one_by_one.read["points"] == sum(len(p) for v in logged.values() for p in v.values())
    )
    # one by one: a request per run and key (12); together: per key one cut short, then two halves (6)
    assert together.read["requests"] == one_by_one.read["requests"] - 12 + 6, (together.read, one_by_one.read)
    aim, reference = read_aim(tmp_path / "aim"), read_aim(tmp_path / "one" / "aim")
    for run, pts in logged.items():
        for k, p in pts.items():
            got, ref = aim[run]["metrics"][(k, ())], reference[run]["metrics"][(k, ())]
            want = {s: (v, ts / 1000) for s, v, ts in sorted(p, key=lambda x: x[2])}  # the later point of a step wins
            assert got["steps"] == ref["steps"] == sorted(want), (run, k)
            assert got["timestamps"] == ref["timestamps"] == [want[s][1] for s in got["steps"]], (run, k)
            for s, v, v_ref in zip(got["steps"], got["values"], ref["values"]):
                assert (math.isnan(v) and math.isnan(v_ref)) or v == v_ref, (run, k, s)  # as get-history says
                assert math.isnan(v) is math.isnan(want[s][0]) and (
                    math.isinf(want[s][0]) or math.isnan(v) or v == want[s][0]
                )


@pytest.mark.slow
def test_a_backfill_worker_asks_a_server_for_models_only_for_runs_that_have_some(mlflow_server, tmp_path):
    """Backfill workers are other processes, with sources of their own: what the parent's listing
    said of a run's logged models travels with the run, so a worker asks the server for them only
    where there are some (it used to ask for every run: two requests each, a search and a
    get-run, a quarter of the server's time in a 1,000-run backfill)."""
    import pickle

    import mlflow
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from syncer.sources import ListingAsk, ReadStats, StoreLocation, open_source

    uri = mlflow_server.uri
    client = client_for(uri)
    exp = client.create_experiment(f"models-travel-{tmp_path.name}")
    plain = client.create_run(exp, run_name="plain").info.run_id
    mlflow.set_tracking_uri(uri)
    x = np.arange(20, dtype=float).reshape(10, 2)
    with mlflow.start_run(experiment_id=exp) as trained:
        model = mlflow.sklearn.log_model(
            LogisticRegression().fit(x, x[:, 0] > 9), name="clf", step=1, pip_requirements=["scikit-learn"]
        )
    parent = open_source(StoreLocation.parse(uri), ReadStats())
    experiments = [e for e in parent.experiments() if e.id == exp]
    listed = {r.run_id: r for r in parent.changes(experiments, ListingAsk(full=True)).records}
    worker = open_source(StoreLocation.parse(uri), ReadStats())  # as a spawned worker has it: nothing listed
    for run_id, want in ((plain, []), (trained.info.run_id, [model.model_id])):
        record = pickle.loads(pickle.dumps(listed[run_id]))  # as it reaches a worker
        before = worker.reads.requests
        assert [m.model_id for m in worker.logged_models(record)] == want
        assert worker.reads.requests - before == (1 if want else 0), run_id
