"""MLflow entities (from MlflowClient or FileStore) -> our records, and a run's artifacts through
MLflow's artifact repository for its artifact URI (any artifact store)."""

from __future__ import annotations

import logging
from typing import Any

from .records import ArtifactFile, Experiment, RunRecord
from .uri import is_local_store, local_path

log = logging.getLogger(__name__)


def experiment_from(e: Any) -> Experiment:
    """An `mlflow.entities.Experiment` (or `file_meta.ExperimentMeta`) as our record."""
    return Experiment(e.experiment_id, e.name, e.lifecycle_stage, e.tags.get("mlflow.note.content"), dict(e.tags))


def datasets_from_inputs(inputs: Any) -> list[dict[str, Any]]:
    """`mlflow.entities.RunInputs` -> the `datasets` param: name, digest, source, context."""
    out = []
    for di in getattr(inputs, "dataset_inputs", None) or []:
        ds = di.dataset
        item = {
            "name": ds.name,
            "digest": ds.digest,
            "source_type": ds.source_type,
            "source": ds.source,
        }
        if getattr(ds, "profile", None):
            item["profile"] = ds.profile
        for tag in di.tags or []:
            if tag.key == "mlflow.data.context":
                item["context"] = tag.value
        out.append(item)
    return out


def artifact_repo_list(run: RunRecord, tracking_uri: str | None = None) -> list[ArtifactFile]:
    """Every file under the run's artifact root, through MLflow's artifact repository for its
    URI (a local folder, s3:, gs:, a server's `mlflow-artifacts:` given its `tracking_uri`):
    the run's artifact URI is known, so no request asks for it again."""
    if run.artifact_uri and is_local_store(run.artifact_uri):
        from .local_artifacts import list_local_artifacts

        root = local_path(run.artifact_uri)
        if root is None or not root.is_dir():
            return []
        files, warnings = list_local_artifacts(root)
        for w in warnings:
            log.warning("run %s: %s", run.run_id, w)
        return files
    if not run.artifact_uri:
        return []
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repo = get_artifact_repository(run.artifact_uri, tracking_uri=tracking_uri)
    out: list[ArtifactFile] = []
    stack: list[str | None] = [None]
    while stack:
        for info in repo.list_artifacts(stack.pop()):
            if info.is_dir:
                stack.append(info.path)
            else:
                out.append(ArtifactFile(info.path, info.file_size))
    return sorted(out, key=lambda a: a.path)


def artifact_repo_fetch(run: RunRecord, path: str, dst_dir: str, tracking_uri: str | None = None) -> str:
    if run.artifact_uri and is_local_store(run.artifact_uri):
        local = local_path(run.artifact_uri)
        if local is not None:
            return str(local / path)
    if not run.artifact_uri:
        raise FileNotFoundError(f"run {run.run_id} has no artifact location")
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repo = get_artifact_repository(run.artifact_uri, tracking_uri=tracking_uri)
    return str(repo.download_artifacts(path, dst_dir))
