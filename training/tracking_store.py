"""The MLflow store the runs go to: which one (a tracking URI, by default a file store under the output
folder), pointing MLflow at it for the duration of a command, and the look-ups a command makes there
(its experiment, the configurations already trained)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlparse

from .train_config import TAG_CONFIG, TrainingError


def experiment_name(technique: str) -> str:
    return f"xnli_{technique}"


def is_file_store(uri: str) -> bool:
    scheme = urlparse(uri).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")


def resolve_tracking_uri(tracking_uri: str | None, output_dir: Path) -> str:
    if not tracking_uri:
        return (Path(output_dir).resolve() / "mlruns").as_uri()
    return tracking_uri


@contextmanager
def tracking_uri_set_to(tracking_uri: str):
    """Point MLflow at ``tracking_uri`` for the duration, then put back what was there before
    (``mlflow.set_tracking_uri`` changes process-wide state and the MLFLOW_TRACKING_URI variable)."""
    import mlflow

    if is_file_store(tracking_uri):
        # MLflow 3 refuses the (maintenance-mode) file store unless told otherwise.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield tracking_uri
    finally:
        mlflow.set_tracking_uri(previous)  # None: unset again
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


def store_exists(uri: str) -> bool:
    """False for a file store that is not there yet (MLflow's client would create it just by reading)."""
    if not is_file_store(uri):
        return True
    path = unquote(urlparse(uri).path) if uri.startswith("file:") else uri
    return Path(path).exists()


def get_or_create_experiment(name: str) -> str:
    """The id of experiment ``name``, created if need be (without making it the process's active one)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name)
        except MlflowException:  # created meanwhile by a process running beside this one
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage != "active":
        raise TrainingError(f"the MLflow experiment {name!r} is deleted; restore it or delete it for good first")
    return experiment.experiment_id


def _all_runs(client, experiment_id: str, filter_string: str = "") -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def configs_in_store(uri: str, exp_name: str) -> tuple[dict, dict]:
    """{config id: run id} of the FINISHED runs of experiment ``exp_name``, and of the others."""
    from mlflow import MlflowClient

    finished: dict[str, str] = {}
    unfinished: dict[str, str] = {}
    if not store_exists(uri):
        return finished, unfinished
    client = MlflowClient()
    experiment = client.get_experiment_by_name(exp_name)
    if experiment is None or experiment.lifecycle_stage != "active":
        return finished, unfinished
    for r in _all_runs(client, experiment.experiment_id):
        cid = r.data.tags.get(TAG_CONFIG)
        if cid:
            (finished if r.info.status == "FINISHED" else unfinished).setdefault(cid, r.info.run_id)
    return finished, unfinished
