"""``--resume RUN_ID``: continue an interrupted run from its last complete checkpoint (a logged model
``checkpoint-<step>`` of the run), into the same MLflow run, with the configuration read back from the
run's own params and checked against its ``config_id`` tag."""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path

from .grid import config_id
from .hub import check_models, load_data
from .tracking_store import resolve_tracking_uri, store_exists, tracking_uri_set_to
from .train_config import (
    OWN_PARAMS,
    SYSTEM_METRICS_PREFIX,
    TAG_CONFIG,
    TAG_SWEEP,
    TAG_TECHNIQUE,
    RunResult,
    RunSpec,
    TrainConfig,
    TrainingError,
    one_line,
    run_dir,
    say,
    validate,
)
from .train_run import ResumePoint, train_one

# The Trainer's params a run's configuration is rebuilt from, beside OWN_PARAMS.
_TRAINER_PARAMS = (
    "learning_rate",
    "per_device_train_batch_size",
    "seed",
    "num_train_epochs",
    "eval_steps",
    "save_strategy",
)


def _config_from_run(cfg: TrainConfig, run) -> tuple[TrainConfig, RunSpec]:
    """The configuration a run was trained with, from its params (the Trainer's and ours)."""
    p, rid = run.data.params, run.info.run_id
    missing = [k for k in (*OWN_PARAMS, *_TRAINER_PARAMS) if k not in p]
    if missing:
        raise TrainingError(f"run {rid} lacks the params {', '.join(missing)}; it was not trained by this command")
    try:
        spec = RunSpec(
            p["model_name"],
            float(p["learning_rate"]),
            int(p["per_device_train_batch_size"]),
            int(p["seed"]),
            run.info.run_name,
        )
        rcfg = replace(
            cfg,
            model_names=[spec.model_name],
            learning_rate=spec.learning_rate,
            batch_size=spec.batch_size,
            seed=spec.seed,
            num_train_samples=int(p["num_train_samples"]),
            num_train_epochs=float(p["num_train_epochs"]),
            eval_steps=int(float(p["eval_steps"])),
            eval_languages=p["eval_languages"].split(),
            data_source=p["data_source"],
            max_length=int(p["max_seq_length"]),
            save_strategy=p["save_strategy"].split(".")[-1].lower(),
        )
    except ValueError as exc:
        raise TrainingError(f"cannot read run {rid}'s configuration from its params: {one_line(exc)}") from exc
    return rcfg, spec


def _checkpoints_of(client, run) -> list:
    """The run's logged models named ``checkpoint-<step>``, every page."""
    checkpoints, token = [], None
    while True:
        page = client.search_logged_models(
            [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'", page_token=token
        )
        checkpoints += [m for m in page if re.fullmatch(r"checkpoint-\d+", m.name)]
        token = page.token
        if not token:
            return checkpoints


def _latest_checkpoint(client, run, dest: Path) -> tuple[int, Path]:
    """Download the run's last complete checkpoint (a logged model ``checkpoint-<step>``) into ``dest``."""
    import yaml
    from mlflow.artifacts import download_artifacts
    from mlflow.entities import LoggedModelStatus

    rid = run.info.run_id
    checkpoints = _checkpoints_of(client, run)
    found = [m for m in checkpoints if m.status == LoggedModelStatus.READY]
    if not found:
        if checkpoints:  # the process stopped while logging its first one
            raise TrainingError(
                f"run {rid} has no complete checkpoint in MLflow ({checkpoints[0].name} was "
                "interrupted while being logged)"
            )
        raise TrainingError(
            f"run {rid} has no checkpoint in MLflow (train with --save-strategy steps or epoch to be able to resume)"
        )
    last = max(found, key=lambda m: int(m.name.split("-")[1]))
    step = int(last.name.split("-")[1])
    base = last.artifact_location.rstrip("/")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    mlmodel = yaml.safe_load(Path(download_artifacts(artifact_uri=f"{base}/MLmodel", dst_path=str(dest))).read_text())
    inner = mlmodel["flavors"]["python_function"]["artifacts"]["model_path"]["path"]  # artifacts/checkpoint-<step>
    return step, Path(download_artifacts(artifact_uri=f"{base}/{inner}", dst_path=str(dest)))


def _logged_steps(client, run) -> dict[str, int]:
    """Each Trainer metric of the run and the last step MLflow holds it at (system metrics count
    their own steps)."""
    out = {}
    for key in run.data.metrics:
        if not key.startswith(SYSTEM_METRICS_PREFIX):
            out[key] = max((m.step for m in client.get_metric_history(run.info.run_id, key)), default=-1)
    return out


def _resumable_run(client, rid: str, uri: str, technique: str):
    """The run ``rid``, if this command trained it with ``technique`` and it did not finish."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(rid)
    except MlflowException:
        raise TrainingError(f"there is no run {rid!r} in {uri}") from None
    tags = run.data.tags
    if run.info.lifecycle_stage != "active":
        raise TrainingError(f"run {rid} is deleted; restore it first")
    if TAG_CONFIG not in tags or TAG_TECHNIQUE not in tags:
        raise TrainingError(f"run {rid} was not trained by this command (it has no {TAG_CONFIG} tag)")
    if tags[TAG_TECHNIQUE] != technique:
        raise TrainingError(
            f"run {rid} is a {tags[TAG_TECHNIQUE]} run: python -m training {tags[TAG_TECHNIQUE]} --resume {rid}"
        )
    if run.info.status == "FINISHED":
        raise TrainingError(f"run {rid} ({run.info.run_name}) is FINISHED: nothing to resume")
    return run


def resume_run(cfg: TrainConfig) -> RunResult:
    """Continue run ``cfg.resume`` from its last checkpoint, into the same MLflow run."""
    rid = cfg.resume
    assert rid is not None
    with tracking_uri_set_to(resolve_tracking_uri(cfg.tracking_uri, cfg.output_dir)) as uri:
        from mlflow import MlflowClient

        say(cfg, f"MLflow tracking URI: {uri}")
        if not store_exists(uri):
            raise TrainingError(f"there is no MLflow store at {uri}")
        client = MlflowClient()
        run = _resumable_run(client, rid, uri, cfg.technique)
        rcfg, spec = _config_from_run(cfg, run)
        source = validate(rcfg)
        if config_id(rcfg, spec, source) != run.data.tags[TAG_CONFIG]:
            raise TrainingError(
                f"run {rid}'s params do not match its {TAG_CONFIG} tag; cannot rebuild its configuration"
            )
        scratch = run_dir(cfg, spec) / ".resume"
        step, checkpoint = _latest_checkpoint(client, run, scratch)
        try:
            check_models(rcfg, [spec.model_name])
            data = load_data(rcfg, source, spec.seed)
            resume = ResumePoint(rid, checkpoint, step, _logged_steps(client, run))
            return train_one(rcfg, spec, *data, source, run.data.tags.get(TAG_SWEEP, ""), resume)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
