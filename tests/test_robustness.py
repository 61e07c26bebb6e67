"""Issue 27, nothing lost, stuck or leaked (round two), one test each on real stores and a real
filesystem: one bad run, a repo inside the store, a bad URI for `sync`, credentials in
malformed URIs, a key whose Aim name would change, a failed round forgotten by the quick
rounds after it. The full disk has its own module (tests/test_full_disk.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from syncer.config import Config
from syncer.runner import open_driver

from conftest import T0, client_for, log_points, read_aim, run_syncer


def _backfill(uri: str, repo: Path, *extra: str, env: dict | None = None):
    return run_syncer("backfill", "--mlflow-tracking-uri", uri, "--aim-repo", str(repo), *extra, env=env)


def _one_line_error(p, *needles: str) -> str:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in p.stderr and len(lines) == 1 and lines[0].startswith("Error: "), p.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _run(client, exp: str, name: str, points: int = 3) -> str:
    run = client.create_run(exp, run_name=name, start_time=T0).info.run_id
    log_points(client, run, "loss", [(s, float(s), T0 + s) for s in range(points)])
    client.set_terminated(run, "FINISHED", end_time=T0 + 100)
    return run


# 1 -------------------------------------------------------------------------------------------
BAD = os.fsdecode(b"caf\xe9")  # latin-1 bytes: not UTF-8


def _bad_store(root: Path) -> dict[str, str]:
    """Runs of a file store: one fine, one with a metric file and one with an artifact whose names
    are not UTF-8, one moved with `mv` into another experiment's folder."""
    c = client_for(str(root))
    exp, other = c.create_experiment("a"), c.create_experiment("b")
    runs = {name: _run(c, exp, name) for name in ("fine", "bad-metric", "bad-artifact", "moved")}
    (root / exp / runs["bad-metric"] / "metrics" / BAD).write_text(f"{T0} 1.0 0\n")
    art = root / exp / runs["bad-artifact"] / "artifacts"
    art.mkdir(exist_ok=True)
    (art / f"{BAD}.txt").write_text("notes\n")
    (art / "good.txt").write_text("notes\n")
    shutil.move(root / exp / runs["moved"], root / other / runs["moved"])
    return {**runs, "exp": exp, "other": other}


def test_one_bad_run_is_named_skipped_and_retried_when_it_changes(tmp_path):
    """A metric or artifact file name that is not UTF-8, a run folder moved between experiments:
    each run named in a warning and skipped, the others converted, exit 1 while they are there
    (no traceback); a daemon's rounds go on past them; fixed, they arrive."""
    store, repo = tmp_path / "mlruns", tmp_path / "aim"
    runs = _bad_store(store)
    for _ in range(2):  # said again while they are there
        p = _backfill(str(store), repo)
        assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
        assert "caf\\xe9" in p.stderr and "rename them" in p.stderr, p.stderr
        assert runs["moved"] in p.stderr and "move it back" in p.stderr, p.stderr
        assert set(read_aim(repo)) == {runs["fine"]}

    # a daemon: rounds go on past them, a run logged later arrives
    d = open_driver(
        Config(tracking_uri=str(store), aim_repo=repo), strict_experiments=False, must_exist=False, role="daemon"
    )
    try:
        d.round()
        late = _run(client_for(str(store)), runs["exp"], "late")
        st = d.round(paths=[str(store / runs["exp"] / late / "meta.yaml")])
        assert st.runs_written == 1 and late in read_aim(repo), st.as_dict()
        # fixed by hand: each arrives
        metrics = store / runs["exp"] / runs["bad-metric"] / "metrics"
        (metrics / BAD).rename(metrics / "cafe")
        art = store / runs["exp"] / runs["bad-artifact"] / "artifacts"
        (art / f"{BAD}.txt").rename(art / "cafe.txt")
        shutil.move(store / runs["other"] / runs["moved"], store / runs["exp"] / runs["moved"])
        st = d.round(full=True)
        assert not st.errors and st.runs_written == 3, st.as_dict()
    finally:
        d.close()
    aim = read_aim(repo)
    assert set(aim) == {runs[n] for n in ("fine", "bad-metric", "bad-artifact", "moved")} | {late}
    assert aim[runs["bad-metric"]]["metrics"][("cafe", ())]["values"] == [1.0]
    assert {a["path"] for a in aim[runs["bad-artifact"]]["params"]["artifacts"]} == {"cafe.txt", "good.txt"}
    assert aim[runs["moved"]]["metrics"][("loss", ())]["steps"] == [0, 1, 2]
    p = _backfill(str(store), repo)
    assert p.returncode == 0, p.stderr


def test_a_tag_file_mlflow_cannot_read_breaks_its_run_only(tmp_path):
    store, repo = tmp_path / "mlruns", tmp_path / "aim"
    c = client_for(str(store))
    exp = c.create_experiment("tags")
    fine, bad = _run(c, exp, "fine"), _run(c, exp, "bad")
    (store / exp / bad / "tags" / "note").write_bytes(b"caf\xe9\n")  # not UTF-8 content
    p = _backfill(str(store), repo)
    assert p.returncode == 1 and "Traceback" not in p.stderr and bad in p.stderr, p.stderr
    assert fine in read_aim(repo)
    (store / exp / bad / "tags" / "note").write_text("cafe")
    assert _backfill(str(store), repo).returncode == 0
    assert read_aim(repo)[bad]["params"]["tags"] == {"note": "cafe"}


# 3 and 9 -------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["backfill", "sync"])
def test_a_repo_inside_the_store_or_a_store_inside_the_repo_is_refused(command, tmp_path):
    store = tmp_path / "mlruns"
    c = client_for(str(store))
    _run(c, c.create_experiment("e"), "r")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    aim = tmp_path / "aim"
    aim.mkdir()
    cases = [
        (str(store), ["--aim-repo", str(store)], "--aim-repo"),
        (str(store), ["--aim-repo", str(store / "0" / "aim")], "inside the MLflow file store"),
        (str(store), ["--aim-repo", str(aim), "--state", str(store / "state.sqlite")], "--state"),
        (str(aim / ".aim" / "mlruns"), ["--aim-repo", str(aim)], "inside the Aim repo"),
        (f"sqlite:///{aim / '.aim' / 'mlflow.db'}", ["--aim-repo", str(aim)], "inside the Aim repo"),
    ]
    if command == "sync":
        cases.append((str(store), ["--aim-repo", str(aim), "--health-file", str(store / "h")], "--health-file"))
    for uri, args, needle in cases:
        p = run_syncer(command, "--mlflow-tracking-uri", uri, *args, timeout=120)
        _one_line_error(p, needle)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p != aim) == before  # nothing written
    assert list(aim.iterdir()) == []


@pytest.mark.parametrize("command", ["backfill", "sync"])
def test_a_bad_uri_creates_nothing(command, tmp_path):
    import sqlite3

    other = tmp_path / "other.db"
    with sqlite3.connect(other) as con:
        con.execute("CREATE TABLE t (x)")
    for uri, needle in (("sqlte:///x.db", "unsupported"), (f"sqlite:///{other}", "not an MLflow database")):
        p = run_syncer(command, "--mlflow-tracking-uri", uri, "--aim-repo", str(tmp_path / "aim"), timeout=120)
        _one_line_error(p, needle)
        assert not (tmp_path / "aim").exists()


# 5 -------------------------------------------------------------------------------------------
def test_credentials_in_malformed_uris_are_never_printed(tmp_path):
    for uri, commands in (
        ("postgresql:/user:PW5SECRET@127.0.0.1:1/db", ("backfill", "sync")),
        ("postgresql+psycopg2:user:PW5SECRET@127.0.0.1:1/db", ("backfill", "sync")),
        ("postgresql://user@127.0.0.1:1/db?pw=PW5SECRET", ("backfill",)),  # sync waits for it
    ):
        for command in commands:
            p = run_syncer(command, "--mlflow-tracking-uri", uri, "--aim-repo", str(tmp_path / "aim"), timeout=120)
            assert p.returncode == 2 and "PW5SECRET" not in p.stderr + p.stdout, p.stderr


# 4 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_a_key_keeps_its_aim_series_when_the_run_gains_keys_that_would_map_it_elsewhere(kind, tmp_path):
    """`eval_de_accuracy` synced while the run has no `eval_de_loss` is `de_accuracy {subset: eval}`;
    once `eval_de_loss` appears the rules would make it `accuracy {subset: eval, dataset: de, lang:
    de}`: its later points must still join its first ones (in the daemon, after a restart, and in
    a backfill on the same repo), never land in a second series."""
    uri = str(tmp_path / "mlruns") if kind == "file" else f"sqlite:///{tmp_path / 'mlflow.db'}"
    repo = tmp_path / "aim"
    c = client_for(uri)
    run = c.create_run(c.create_experiment("hf"), run_name="r", start_time=T0).info.run_id
    log_points(c, run, "eval_de_accuracy", [(s, 0.1 * s, T0 + s) for s in range(3)])

    def driver():
        cfg = Config(tracking_uri=uri, aim_repo=repo)
        return open_driver(cfg, strict_experiments=False, must_exist=True, role="daemon")

    d = driver()
    try:
        d.listing.full_every_s = 0.0
        d.round()
        log_points(c, run, "eval_de_loss", [(s, 1.0, T0 + 10 + s) for s in range(5)])
        log_points(c, run, "eval_de_accuracy", [(s, 0.1 * s, T0 + s) for s in range(3, 5)])
        d.round()
    finally:
        d.close()
    log_points(c, run, "eval_de_accuracy", [(5, 0.5, T0 + 5)])
    d = driver()  # a restart
    try:
        d.listing.full_every_s = 0.0
        d.round()
    finally:
        d.close()
    c.set_terminated(run, "FINISHED", end_time=T0 + 100)
    assert _backfill(uri, repo).returncode == 0
    metrics = read_aim(repo)[run]["metrics"]
    accuracy = {k: v for k, v in metrics.items() if "accuracy" in k[0]}
    assert list(accuracy) == [("de_accuracy", (("subset", "eval"),))], list(metrics)
    assert accuracy[("de_accuracy", (("subset", "eval"),))]["steps"] == [0, 1, 2, 3, 4, 5]
    assert metrics[("loss", (("dataset", "de"), ("lang", "de"), ("subset", "eval")))]["steps"] == [0, 1, 2, 3, 4]


# a failed round -------------------------------------------------------------------------------
def _media_store(store: Path, tmp_path: Path) -> list[str]:
    """Finished runs, each with a text artifact (converted through a temporary folder)."""
    c = client_for(str(store))
    exp = c.create_experiment("media")
    runs = []
    for i in range(3):
        run = _run(c, exp, f"r{i}")
        note = tmp_path / f"note{i}.txt"
        note.write_text("hello\n")
        c.log_artifact(run, str(note))
        runs.append(run)
    return runs


def test_a_failed_round_is_not_forgotten_by_the_quick_rounds_after_it(tmp_path, monkeypatch):
    """With no usable temporary folder a round fails; the quick rounds after it must not report
    ok while the runs it did not write are missing: the next listing is a full one (failing the
    same way), the failure is recorded, and once the folder is back every run arrives."""
    import tempfile

    store, repo = tmp_path / "mlruns", tmp_path / "aim"
    runs = _media_store(store, tmp_path)
    d = open_driver(
        Config(tracking_uri=str(store), aim_repo=repo), strict_experiments=False, must_exist=True, role="daemon"
    )
    try:
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-folder"))
        for _ in range(2):
            with pytest.raises(FileNotFoundError):
                d.round()
        ((_when, ok, summary),) = d.state.last_rounds().values()
        assert not ok and summary["failed"].startswith("FileNotFoundError"), summary
        monkeypatch.undo()
        st = d.round()
        assert not st.errors and st.read["full"], st.as_dict()
    finally:
        d.close()
    aim = read_aim(repo)
    assert set(aim) == set(runs)
    assert [aim[r]["objects"] for r in runs] == [["note0"], ["note1"], ["note2"]]
    st = run_syncer("status", "--aim-repo", str(repo))
    assert "(ok," in st.stdout and "it failed" not in st.stdout, st.stdout


@pytest.mark.slow
def test_a_daemon_whose_rounds_keep_failing_is_not_reported_healthy(tmp_path):
    from test_sync_daemon import Daemon, wait_for

    store, repo, health = tmp_path / "mlruns", tmp_path / "aim", tmp_path / "health"
    _media_store(store, tmp_path)
    site = tmp_path / "site"  # no usable temporary folder in the daemon's process
    site.mkdir()
    (site / "sitecustomize.py").write_text(f"import tempfile\ntempfile.tempdir = {str(tmp_path / 'gone')!r}\n")
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    args = ("--health-file", str(health), "--full-scan-interval", "600", "--no-watch")
    d = Daemon(str(store), repo, *args, interval=0.5, env=env).start()
    try:
        wait_for(lambda: "round failed: FileNotFoundError" in d.text(), 120)
        touched = health.stat().st_mtime if health.exists() else None
        wait_for(lambda: d.text().count("round failed: FileNotFoundError") >= 3, 120)
        assert (health.stat().st_mtime if health.exists() else None) == touched, d.text()
        st = run_syncer("status", "--aim-repo", str(repo))
        assert "(failed," in st.stdout and "it failed: FileNotFoundError" in st.stdout, st.stdout
    finally:
        d.kill()


# 10 (c) --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_daemon_waiting_for_a_database_looks_every_interval_and_waits_out_its_creation(tmp_path):
    """While the database is not there the daemon looks for it every interval (no back-off to
    long delays); once it appears, what it looks like while MLflow creates it (a file without
    tables yet) is not taken for a foreign database: the daemon waits, then syncs."""
    from test_sync_daemon import Daemon, wait_for

    db, repo = tmp_path / "mlflow.db", tmp_path / "aim"
    d = Daemon(f"sqlite:///{db}", repo, interval=1).start()
    try:
        wait_for(lambda: d.text().count("to appear; retrying in") >= 5, 120)
        delays = [line.rsplit("retrying in ", 1)[1] for line in d.text().splitlines() if "retrying in" in line]
        assert set(delays) == {"1 s"}, delays
        db.touch()  # MLflow has made the file, not its tables yet: no database of MLflow's, for now
        wait_for(lambda: "appeared a moment ago" in d.text(), 60)
        made = tmp_path / "made" / "mlflow.db"
        c = client_for(f"sqlite:///{made}")
        run = _run(c, c.create_experiment("e"), "r")
        os.replace(made, db)  # its tables made
        wait_for(lambda: run in read_aim(repo), 120)
        assert d.proc.poll() is None, d.text()
    finally:
        d.kill()
