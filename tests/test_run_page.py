"""A synced run's Aim run page as full as a run Aim tracked itself, read back through Aim's SDK:

* real MLflow runs made in a git checkout (a logged scikit-learn model, system metrics, a note,
  `<name>_<lang>` images, a logged `requirements.txt`), synced from a file store and from an MLflow
  server: `run['__system_params']` has the structure of a run tracked in the same checkout by Aim's
  own `Run(log_system_params=True)` (same keys, same types; what MLflow records agrees); the
  artifacts listing is under `mlflow` (and Aim's search finds it there), MLflow's note is the run's
  note, per-run ids are no labels, every system metric is on the System tab or readable, the images
  carry `{lang}`;
* an upgrade: a repo written by the code before this change (the commit it was made on, from git),
  synced again by this code, ends with one artifacts listing, in the new place, once.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import ROOT, client_for, run_syncer, store_uri
from run_page_runs import BRANCH, CONFIG_IDS, NOTE, REMOTE, aim_tracked_run, make_checkout, mlflow_runs

pytestmark = pytest.mark.slow

# the commit this change was made on: its syncer writes the old layout (the upgrade test runs it)
BEFORE = "aec8973b59036a4c73b0cb5289879c13b2bd8c4c"
AIM_SYSTEM_TAB = {"__system__cpu", "__system__memory_percent", "__system__disk_percent"}  # what MLflow has of them


def aim_runs(repo: Path) -> dict[str, object]:
    """{run name: aim.Run} through Aim's SDK."""
    from syncer.aim import fresh_repo

    r = fresh_repo(repo)
    return {run.name: run for run in (r.get_run(h) for h in r.list_all_runs())}


@pytest.fixture(scope="module", params=["file", "server"])
def synced(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"run-page-{request.param}")
    server = request.getfixturevalue("mlflow_server") if request.param == "server" else None
    uri = store_uri(request.param, tmp, server)
    checkout = make_checkout(tmp / "checkout")
    ids = mlflow_runs(checkout, uri)
    repo = tmp / "aim"
    run_syncer("backfill", "--mlflow-tracking-uri", uri, "--aim-repo", str(repo), check=True)
    aim_hash = aim_tracked_run(checkout, repo)
    from syncer.aim import index_missing

    index_missing(repo)  # Aim's own process may end before its index manager indexed the run (`aim up` would)
    return {"uri": uri, "repo": repo, "ids": ids, "aim_hash": aim_hash, "checkout": checkout}


def same_structure(ours, aims, where: str = "__system_params") -> None:
    """Every key of ours is one of Aim's, each value of the same type, all the way down; packages
    and environment variables: name -> string, as Aim's."""
    assert type(ours) is type(aims), f"{where}: {type(ours).__name__} where Aim has {type(aims).__name__}"
    if where.endswith((".packages", ".env_variables")):
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in {**ours, **aims}.items()), where
    elif isinstance(ours, dict):
        assert set(ours) <= set(aims), f"{where}: {sorted(set(ours) - set(aims))} are not Aim's keys"
        for k, v in ours.items():
            same_structure(v, aims[k], f"{where}.{k}")
    elif isinstance(ours, list):
        assert all(isinstance(x, str) for x in ours + aims), f"{where}: not all strings"


def test_system_params_as_aim_tracks_them(synced):
    runs = aim_runs(synced["repo"])
    ours, aims = runs["sklearn"]["__system_params"], runs["aim-tracked"]["__system_params"]
    # Aim's own: every key; ours: what MLflow recorded (no interpreter, no environment variables)
    assert set(aims) == {"packages", "env_variables", "git_info", "executable", "arguments"}
    assert set(ours) == {"packages", "git_info", "arguments"}
    same_structure(ours, aims)
    # the same checkout: the same git facts (Aim keeps the short hash; MLflow records no commit time or author)
    assert ours["git_info"]["branch"] == aims["git_info"]["branch"] == BRANCH
    assert ours["git_info"]["remote_origin_url"] == aims["git_info"]["remote_origin_url"] == REMOTE
    assert ours["git_info"]["commit"]["hash"].startswith(aims["git_info"]["commit"]["hash"])
    assert set(ours["git_info"]["commit"]) == {"hash"}
    assert ours["arguments"][0].endswith("train.py") and aims["arguments"][0] == "aim_run.py"
    # the model's requirements: what this environment has installed (MLflow drops a local `+cpu`)
    assert {"mlflow", "scikit-learn"} <= set(ours["packages"])
    for name, version in ours["packages"].items():
        if name in aims["packages"]:
            assert aims["packages"][name].split("+")[0] == version, name
    assert runs["sklearn"]["mlflow"]["packages_from"][0] == "models/model/requirements.txt"


def test_requirements_artifact_first_then_mlflow2_model(synced):
    run = aim_runs(synced["repo"])["requirements"]
    system = run["__system_params"]
    assert system["packages"] == {"mlflow": "3.17.2", "numpy": "2.4.6", "scipy": "1.17.1"}  # the run's file wins
    assert run["mlflow"]["packages_from"] == ["requirements.txt", "mlflow2_model/requirements.txt"]


def test_listing_under_mlflow_note_labels_system_metrics_images(synced):
    from syncer.aim import fresh_repo

    runs = aim_runs(synced["repo"])
    run = runs["sklearn"]
    assert run.get("artifacts") is None  # not first among the Overview's params any more
    listing = {a["path"]: a for a in run["mlflow"]["artifacts"]}
    assert set(listing) == {"confusion_matrix_de.png", "confusion_matrix_fr.png"}
    assert listing["confusion_matrix_de.png"]["name"] == "confusion_matrix"
    assert listing["confusion_matrix_de.png"]["context"] == {"lang": "de"}
    assert set(listing["confusion_matrix_fr.png"]) >= {"path", "size", "uri", "copied_as", "name", "context", "step"}
    found = fresh_repo(synced["repo"]).query_runs(
        '"confusion_matrix_de.png" in [a["path"] for a in run.mlflow.artifacts]', report_mode=0
    )
    assert [r.run.name for r in found.iter_runs()] == ["sklearn"]
    # MLflow's note: the run's Aim note (its Notes tab), and its description
    assert [n["content"] for n in run.props.notes] == [NOTE]
    assert run.description == NOTE
    # per-run ids stay out of Aim's global tag list, searchable in the tags param
    assert [getattr(t, "name", t) for t in run.props.tags] == ["technique=fine-tune"]
    assert run["tags"]["config_id"] == CONFIG_IDS[0]
    # every system metric on the System tab or under a readable name
    names = {name for name, _ctx, _ in run.iter_metrics_info()}
    system = {n for n in names if n.startswith("__system__")}
    assert system == AIM_SYSTEM_TAB
    assert {"system/disk_usage_megabytes", "system/network_receive_megabytes"} <= names
    # the images grouped by language like the curves
    images = sorted((n, json.dumps(c.to_dict())) for n, c, _ in run.iter_sequence_info_by_type("aim.image"))
    assert images == [("confusion_matrix", '{"lang": "de"}'), ("confusion_matrix", '{"lang": "fr"}')]


def test_note_follows_mlflow_and_leaves_notes_made_in_aim(synced, tmp_path):
    from syncer.aim import fresh_repo

    if synced["uri"].startswith("http"):
        pytest.skip("the file store shows it; the server writes the same tags")
    repo = tmp_path / "aim"
    run_syncer("backfill", "--mlflow-tracking-uri", synced["uri"], "--aim-repo", str(repo), check=True)
    run_id = synced["ids"]["sklearn"]
    r = fresh_repo(repo)
    h = next(h for h in r.list_all_runs() if r.get_run(h).name == "sklearn")
    r.structured_db.find_run(h).add_note("mine, written in Aim")
    client = client_for(synced["uri"])
    client.set_tag(run_id, "mlflow.note.content", "edited in MLflow")
    run_syncer("backfill", "--mlflow-tracking-uri", synced["uri"], "--aim-repo", str(repo), check=True)
    notes = sorted(n["content"] for n in fresh_repo(repo).get_run(h).props.notes)
    assert notes == ["edited in MLflow", "mine, written in Aim"]
    client.delete_tag(run_id, "mlflow.note.content")
    run_syncer("backfill", "--mlflow-tracking-uri", synced["uri"], "--aim-repo", str(repo), check=True)
    assert [n["content"] for n in fresh_repo(repo).get_run(h).props.notes] == ["mine, written in Aim"]
    client.set_tag(run_id, "mlflow.note.content", NOTE)  # as it was, for the other tests


# ------------------------------------------------------------------------------------------------
# upgrade: a repo the code before this change wrote, synced again by this code


def old_syncer(dst: Path) -> Path:
    """The syncer package as it was at BEFORE, from this clone's history."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    p = subprocess.run(["git", "-C", str(ROOT), "archive", BEFORE, "syncer"], capture_output=True, timeout=120)
    if p.returncode != 0:
        pytest.skip(f"commit {BEFORE[:7]} (before the run-page change) is not in this clone: {p.stderr[:200]!r}")
    dst.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(p.stdout)) as tar:
        tar.extractall(dst, filter="data")
    return dst


def sync_with(code: Path | None, uri: str, repo: Path) -> str:
    """`syncer backfill` with the package at `code` (None: this checkout's)."""
    if code is None:
        return run_syncer("backfill", "--mlflow-tracking-uri", uri, "--aim-repo", str(repo), check=True).stdout
    env = {**os.environ, "PYTHONPATH": str(code)}
    p = subprocess.run(
        [sys.executable, "-m", "syncer", "backfill", "--mlflow-tracking-uri", uri, "--aim-repo", str(repo)],
        cwd=code,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, f"the old syncer failed:\n{p.stdout}\n{p.stderr}"
    return p.stdout


def test_upgrade_rewrites_old_runs_once_with_one_listing(tmp_path):
    uri = str(tmp_path / "mlruns")
    client = client_for(uri)
    exp = client.create_experiment("upgrade")
    tags = {"mlflow.source.git.commit": "a" * 40, "mlflow.note.content": "n"}
    run = client.create_run(exp, run_name="old", tags=tags)
    client.log_text(run.info.run_id, "numpy==2.4.6\n", "requirements.txt")
    client.log_text(run.info.run_id, "some predictions", "preds/predictions.txt")
    client.log_metric(run.info.run_id, "loss", 0.5, step=0)
    client.set_terminated(run.info.run_id)
    repo = tmp_path / "aim"
    sync_with(old_syncer(tmp_path / "old"), uri, repo)
    before = aim_runs(repo)["old"]
    old_listing = before["artifacts"]
    assert {a["path"] for a in old_listing} == {"requirements.txt", "preds/predictions.txt"}
    assert before["mlflow"].get("artifacts") is None and before.get("__system_params") is None

    out = sync_with(None, uri, repo)  # MLflow unchanged since: the run is written again all the same
    assert "1 updated" in out, out
    after = aim_runs(repo)["old"]
    assert after.get("artifacts") is None
    assert after["mlflow"]["artifacts"] == old_listing  # one listing, every field kept
    assert after["__system_params"] == {"packages": {"numpy": "2.4.6"}, "git_info": {"commit": {"hash": "a" * 40}}}
    assert [n["content"] for n in after.props.notes] == ["n"]
    assert "0 updated" in sync_with(None, uri, repo)  # once
    print(json.dumps(after["mlflow"]["artifacts"], indent=1))


def test_status_says_what_collapsed_and_which_experiments_have_no_runs(tmp_path):
    """A Trainer logs `epoch` with every log line, so several times at one step: Aim keeps one value
    per step, and `status --aim` says so instead of leaving fewer points unexplained."""
    uri = str(tmp_path / "mlruns")
    client = client_for(uri)
    run = client.create_run(client.create_experiment("trainer"), run_name="t")
    client.create_experiment("empty")  # listed, no runs: nothing of it in Aim
    for step, n in ((0, 3), (10, 2)):
        for i in range(n):
            client.log_metric(
                run.info.run_id, "epoch", step / 10 + i * 0.001, step=step, timestamp=1_700_000_000_000 + i
            )
        client.log_metric(run.info.run_id, "loss", 1.0, step=step)
    client.set_terminated(run.info.run_id)
    repo = tmp_path / "aim"
    out = sync_with(None, uri, repo)
    assert "2 experiments, 1 runs" in out and "4 points" in out, out
    st = run_syncer("status", "--aim-repo", str(repo), "--aim", check=True).stdout
    assert "it listed 2 MLflow experiments: 1 without runs" in st, st
    assert "in Aim (" in st and "1 experiment, 1 run" in st, st
    assert "trainer: 1 runs (t), 4 points" in st, st
    assert "from 7 MLflow points: 3 of them repeat a step their key already has" in st and ": epoch 3" in st, st
