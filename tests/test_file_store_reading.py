"""A file store read by the syncer's own reader (`file_meta.FileStoreInternals`, which does
not import MLflow) as MLflow's own `FileStore` reads it: experiments (`search_experiments`), run
folders' `meta.yaml` (`_get_run_info_from_dir`), params and tags (`_get_all_params` /
`_get_all_tags`: names checked, contents decoded the same way), on stores written by MLflow 1.x,
2.x and the installed MLflow, and on hand-edited ones. This is the guard of that reader: a
change in MLflow's file store layout fails here."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from syncer.sources import file_meta

from conftest import T0, client_for, imported_by_backfill, log_points

DATA = Path(__file__).parent / "data"


def _mlflow_store(root: Path):
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    from mlflow.store.tracking.file_store import FileStore

    return FileStore(str(root))


def _both(store, run_id: str, exp_id: str):
    internals = file_meta.FileStoreInternals(Path(store.root_directory))
    run_dir = Path(store.root_directory, exp_id, run_id)
    ours = (internals.params(run_dir), internals.tags(run_dir))
    info = store._get_run_info_from_dir(str(run_dir))
    mlflows = (
        {p.key: p.value for p in store._get_all_params(info)},
        {t.key: t.value for t in store._get_all_tags(info)},
    )
    return ours, mlflows


def test_params_and_tags_read_as_mlflow_reads_them(tmp_path):
    client = client_for(str(tmp_path / "mlruns"))
    exp = client.create_experiment("reading")
    run = client.create_run(exp, run_name="r", start_time=T0, tags={"task": "xnli", "note/deep": "ü ✓"}).info.run_id
    for k, v in {"lr": "2e-05", "model/name": "tiny-bert", "empty": "", "unicode": "été 🚀", "nl": "a\nb\r\nc"}.items():
        client.log_param(run, k, v)
    store = client._tracking_client.store
    ours, mlflows = _both(store, run, exp)
    assert ours == mlflows
    assert list(ours[0]) == list(mlflows[0])  # the same order too
    assert ours[0]["model/name"] == "tiny-bert" and ours[0]["nl"] == "a\nb\r\nc"

    # files MLflow did not write itself: an incomplete UTF-8 sequence at the end, invalid UTF-8
    params = os.path.join(store.root_directory, exp, run, "params")
    with open(os.path.join(params, "cut"), "wb") as f:
        f.write("ab€".encode()[:-1])
    ours, mlflows = _both(store, run, exp)
    assert ours == mlflows and ours[0]["cut"] == "ab"
    with open(os.path.join(params, "bad"), "wb") as f:
        f.write(b"\xff\xfe")
    with pytest.raises(UnicodeDecodeError):
        store._get_all_params(store._get_run_info_from_dir(os.path.join(store.root_directory, exp, run)))
    with pytest.raises(UnicodeDecodeError):
        _both(store, run, exp)


_RUN_FIELDS = ("run_id", "experiment_id", "user_id", "status", "start_time", "end_time", "lifecycle_stage")


def _run_fields(info) -> tuple:
    return (*(getattr(info, f) for f in _RUN_FIELDS), info.artifact_uri, info.run_name)


def _experiments(exps) -> list[tuple]:
    return [(e.experiment_id, e.name, e.lifecycle_stage, e.creation_time, dict(e.tags)) for e in exps]


def _assert_reads_as_mlflow(root: Path) -> int:
    """Every experiment and run folder of the store read both ways; how many runs were compared."""
    from mlflow.entities import ViewType

    ours = file_meta.FileStoreInternals(root)
    ours_exps = ours.experiments()
    mlflows = _mlflow_store(root)
    assert _experiments(ours_exps) == _experiments(mlflows.search_experiments(view_type=ViewType.ALL))
    runs = 0
    for exp_dir in [*(p for p in root.iterdir() if p.name != ".trash"), *(root / ".trash").iterdir()]:
        for run_dir in exp_dir.iterdir() if exp_dir.is_dir() else []:
            if not (run_dir / "meta.yaml").is_file() or run_dir.name in ("tags", "models"):
                continue
            assert _run_fields(ours.run_info(run_dir)) == _run_fields(mlflows._get_run_info_from_dir(str(run_dir)))
            runs += 1
    return runs


@pytest.mark.parametrize("version", ["1.30.1", "2.9.2"])
def test_stores_of_older_mlflow_read_as_mlflow_reads_them(tmp_path, version):
    root = tmp_path / "mlruns"
    shutil.copytree(DATA / f"legacy-mlflow-{version}", root)
    assert _assert_reads_as_mlflow(root) >= 1


def _store_of_this_mlflow(root: Path) -> tuple[str, list[str]]:
    client = client_for(str(root))
    exp = client.create_experiment("reading", tags={"team": "nlp", "mlflow.note.content": "notes ü"})
    gone = client.create_experiment("gone")
    runs = [
        client.create_run(exp, run_name="finished", start_time=T0, tags={"a": "b"}).info.run_id,
        client.create_run(exp, start_time=T0 + 1).info.run_id,  # a generated name
        client.create_run(gone, run_name="in a deleted experiment", start_time=T0 + 2).info.run_id,
    ]
    client.set_terminated(runs[0], "FINISHED", end_time=T0 + 10)
    client.set_terminated(runs[1], "KILLED")
    failed = client.create_run(exp, run_name="failed", start_time=T0 + 3).info.run_id
    client.set_terminated(failed, "FAILED")
    client.delete_run(failed)
    client.delete_experiment(gone)
    return exp, [*runs, failed]


def test_a_store_of_this_mlflow_reads_as_mlflow_reads_it(tmp_path):
    root = tmp_path / "mlruns"
    _store_of_this_mlflow(root)
    assert _assert_reads_as_mlflow(root) == 4
    stages = {e.name: e.lifecycle_stage for e in file_meta.FileStoreInternals(root).experiments()}
    assert stages == {"reading": "active", "gone": "deleted"}


def _edit(meta: Path, old: str, new: str) -> None:
    text = meta.read_text()
    assert old in text, (old, text)
    meta.write_text(text.replace(old, new))


def test_hand_edited_meta_files_read_as_mlflow_reads_them(tmp_path):
    """Shapes MLflow's writer does not make today: fields missing or of another type (older
    writers, hand edits). Each is read as MLflow reads it, or fails as MLflow fails."""
    root = tmp_path / "mlruns"
    exp, (finished, generated, _in_gone, _failed) = _store_of_this_mlflow(root)
    run_meta = root / exp / finished / "meta.yaml"
    _edit(run_meta, "lifecycle_stage: active\n", "")  # missing: active
    _edit(run_meta, f"experiment_id: '{exp}'", f"experiment_id: {exp}")  # an int, as MLflow 1.x wrote
    _edit(root / exp / generated / "meta.yaml", "status: 5\n", "")  # missing: RUNNING
    (root / "models").mkdir()  # the model registry's folder: not an experiment
    assert _assert_reads_as_mlflow(root) == 4

    # what MLflow refuses, refused alike
    ours, mlflows = file_meta.FileStoreInternals(root), _mlflow_store(root)
    _edit(run_meta, "status: 3", "status: 9")
    with pytest.raises(Exception, match="Could not get string corresponding to run status 9"):
        mlflows._get_run_info_from_dir(str(run_meta.parent))
    with pytest.raises(Exception, match="Could not get string corresponding to run status 9"):
        ours.run_info(run_meta.parent)
    run_meta.write_text("run_id: [unclosed\n")
    with pytest.raises(Exception) as theirs:
        mlflows._get_run_info_from_dir(str(run_meta.parent))
    with pytest.raises(type(theirs.value)):
        ours.run_info(run_meta.parent)

    # an experiment folder whose meta.yaml names another id: MLflow leaves it out, so do we
    shutil.copytree(root / exp, root / "4242")
    for run in (root / "4242").iterdir():
        if run.is_dir() and run.name != "tags":
            shutil.rmtree(run)
    assert "4242" not in {e.experiment_id for e in ours.experiments()}
    assert _experiments(ours.experiments()) == _experiments(mlflows.search_experiments(view_type=3))

    # a deleted experiment shadowed by a file of its name in the root: MLflow reads the file (and
    # leaves the experiment out), so do we
    shutil.rmtree(root / "4242")
    assert len(ours._plain_experiments()) == 2  # (the plain reader, so far)
    (gone,) = [p.name for p in (root / ".trash").iterdir()]
    (root / gone).write_text("not an experiment")
    assert gone not in {e.experiment_id for e in ours.experiments()}
    assert _experiments(ours.experiments()) == _experiments(mlflows.search_experiments(view_type=3))


def test_a_store_folder_that_went_away_is_not_made_again(tmp_path):
    """A store moved or deleted under a running daemon (a mount gone): an error, as MLflow's
    FileStore gives it, and nothing written there (MLflow's FileStore, made now, would make the
    folder again with a Default experiment)."""
    root = tmp_path / "mlruns"
    _store_of_this_mlflow(root)
    ours = file_meta.FileStoreInternals(root)
    assert len(ours.experiments()) == 2
    shutil.rmtree(root)
    with pytest.raises(file_meta.StoreGone, match="does not exist"):
        ours.experiments()
    with pytest.raises(file_meta.StoreGone):
        ours.run_info(root / "1" / "r")
    assert not root.exists()


def test_a_file_store_backfill_does_not_import_mlflow(tmp_path):
    """Reading a plain file store needs nothing of MLflow: a backfill (and each worker) starts a
    second sooner. MLflow is imported only where the reader meets something unusual."""
    root = tmp_path / "mlruns"
    shutil.copytree(DATA / "legacy-mlflow-2.9.2", root)
    assert imported_by_backfill(str(root), tmp_path / "aim") == []


def test_a_backfill_with_nothing_to_do_does_not_import_aims_sdk(tmp_path):
    """A backfill of a store synced before reads no run and writes none: Aim's SDK (most of a
    second of its start) stays unimported."""
    root = tmp_path / "mlruns"
    client = client_for(str(root))
    exp = client.create_experiment("e")
    for _ in range(2):
        run = client.create_run(exp)
        client.log_param(run.info.run_id, "lr", "0.1")
        log_points(client, run.info.run_id, "loss", [(s, 1.0 / (s + 1), T0 + s) for s in range(50)])
        client.set_terminated(run.info.run_id)
    assert "aim.sdk" in imported_by_backfill(str(root), tmp_path / "aim", "aim")  # the first one writes
    assert [m for m in imported_by_backfill(str(root), tmp_path / "aim", "aim") if m.startswith("aim.sdk")] == []
