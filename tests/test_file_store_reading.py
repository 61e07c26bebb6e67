"""A file store's params and tags, read as MLflow's own `FileStore._get_all_params` /
`_get_all_tags` read them (names checked, contents decoded the same way), by the syncer's faster
reader (`mlflow_compat.FileStoreInternals`)."""

from __future__ import annotations

import os

import pytest
from syncer.sources import mlflow_compat

from conftest import T0, client_for


def _both(store, run_id: str, exp_id: str):
    internals = mlflow_compat.FileStoreInternals(store)
    info = internals.run_info(os.path.join(store.root_directory, exp_id, run_id))
    ours = (internals.params(info), internals.tags(info))
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
