"""MLflow 3 logged models -> what the Aim run carries: the `mlflow.logged_models` param (one
entry per model: name, id, step, status, flavors, where its files are, params, tags, linked
metrics with their dataset) and, for linked metrics the run did not log itself, metric series
with the context `{model: <name>}`. Model files are never copied (a checkpoint can be GBs). Pure."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ..sources.records import LoggedModel, ModelMetric, fingerprint
from .keys import MappedMetric
from .params import parse_params

MODEL_CONTEXT = "model"


def models_param(models: list[LoggedModel]) -> list[dict[str, Any]]:
    """The `mlflow.logged_models` param: searchable in Aim, e.g.
    `any(m["name"] == "clf" for m in run.mlflow.logged_models)`."""
    out = []
    for m in sorted(models, key=lambda m: (m.step is None, m.step or 0, m.creation_time or 0, m.model_id)):
        out.append(
            {
                "name": m.name,
                "model_id": m.model_id,
                "step": m.step,
                "status": m.status,
                "model_type": m.model_type,
                "flavors": list(m.flavors),
                "artifact_location": m.artifact_location,
                "source_run_id": m.run_id,
                "creation_time": m.creation_time,
                "params": parse_params(m.params),
                "tags": dict(m.tags),
                "metrics": [
                    {
                        "key": x.key,
                        "value": x.value,
                        "step": x.step,
                        "timestamp": x.timestamp,
                        "dataset_name": x.dataset_name,
                        "dataset_digest": x.dataset_digest,
                    }
                    for x in m.metrics
                ],
                "copied": False,  # listed, not copied: the files stay where MLflow keeps them
            }
        )
    return out


def models_digest(models: list[LoggedModel] | None) -> str | None:
    """What the run's models looked like: a new model, status or metric changes it."""
    return None if models is None else fingerprint(models_param(models))


Points = list[tuple[int, float, int]]  # (step, value, timestamp ms)


def model_series(
    models: list[LoggedModel], *, run_id: str, run_keys: set[str], name_of: Callable[[str, str | None], MappedMetric]
) -> list[tuple[MappedMetric, Points]]:
    """[(Aim metric with `{model: name}`, [(step, value, timestamp ms)])] of the models' linked
    metrics that are not this run's own points (those arrive with the run's metrics)."""
    series: dict[tuple[str, bool, str], tuple[MappedMetric, Points]] = {}
    for m, x in foreign_metrics(models, run_id=run_id, run_keys=run_keys):
        target = model_metric(name_of(x.key, x.dataset_name), m.name)
        slot = (target.name, target.system, fingerprint(target.context))
        series.setdefault(slot, (target, []))[1].append((x.step, x.value, x.timestamp))
    return [(target, sorted(points, key=lambda p: (p[2], p[0]))) for target, points in series.values()]


def foreign_metrics(
    models: list[LoggedModel], *, run_id: str, run_keys: set[str]
) -> Iterator[tuple[LoggedModel, ModelMetric]]:
    """(model, metric) of the models' linked metrics that this run did not log as its own."""
    for m in models:
        for metric in m.metrics:
            if not (metric.run_id == run_id and metric.key in run_keys):
                yield m, metric


def model_metric(mapped: MappedMetric, model_name: str) -> MappedMetric:
    """A model's metric: the key's mapping, with the model in the context."""
    return MappedMetric(mapped.name, {**mapped.context, MODEL_CONTEXT: model_name}, mapped.system, mapped.rule)
