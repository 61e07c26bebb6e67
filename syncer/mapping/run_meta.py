"""One MLflow run -> what its Aim run carries: name, description, note, params (Aim's
`__system_params` among them), labels, archived flag, creation and end time. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..sources.records import Experiment, RunRecord
from .params import parse_params
from .system_params import SYSTEM_PARAMS, system_params
from .tags import GIT_COMMIT_TAG, NOTE_TAG, PARENT_TAG, SOURCE_TAG, LabelPolicy, split_tags


@dataclass
class RunMeta:
    experiment: str
    name: str
    description: str | None
    note: str | None  # MLflow's note (`mlflow.note.content`): the Aim run's note (its Notes tab)
    params: dict[str, Any]  # run[...]: hparams, mlflow (artifacts in it), tags, datasets, __system_params
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
    labels: LabelPolicy | None = None,
    logged_models: list[dict[str, Any]] | None = None,
    packages: dict[str, str] | None = None,
    packages_from: list[str] | None = None,
) -> RunMeta:
    """`names`: run id -> run name of the runs listed with this one (parents of nested runs);
    `artifacts`: the `mlflow.artifacts` param (every file listed, with what it was copied as);
    `logged_models`: the run's MLflow 3 logged models (`mapping.model_series.models_param`);
    `packages`: {name: version} from the files the run logged (`packages_from`: which)."""
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
    if artifacts:  # under `mlflow`, not first among the Overview's params: `run.mlflow.artifacts`
        info["artifacts"] = artifacts
    if packages_from and packages:
        info["packages_from"] = list(packages_from)
    params: dict[str, Any] = {
        "hparams": parse_params(run.params),
        "mlflow": info,
        "tags": tags.user_tags,
    }
    if run.datasets:
        params["datasets"] = run.datasets
    system = system_params(run.tags, packages)
    if system:
        params[SYSTEM_PARAMS] = system
    description = tags.description
    if parent and names.get(parent):
        note = f"child of {names[parent]!r}"
        description = f"{description}\n\n({note})" if description else f"({note})"
    active = run.running and not run.deleted
    return RunMeta(
        experiment=exp.aim_name,
        name=run.name,
        description=description,
        note=run.tags.get(NOTE_TAG) or None,
        params=params,
        labels=(labels or LabelPolicy()).labels(tags.user_tags) if with_labels else [],
        archived=run.deleted or exp.lifecycle_stage == "deleted",
        created_at=(run.start_time or 0) / 1000.0,
        ended_at=None if (active or run.end_time is None) else run.end_time / 1000.0,
        active=active,
    )
