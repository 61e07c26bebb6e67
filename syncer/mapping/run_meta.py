"""One MLflow run -> what its Aim run carries: name, description, params, labels, archived
flag, creation and end time. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..sources.records import Experiment, RunRecord
from .params import parse_params
from .tags import GIT_COMMIT_TAG, PARENT_TAG, SOURCE_TAG, split_tags, tag_labels


@dataclass
class RunMeta:
    experiment: str
    name: str
    description: str | None
    params: dict[str, Any]  # everything under run[...] keys: hparams, mlflow, tags, datasets, artifacts
    labels: list[str]
    archived: bool
    created_at: float  # seconds
    ended_at: float | None
    active: bool


def run_meta(
    exp: Experiment,
    run: RunRecord,
    names: dict[str, str],
    artifacts: list[dict[str, Any]],
    *,
    tracking_uri: str,
    with_labels: bool = True,
    logged_models: list[dict[str, Any]] | None = None,
) -> RunMeta:
    """`names`: run id -> run name of the runs listed with this one (parents of nested runs);
    `artifacts`: the `artifacts` param (every file listed, with what it was copied as);
    `logged_models`: the run's MLflow 3 logged models (`mapping.model_series.models_param`)."""
    tags = split_tags(run.tags)
    parent = run.tags.get(PARENT_TAG)
    info: dict[str, Any] = {
        "run_id": run.run_id,
        "experiment_id": run.experiment_id,
        "experiment_name": exp.name,
        **({"workspace": exp.workspace} if exp.workspace is not None else {}),
        # Aim experiments have a description but no tags: MLflow's experiment tags live here
        "experiment_tags": {k: v for k, v in exp.tags.items() if not k.startswith("mlflow.")},
        "run_name": run.name,
        "status": run.status,
        "lifecycle_stage": run.lifecycle_stage,
        "start_time": run.start_time,
        "end_time": run.end_time,
        "user": run.user,
        "source": run.tags.get(SOURCE_TAG),
        "git_commit": run.tags.get(GIT_COMMIT_TAG),
        "parent_run_id": parent,
        "parent_run_name": names.get(parent) if parent else None,
        "artifact_uri": run.artifact_uri,
        "tracking_uri": tracking_uri,
        "tags": tags.system_tags,
    }
    if logged_models:
        info["logged_models"] = logged_models
    params: dict[str, Any] = {
        "hparams": parse_params(run.params),
        "mlflow": info,
        "tags": tags.user_tags,
    }
    if run.datasets:
        params["datasets"] = run.datasets
    if artifacts:
        params["artifacts"] = artifacts
    description = tags.description
    if parent and names.get(parent):
        note = f"child of {names[parent]!r}"
        description = f"{description}\n\n({note})" if description else f"({note})"
    active = run.running and not run.deleted
    return RunMeta(
        experiment=exp.aim_name,
        name=run.name,
        description=description,
        params=params,
        labels=tag_labels(tags.user_tags) if with_labels else [],
        archived=run.deleted or exp.lifecycle_stage == "deleted",
        created_at=(run.start_time or 0) / 1000.0,
        ended_at=None if (active or run.end_time is None) else run.end_time / 1000.0,
        active=active,
    )
