"""The MLflow internals the sources use are where syncer/sources/mlflow_compat.py says; and
the guard fails loudly, naming what changed, when one is gone."""

from __future__ import annotations

import pytest
from syncer.sources import mlflow_compat


def test_installed_mlflow_has_every_internal_we_use():
    mlflow_compat._checked = False
    mlflow_compat.check_mlflow_compatibility()


def test_a_missing_internal_is_named(monkeypatch):
    from mlflow.store.tracking.file_store import FileStore

    monkeypatch.delattr(FileStore, "_get_all_tags")
    monkeypatch.setattr(mlflow_compat, "_checked", False)
    with pytest.raises(mlflow_compat.MlflowInternalsChanged, match="FileStore._get_all_tags is missing"):
        mlflow_compat.check_mlflow_compatibility()


def test_metric_objects_of_a_search_result_carry_step_and_timestamp():
    from mlflow.entities import Metric, RunData

    (m,) = mlflow_compat.metric_objs(RunData(metrics=[Metric("loss", 0.5, 1700000000000, 7)]))
    assert (m.key, m.value, m.timestamp, m.step) == ("loss", 0.5, 1700000000000, 7)
