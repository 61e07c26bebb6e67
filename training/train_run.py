"""One MLflow run: load the model, freeze what the technique keeps fixed, train with the Hugging Face
``Trainer`` (whose own MLflow integration logs params, metrics and checkpoints into the run opened here),
then evaluate each language once more for the end-of-run artifacts. ``train_one`` reads as those steps.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .data import LABEL_NAMES, TECHNIQUES
from .grid import config_id
from .hub import load_model
from .provenance import record_provenance
from .tiny_models import is_tiny
from .tracking_store import experiment_name, get_or_create_experiment
from .train_config import (
    DEFAULT_SYSTEM_METRICS_INTERVAL,
    TAG_CONFIG,
    TAG_SWEEP,
    TAG_TECHNIQUE,
    RunResult,
    RunSpec,
    TrainConfig,
    TrainingError,
    run_dir,
    say,
)
from .trainer_callbacks import (
    accuracy,
    mlflow_callback,
    progress_callback,
    quiet_checkpoint_logging,
    replace_mlflow_callback,
)


@dataclass
class ResumePoint:
    """Where an interrupted run goes on from (see resume.py)."""

    run_id: str
    checkpoint: Path  # a local copy of the run's last checkpoint
    step: int  # the checkpoint's global step
    logged: dict[str, int]  # metric key -> the last step MLflow holds it at


# --------------------------------------------------------------------------- model helpers


def freeze_for_technique(model, technique: str) -> list[str]:
    """``feature-extraction``: freeze the encoder (``model.base_model``), train only the head.
    ``fine-tune``: train everything. Returns the names of the trainable parameters."""
    if technique not in TECHNIQUES:
        raise TrainingError(f"unknown technique {technique!r}; choose one of {', '.join(TECHNIQUES)}")
    prefix = model.base_model_prefix + "."
    names = [n for n, _ in model.named_parameters()]
    if technique == "feature-extraction" and not any(n.startswith(prefix) for n in names):
        raise TrainingError(f"cannot tell the encoder from the head in {type(model).__name__}")
    for name, param in model.named_parameters():
        param.requires_grad = technique == "fine-tune" or not name.startswith(prefix)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise TrainingError(f"{type(model).__name__} has no head to train")
    return trainable


def parameter_digests(model) -> dict[str, str]:
    """A SHA-256 of every parameter's values: cheap to keep, exact to compare."""
    out = {}
    for name, param in model.named_parameters():
        data = param.detach().float().cpu().contiguous().numpy()
        out[name] = hashlib.sha256(data.tobytes()).hexdigest()
    return out


@contextmanager
def _cpu_threads(cfg: TrainConfig, model_name: str):
    """torch's CPU threads for the duration: ``cfg.cpu_threads``, else 1 for a tiny model on a CPU."""
    import torch

    threads = cfg.cpu_threads or (1 if is_tiny(model_name) and not torch.cuda.is_available() else None)
    if not threads:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def _env(**values: str | None):
    """Set (None: unset) environment variables for the duration, then put back what was there."""
    old = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --------------------------------------------------------------------------- the Trainer


def _encode(tokenizer, train_raw, eval_raw: dict, max_length: int):
    """Premise/hypothesis pairs tokenized: the training set and {lang: evaluation set}."""
    max_length = min(max_length, getattr(tokenizer, "model_max_length", max_length) or max_length)

    def encode(batch):
        return tokenizer(batch["premise"], batch["hypothesis"], truncation=True, max_length=max_length)

    columns = ["premise", "hypothesis"]
    train_ds = train_raw.map(encode, batched=True, remove_columns=columns)
    eval_ds = {lang: ds.map(encode, batched=True, remove_columns=columns) for lang, ds in eval_raw.items()}
    return train_ds, eval_ds


def _training_arguments(cfg: TrainConfig, spec: RunSpec, out_dir: Path):
    import torch
    from transformers import TrainingArguments

    saving = cfg.save_strategy != "no"
    return TrainingArguments(
        output_dir=str(out_dir),
        run_name=spec.run_name,
        report_to=["mlflow"],
        per_device_train_batch_size=spec.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        num_train_epochs=cfg.num_train_epochs,
        learning_rate=spec.learning_rate,
        seed=spec.seed,
        data_seed=spec.seed,
        eval_strategy="steps",
        eval_steps=cfg.eval_steps,
        logging_strategy="steps",
        logging_steps=cfg.eval_steps,
        # checkpoints where the loss is logged, so that a resumed run's curves continue where they stopped
        save_strategy=cfg.save_strategy,
        save_steps=cfg.eval_steps,
        save_total_limit=1 if saving else None,  # on disk the last one; every one is in MLflow
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )


def _build_trainer(cfg: TrainConfig, args, model, tokenizer, train_ds, eval_ds: dict, resume: ResumePoint | None):
    """The Trainer with our callbacks in place of its printing ones and its own MLflowCallback."""
    from transformers import DataCollatorWithPadding, Trainer
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,  # a dict: the Trainer logs eval_<lang>_loss, eval_<lang>_accuracy, ...
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy,
    )
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    replace_mlflow_callback(trainer, mlflow_callback(resume.logged if resume else {}))
    trainer.add_callback(progress_callback(cfg, list(eval_ds)))
    for cb in cfg.callbacks:
        trainer.add_callback(cb)
    if cfg.save_strategy != "no":
        quiet_checkpoint_logging()
    return trainer


# --------------------------------------------------------------------------- the MLflow run


def _system_metrics_interval(cfg: TrainConfig) -> str:
    if cfg.system_metrics_interval is not None:
        return str(cfg.system_metrics_interval)
    return os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL") or str(DEFAULT_SYSTEM_METRICS_INTERVAL)


def _open_run(cfg: TrainConfig, spec: RunSpec, experiment_id: str, tags: dict, resume: ResumePoint | None):
    """Start (or with ``resume`` reopen) the MLflow run, with MLflow's system metrics monitor if asked.
    The run is opened here so that the artifacts land in the very run the Trainer's MLflowCallback
    logs to (the callback uses the active run and leaves it open)."""
    import mlflow

    if resume:
        start: dict = dict(run_id=resume.run_id)
    else:
        start = dict(experiment_id=experiment_id, run_name=spec.run_name, tags=tags)
    with _env(MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL=_system_metrics_interval(cfg)):
        return mlflow.start_run(log_system_metrics=cfg.system_metrics, **start)


def _log_own_params(cfg: TrainConfig, spec: RunSpec, source: str) -> None:
    """The params this package logs beside the Trainer's (``OWN_PARAMS``)."""
    import mlflow

    mlflow.log_params(
        {
            "model_name": spec.model_name,
            "num_train_samples": cfg.num_train_samples,
            "eval_languages": " ".join(cfg.eval_languages),
            "data_source": source,
            "max_seq_length": cfg.max_length,
        }
    )


def _train(cfg: TrainConfig, trainer, resume: ResumePoint | None) -> None:
    """``trainer.train()`` into the open run (from the checkpoint with ``resume``); Ctrl-C marks it KILLED."""
    import mlflow

    train_env = dict(
        HF_MLFLOW_LOG_ARTIFACTS="1" if cfg.save_strategy != "no" else "0",  # the callback logs each checkpoint
        MLFLOW_RUN_ID=None,  # the run is open: the callback must log into it, not start one
    )
    if resume:
        train_env["MLFLOW_MAX_LOG_PARAMS"] = "0"  # the run has its params since its first start
    try:
        with _env(**train_env):
            trainer.train(resume_from_checkpoint=str(resume.checkpoint) if resume else None)
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise


def _final_evaluation(cfg: TrainConfig, spec: RunSpec, trainer, eval_ds: dict, eval_raw: dict, out_dir: Path):
    """Predict each language once more: a confusion matrix image per language and a file of sample
    predictions, written under ``out_dir/artifacts`` and logged to the run. Returns {lang: accuracy}."""
    import mlflow
    import numpy as np

    from .eval_artifacts import confusion_matrix, save_confusion_matrix_png, write_sample_predictions

    artifact_dir = out_dir / "artifacts"
    samples, accuracy = {}, {}
    for lang, ds in eval_ds.items():
        pred = trainer.predict(ds, metric_key_prefix=f"final_{lang}")
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        ids = np.argmax(logits, axis=-1)
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs = shifted / shifted.sum(axis=-1, keepdims=True)
        cm = confusion_matrix(pred.label_ids, ids, len(LABEL_NAMES))
        accuracy[lang] = float(np.trace(cm) / max(cm.sum(), 1))
        save_confusion_matrix_png(
            cm,
            LABEL_NAMES,
            f"{spec.run_name} ({cfg.technique}) - {lang}",
            artifact_dir / f"confusion_matrix_{lang}.png",
        )
        rows = eval_raw[lang][: cfg.sample_predictions_per_language]
        samples[lang] = [
            (p, h, g, int(ids[k]), float(probs[k, ids[k]]))
            for k, (p, h, g) in enumerate(zip(rows["premise"], rows["hypothesis"], rows["label"]))
        ]
    write_sample_predictions(samples, accuracy, LABEL_NAMES, artifact_dir / "sample_predictions.txt")
    mlflow.log_artifacts(str(artifact_dir))
    return accuracy


def _parameter_changes(cfg: TrainConfig, trainable, before: dict, model, out_dir: Path) -> tuple[list, list]:
    """Which parameters training changed, and which it did not; also written to parameter_changes.json."""
    after = parameter_digests(model)
    changed = [n for n in after if after[n] != before[n]]
    unchanged = [n for n in after if after[n] == before[n]]
    record = {"technique": cfg.technique, "trainable": trainable, "changed": changed, "unchanged": unchanged}
    (out_dir / "parameter_changes.json").write_text(json.dumps(record, indent=1))
    return changed, unchanged


# --------------------------------------------------------------------------- one run


def train_one(
    cfg: TrainConfig,
    spec: RunSpec,
    train_raw,
    eval_raw: dict,
    source: str = "local",
    sweep: str = "",
    resume: ResumePoint | None = None,
) -> RunResult:
    """One MLflow run: train ``spec`` with the configured technique, evaluate, log artifacts.
    With ``resume``: continue that run from its checkpoint, into the same MLflow run."""
    with _cpu_threads(cfg, spec.model_name):
        return _train_one(cfg, spec, train_raw, eval_raw, source, sweep, resume)


def _train_one(cfg, spec, train_raw, eval_raw, source, sweep, resume: ResumePoint | None) -> RunResult:
    tokenizer, model = load_model(cfg, spec.model_name, spec.seed)
    trainable = freeze_for_technique(model, cfg.technique)
    train_ds, eval_ds = _encode(tokenizer, train_raw, eval_raw, cfg.max_length)
    out_dir = run_dir(cfg, spec)
    trainer = _build_trainer(cfg, _training_arguments(cfg, spec, out_dir), model, tokenizer, train_ds, eval_ds, resume)

    exp_name = experiment_name(cfg.technique)
    experiment_id = get_or_create_experiment(exp_name)
    before = parameter_digests(model)
    what = f"resuming run {resume.run_id} from step {resume.step}" if resume else f"{len(train_ds)} English pairs"
    say(
        cfg,
        f"[{cfg.technique}] {spec.run_name}: {what}, {cfg.num_train_epochs:g} epoch(s), "
        f"evaluating {' '.join(eval_ds)} every {cfg.eval_steps} steps on {trainer.args.device}",
    )
    tags = {TAG_TECHNIQUE: cfg.technique, TAG_SWEEP: sweep, TAG_CONFIG: config_id(cfg, spec, source)}
    with _open_run(cfg, spec, experiment_id, tags, resume) as run:
        if not resume:
            _log_own_params(cfg, spec, source)
        record_provenance(run, new_run=not resume)
        _train(cfg, trainer, resume)
        if cfg.save_model:
            trainer.save_model(str(out_dir / "model"))
        accuracy = _final_evaluation(cfg, spec, trainer, eval_ds, eval_raw, out_dir)

    changed, unchanged = _parameter_changes(cfg, trainable, before, model, out_dir)
    accs = "  ".join(f"{k} {v:.3f}" for k, v in accuracy.items())
    say(cfg, f"[{cfg.technique}] {spec.run_name}: done, run {run.info.run_id}; final accuracy  {accs}")
    result = RunResult(
        model_name=spec.model_name,
        run_id=run.info.run_id,
        experiment_id=experiment_id,
        experiment_name=exp_name,
        output_dir=out_dir,
        trainable_parameters=trainable,
        changed_parameters=changed,
        unchanged_parameters=unchanged,
        accuracy=accuracy,
        run_name=spec.run_name,
        status="resumed" if resume else "trained",
    )
    del trainer, model
    gc.collect()
    return result
