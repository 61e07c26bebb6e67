"""Zero-shot cross-lingual XNLI runs: train on English, evaluate on every requested language.

Training goes through the Hugging Face ``Trainer`` with transformers' own MLflow integration
(``report_to="mlflow"``), so the runs carry exactly what users' runs carry: TrainingArguments and
the model config as params; ``loss``, ``learning_rate``, ``grad_norm``, ``epoch`` and
``eval_<lang>_accuracy`` / ``eval_<lang>_loss`` / ... as metrics, in the experiment
``xnli_<technique>``. At the end of a run a confusion matrix per language and a text file of sample
predictions are logged into the same run.

One call trains a grid: models x learning rates x batch sizes x seeds, one MLflow run each, tagged
with the technique, the sweep id and the configuration id; a configuration already FINISHED in the
store is skipped, so running a sweep again resumes it. Checkpoints (``save_strategy``) are logged by
transformers' MLflowCallback (``HF_MLFLOW_LOG_ARTIFACTS``), which with MLflow 3 makes each one a
logged model ``checkpoint-<step>`` of the run; ``resume=RUN_ID`` continues an interrupted run from
its last one, into the same MLflow run. MLflow's system metrics monitor runs beside each run unless
turned off.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from .data import LABEL_NAMES, LANGUAGES, TECHNIQUES, XNLI_LANGUAGES, load_xnli, local_languages
from .tiny_models import TINY_MODEL_NAMES, ensure_tiny_model, is_tiny

OFFLINE_HINT = "for offline runs use the tiny local models and the shipped data: --model-names " + " ".join(
    TINY_MODEL_NAMES
)
SAVE_STRATEGIES = ("no", "steps", "epoch")
# MLflow samples every 10 s by default and logs nothing for a run shorter than one interval.
DEFAULT_SYSTEM_METRICS_INTERVAL = 2.0
SYSTEM_METRICS_PREFIX = "system/"
# Tags set on every run, and the params this package logs beside the Trainer's (what --resume rebuilds
# a run's configuration from, with the Trainer's learning_rate, per_device_train_batch_size, seed, ...).
TAG_TECHNIQUE, TAG_SWEEP, TAG_CONFIG = "technique", "sweep_id", "config_id"
OWN_PARAMS = ("model_name", "num_train_samples", "eval_languages", "data_source", "max_seq_length")


class TrainingError(Exception):
    """An error that the command line reports as one line (exit code 2), without a traceback."""


class HubUnavailableError(TrainingError):
    """Something had to come from the Hugging Face hub and could not."""


@dataclass
class TrainConfig:
    technique: str
    model_names: list[str] = field(default_factory=list)  # may be empty with ``resume``
    eval_languages: list[str] = field(default_factory=lambda: list(LANGUAGES))
    output_dir: Path = Path("logs")
    # one value, or several: the grid is model_names x learning_rate x batch_size x seed
    batch_size: int | list[int] = 8
    num_train_samples: int = 15000
    num_train_epochs: float = 3
    eval_steps: int = 500
    learning_rate: float | list[float] = 5e-5
    seed: int | list[int] = 73
    tracking_uri: str | None = None  # None: the file store <output_dir>/mlruns
    system_metrics: bool | None = True  # None: MLflow's default (env MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING)
    # seconds between samples; None: MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL, else DEFAULT_SYSTEM_METRICS_INTERVAL
    system_metrics_interval: float | None = None
    data_source: str = "auto"  # auto: the shipped data when every model is a tiny one, else the hub's XNLI
    save_strategy: str = "no"  # steps (every eval_steps) | epoch | no: checkpoints logged to the run
    resume: str | None = None  # an MLflow run id: continue that run from its last checkpoint
    max_length: int = 128
    # torch CPU threads while training; None: 1 for the tiny models (their matrices are far too small
    # to gain from threads, and on a busy machine threads make them many times slower), else torch's default
    cpu_threads: int | None = None
    eval_batch_size: int = 64
    save_model: bool = False  # save the trained model (and tokenizer) into <output_dir>/<technique>/<run>/model
    sample_predictions_per_language: int = 5
    callbacks: list = field(default_factory=list)  # more transformers TrainerCallbacks, run after ours
    verbose: bool = True


@dataclass(frozen=True)
class RunSpec:
    """One point of the grid."""

    model_name: str
    learning_rate: float
    batch_size: int
    seed: int
    run_name: str


@dataclass
class RunResult:
    model_name: str
    run_id: str
    experiment_id: str
    experiment_name: str
    output_dir: Path
    trainable_parameters: list[str] = field(default_factory=list)
    changed_parameters: list[str] = field(default_factory=list)
    unchanged_parameters: list[str] = field(default_factory=list)
    accuracy: dict[str, float] = field(default_factory=dict)
    run_name: str = ""
    status: str = "trained"  # trained | resumed | skipped (already FINISHED in the store)


# --------------------------------------------------------------------------- MLflow


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


def experiment_name(technique: str) -> str:
    return f"xnli_{technique}"


# --------------------------------------------------------------------------- hub access


# Set by the command line when its quick check found the hub unreachable (it then switched the
# Hugging Face libraries to offline mode, so that they fail at once instead of retrying).
HUB_UNREACHABLE = False


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check of the hub endpoint (so that an offline machine fails fast, not after retries)."""
    import socket

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a proxy decides; let the libraries try
    endpoint = urlparse(hub_endpoint())
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _is_hub_error(exc: BaseException) -> bool:
    module = type(exc).__module__ or ""
    return isinstance(exc, OSError) or module.split(".")[0] in (
        "huggingface_hub",
        "datasets",
        "requests",
        "httpx",
        "urllib3",
    )


def _one_line(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _from_hub(what: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except TrainingError:
        raise
    except Exception as exc:
        if not _is_hub_error(exc):
            raise
        if HUB_UNREACHABLE:
            detail = f"{hub_endpoint()} cannot be reached from here, and it is not in the local cache"
        else:
            detail = f"{type(exc).__name__}: {_one_line(exc)}"
        raise HubUnavailableError(f"cannot get {what} from the Hugging Face hub ({detail}); {OFFLINE_HINT}") from exc


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


def _safe_name(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z._-]+", "__", name).strip("_") or "model"


def _log(cfg: TrainConfig, msg: str) -> None:
    if cfg.verbose:
        print(msg, file=sys.stderr, flush=True)


def _progress_callback(cfg: TrainConfig, langs):
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """One short line per logging step instead of the Trainer's dict dumps."""

        def __init__(self):
            self.acc = {}

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" in logs:
                _log(cfg, f"  step {state.global_step}/{state.max_steps}  loss {logs['loss']:.4f}")
            for lang in langs:
                if f"eval_{lang}_accuracy" in logs:
                    self.acc[lang] = logs[f"eval_{lang}_accuracy"]
            if len(self.acc) == len(langs):
                accs = "  ".join(f"{k} {v:.3f}" for k, v in self.acc.items())
                _log(cfg, f"  step {state.global_step}/{state.max_steps}  accuracy  {accs}")
                self.acc = {}

    return Progress()


def _accuracy(eval_pred):
    import numpy as np

    logits, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


# --------------------------------------------------------------------------- the grid


def _values(x) -> list:
    """One value or several, duplicates dropped (first kept)."""
    values = [x] if isinstance(x, (int, float, str)) else list(x)
    return list(dict.fromkeys(values))


def format_lr(lr: float) -> str:
    return f"{lr:g}"  # 0.001, 0.0003, 5e-05


def plan(cfg: TrainConfig) -> list[RunSpec]:
    """The grid, models x learning rates x batch sizes x seeds, in that order. A run is named after its
    model alone when each model has one configuration (as a single run always was), else
    ``<model>-lr<lr>-bs<bs>-s<seed>``."""
    lrs, bss, seeds = _values(cfg.learning_rate), _values(cfg.batch_size), _values(cfg.seed)
    sweep = len(lrs) > 1 or len(bss) > 1 or len(seeds) > 1
    specs = []
    for model in _values(cfg.model_names):
        for lr in lrs:
            for bs in bss:
                for seed in seeds:
                    name = f"{model}-lr{format_lr(lr)}-bs{bs}-s{seed}" if sweep else model
                    specs.append(RunSpec(model, float(lr), int(bs), int(seed), name))
    return specs


def _shared_settings(cfg: TrainConfig, source: str) -> dict:
    return {
        "technique": cfg.technique,
        "num_train_samples": int(cfg.num_train_samples),
        "num_train_epochs": float(cfg.num_train_epochs),
        "eval_steps": int(cfg.eval_steps),
        "eval_languages": sorted(cfg.eval_languages),
        "data_source": source,
        "max_length": int(cfg.max_length),
    }


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def config_id(cfg: TrainConfig, spec: RunSpec, source: str) -> str:
    """What makes two runs the same experiment (not where they are written, nor how they are watched)."""
    return _digest(
        {
            **_shared_settings(cfg, source),
            "model_name": spec.model_name,
            "learning_rate": spec.learning_rate,
            "batch_size": spec.batch_size,
            "seed": spec.seed,
        }
    )


def sweep_id(cfg: TrainConfig, source: str) -> str:
    """The same for the same grid, so a sweep run again (to finish it) keeps its id."""
    return _digest(
        {
            **_shared_settings(cfg, source),
            "model_names": _values(cfg.model_names),
            "learning_rates": [float(v) for v in _values(cfg.learning_rate)],
            "batch_sizes": [int(v) for v in _values(cfg.batch_size)],
            "seeds": [int(v) for v in _values(cfg.seed)],
        }
    )[:8]


# --------------------------------------------------------------------------- checks


def choose_data_source(cfg: TrainConfig) -> str:
    if cfg.data_source not in ("auto", "local", "hub"):
        raise TrainingError(f"unknown data source {cfg.data_source!r} (auto, local or hub)")
    if cfg.data_source != "auto":
        return cfg.data_source
    return "local" if all(is_tiny(m) for m in cfg.model_names) else "hub"


def validate(cfg: TrainConfig) -> str:
    if cfg.technique not in TECHNIQUES:
        raise TrainingError(f"unknown technique {cfg.technique!r}; choose one of {', '.join(TECHNIQUES)}")
    if not cfg.model_names:
        raise TrainingError("no model names given")
    if not cfg.eval_languages:
        raise TrainingError("no evaluation languages given")
    if cfg.save_strategy not in SAVE_STRATEGIES:
        raise TrainingError(f"unknown save strategy {cfg.save_strategy!r}; choose one of {', '.join(SAVE_STRATEGIES)}")
    source = choose_data_source(cfg)
    known = local_languages("validation") if source == "local" else list(XNLI_LANGUAGES)
    unknown = [lang for lang in cfg.eval_languages if lang not in known]
    if unknown:
        where = "the shipped data set" if source == "local" else "XNLI"
        raise TrainingError(f"{where} has no {', '.join(unknown)}; choose among {' '.join(known)}")
    for name, value in (("number of training samples", cfg.num_train_samples), ("eval steps", cfg.eval_steps)):
        if value < 1:
            raise TrainingError(f"the {name} must be at least 1")
    if any(bs < 1 for bs in _values(cfg.batch_size)):
        raise TrainingError("batch sizes must be at least 1")
    if cfg.num_train_epochs <= 0 or any(not lr > 0 or math.isinf(lr) for lr in _values(cfg.learning_rate)):
        raise TrainingError("the number of epochs and the learning rates must be positive")
    if cfg.system_metrics_interval is not None and not cfg.system_metrics_interval > 0:
        raise TrainingError("the system metrics interval must be positive")
    return source


# --------------------------------------------------------------------------- one run


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


def _load_model(model_name: str, seed: int):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    path = str(ensure_tiny_model(model_name)) if is_tiny(model_name) else model_name
    tokenizer = _from_hub(f"the tokenizer of {model_name!r}", AutoTokenizer.from_pretrained, path)
    set_seed(seed)  # the classification head is initialised here: seed it
    model = _from_hub(
        f"the model {model_name!r}",
        AutoModelForSequenceClassification.from_pretrained,
        path,
        num_labels=len(LABEL_NAMES),
        id2label=dict(enumerate(LABEL_NAMES)),
        label2id={name: i for i, name in enumerate(LABEL_NAMES)},
    )
    return tokenizer, model


@dataclass
class _Resume:
    run_id: str
    checkpoint: Path  # a local copy of the run's last checkpoint
    step: int  # the checkpoint's global step
    logged: dict[str, int]  # metric key -> the last step MLflow holds it at


def _mlflow_callback(logged: dict[str, int]):
    """transformers' own MLflowCallback, with two additions: the metrics logged so far are flushed to
    the store before each checkpoint is logged (the callback logs them asynchronously, and a process
    killed after logging a checkpoint must not leave the store holding it without the steps before
    it); and on a resumed run, points MLflow already holds (``logged``: key -> last step; trained after
    the last checkpoint, then interrupted) are not logged a second time when the Trainer trains those
    steps again."""
    import mlflow
    from transformers.integrations import MLflowCallback

    class CheckpointedMLflowCallback(MLflowCallback):
        def on_log(self, args, state, control, logs, model=None, **kwargs):
            step = state.global_step
            fresh = {k: v for k, v in logs.items() if logged.get(_metric_key(k), -1) < step}
            if logs and not fresh:
                if not self._initialized:
                    self.setup(args, state, model)
                return
            super().on_log(args, state, control, fresh, model=model, **kwargs)

        def on_save(self, args, state, control, **kwargs):
            if self._initialized and self._log_artifacts:
                mlflow.flush_async_logging()
            super().on_save(args, state, control, **kwargs)

    return CheckpointedMLflowCallback()


def _metric_key(key: str) -> str:
    return re.sub(r"[^0-9A-Za-z_\-\.\ :/]", "_", key)  # what MLflowCallback.on_log makes of a key


def _replace_mlflow_callback(trainer, replacement) -> None:
    from transformers.integrations import MLflowCallback

    callbacks = trainer.callback_handler.callbacks
    [index] = [i for i, cb in enumerate(callbacks) if type(cb) is MLflowCallback]
    callbacks[index] = replacement


def _quiet_checkpoint_logging():
    """MLflow's logged-model calls (one per checkpoint) warn about things the Trainer decides."""
    import logging

    for name in ("mlflow.models.model", "mlflow.pyfunc"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _system_metrics_interval(cfg: TrainConfig) -> str:
    if cfg.system_metrics_interval is not None:
        return str(cfg.system_metrics_interval)
    return os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL") or str(DEFAULT_SYSTEM_METRICS_INTERVAL)


def train_one(
    cfg: TrainConfig,
    spec: RunSpec,
    train_raw,
    eval_raw: dict,
    source: str = "local",
    sweep: str = "",
    resume: _Resume | None = None,
) -> RunResult:
    """One MLflow run: train ``spec`` with the configured technique, evaluate, log artifacts.
    With ``resume``: continue that run from its checkpoint, into the same MLflow run."""
    import mlflow
    import numpy as np
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from .artifacts import confusion_matrix, save_confusion_matrix_png, write_sample_predictions

    model_name = spec.model_name
    tokenizer, model = _load_model(model_name, spec.seed)
    trainable = freeze_for_technique(model, cfg.technique)

    max_length = min(cfg.max_length, getattr(tokenizer, "model_max_length", cfg.max_length) or cfg.max_length)

    def encode(batch):
        return tokenizer(batch["premise"], batch["hypothesis"], truncation=True, max_length=max_length)

    columns = ["premise", "hypothesis"]
    train_ds = train_raw.map(encode, batched=True, remove_columns=columns)
    eval_ds = {lang: ds.map(encode, batched=True, remove_columns=columns) for lang, ds in eval_raw.items()}

    out_dir = Path(cfg.output_dir) / cfg.technique / _safe_name(spec.run_name)
    saving = cfg.save_strategy != "no"
    args = TrainingArguments(
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
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,  # a dict: the Trainer logs eval_<lang>_loss, eval_<lang>_accuracy, ...
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=_accuracy,
    )
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    _replace_mlflow_callback(trainer, _mlflow_callback(resume.logged if resume else {}))
    trainer.add_callback(_progress_callback(cfg, list(eval_ds)))
    for cb in cfg.callbacks:
        trainer.add_callback(cb)
    if saving:
        _quiet_checkpoint_logging()

    exp_name = experiment_name(cfg.technique)
    experiment_id = get_or_create_experiment(exp_name)
    before = parameter_digests(model)
    device = str(trainer.args.device)
    what = f"resuming run {resume.run_id} from step {resume.step}" if resume else f"{len(train_ds)} English pairs"
    _log(
        cfg,
        f"[{cfg.technique}] {spec.run_name}: {what}, {cfg.num_train_epochs:g} epoch(s), "
        f"evaluating {' '.join(eval_ds)} every {cfg.eval_steps} steps on {device}",
    )
    if resume:
        start = dict(run_id=resume.run_id)
    else:
        start = dict(
            experiment_id=experiment_id,
            run_name=spec.run_name,
            tags={TAG_TECHNIQUE: cfg.technique, TAG_SWEEP: sweep, TAG_CONFIG: config_id(cfg, spec, source)},
        )
    # The run is opened here so that the artifacts land in the very run the Trainer's MLflowCallback
    # logs to (the callback uses the active run and leaves it open).
    with _env(MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL=_system_metrics_interval(cfg)):
        active = mlflow.start_run(log_system_metrics=cfg.system_metrics, **start)
    with active as run:
        if not resume:
            mlflow.log_params(
                {
                    "model_name": model_name,
                    "num_train_samples": cfg.num_train_samples,
                    "eval_languages": " ".join(cfg.eval_languages),
                    "data_source": source,
                    "max_seq_length": cfg.max_length,
                }
            )
        train_env = dict(
            HF_MLFLOW_LOG_ARTIFACTS="1" if saving else "0",  # the callback logs each checkpoint
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
        if cfg.save_model:
            trainer.save_model(str(out_dir / "model"))

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

    after = parameter_digests(model)
    changed = [n for n in after if after[n] != before[n]]
    unchanged = [n for n in after if after[n] == before[n]]
    (out_dir / "parameter_changes.json").write_text(
        json.dumps(
            {"technique": cfg.technique, "trainable": trainable, "changed": changed, "unchanged": unchanged}, indent=1
        )
    )
    accs = "  ".join(f"{k} {v:.3f}" for k, v in accuracy.items())
    _log(cfg, f"[{cfg.technique}] {spec.run_name}: done, run {run.info.run_id}; final accuracy  {accs}")
    result = RunResult(
        model_name=model_name,
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


# --------------------------------------------------------------------------- sweeps


def _load_data(cfg: TrainConfig, source: str, seed: int):
    load_args = (source, cfg.eval_languages, cfg.num_train_samples, seed)
    if source == "local":
        return load_xnli(*load_args)
    return _from_hub("the XNLI data set", load_xnli, *load_args)


def _check_models(names) -> None:
    """Fail before any training if a model cannot be had (all models, not just the first)."""
    from transformers import AutoConfig

    for name in dict.fromkeys(names):
        if is_tiny(name):
            ensure_tiny_model(name)
        else:
            _from_hub(f"the model {name!r}", AutoConfig.from_pretrained, name)


def _all_runs(client, experiment_id: str, filter_string: str = "") -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _steps_of(spec: RunSpec, cfg: TrainConfig) -> float:
    return math.ceil(cfg.num_train_samples / spec.batch_size) * cfg.num_train_epochs


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class _Progress:
    """One line per run: n/N, the run's name, and the time the sweep has left (from the seconds per
    training step so far). Printed unless quiet, and on a terminal even when quiet."""

    def __init__(self, cfg: TrainConfig, specs: list[RunSpec], todo: set[RunSpec]):
        self.cfg, self.n = cfg, len(specs)
        self.show = cfg.verbose or sys.stderr.isatty()
        self.left_steps = sum(_steps_of(s, cfg) for s in todo)
        self.done_steps, self.seconds = 0.0, 0.0

    def line(self, i: int, spec: RunSpec, msg: str) -> None:
        if self.show:
            print(f"[{i}/{self.n}] {spec.run_name} ({self.cfg.technique}): {msg}", file=sys.stderr, flush=True)

    def training(self, i: int, spec: RunSpec) -> None:
        if self.done_steps:
            left = f"about {_duration(self.seconds / self.done_steps * self.left_steps)} left"
        else:
            left = "time left known after this run"
        self.line(i, spec, f"training; {left}")

    def trained(self, spec: RunSpec, seconds: float) -> None:
        steps = _steps_of(spec, self.cfg)
        self.done_steps += steps
        self.left_steps -= steps
        self.seconds += seconds


def _store_exists(uri: str) -> bool:
    """False for a file store that is not there yet (MLflow's client would create it just by reading)."""
    if not is_file_store(uri):
        return True
    path = unquote(urlparse(uri).path) if uri.startswith("file:") else uri
    return Path(path).exists()


def _configs_in_store(uri: str, exp_name: str) -> tuple[dict, dict]:
    """{config id: run id} of the FINISHED runs of experiment ``exp_name``, and of the others."""
    from mlflow import MlflowClient

    finished, unfinished = {}, {}
    if not _store_exists(uri):
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


def run(cfg: TrainConfig) -> list[RunResult]:
    """Train the grid of ``cfg`` with ``cfg.technique``: one MLflow run per configuration, skipping those
    already FINISHED in the store. With ``cfg.resume``: continue that one run instead."""
    if cfg.resume:
        return [resume_run(cfg)]
    source = validate(cfg)
    specs = plan(cfg)
    sweep = sweep_id(cfg, source)
    exp_name = experiment_name(cfg.technique)
    with tracking_uri_set_to(resolve_tracking_uri(cfg.tracking_uri, cfg.output_dir)) as uri:
        _log(cfg, f"MLflow tracking URI: {uri}")
        finished, unfinished = _configs_in_store(uri, exp_name)
        cids = {spec: config_id(cfg, spec, source) for spec in specs}
        todo = [spec for spec in specs if cids[spec] not in finished]
        data: dict[int, tuple] = {}
        if todo:  # everything that can fail before anything is written
            _log(
                cfg,
                f"data: {'the shipped offline data set' if source == 'local' else 'XNLI from the hub'}; "
                f"sweep {sweep}: {len(specs)} run(s), {len(specs) - len(todo)} already finished",
            )
            data[todo[0].seed] = _load_data(cfg, source, todo[0].seed)
            _check_models(spec.model_name for spec in todo)
            Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
            experiment_id = get_or_create_experiment(exp_name)
        else:
            from mlflow import MlflowClient

            experiment_id = MlflowClient().get_experiment_by_name(exp_name).experiment_id
        progress = _Progress(cfg, specs, set(todo))
        results = []
        for i, spec in enumerate(specs, 1):
            cid = cids[spec]
            if cid in finished:
                progress.line(i, spec, f"already FINISHED in run {finished[cid]}; skipped")
                results.append(
                    RunResult(
                        spec.model_name,
                        finished[cid],
                        experiment_id,
                        exp_name,
                        Path(cfg.output_dir) / cfg.technique / _safe_name(spec.run_name),
                        run_name=spec.run_name,
                        status="skipped",
                    )
                )
                continue
            if cid in unfinished:
                _log(
                    cfg,
                    f"  (run {unfinished[cid]} of this configuration did not finish; a new run starts. "
                    f"`--resume {unfinished[cid]}` continues it instead, from its last checkpoint)",
                )
            progress.training(i, spec)
            if spec.seed not in data:
                data[spec.seed] = _load_data(cfg, source, spec.seed)
            started = time.monotonic()
            results.append(_with_threads(cfg, spec.model_name, train_one, cfg, spec, *data[spec.seed], source, sweep))
            progress.trained(spec, time.monotonic() - started)
        return results


# --------------------------------------------------------------------------- resume


def _config_from_run(cfg: TrainConfig, run) -> tuple[TrainConfig, RunSpec]:
    """The configuration a run was trained with, from its params (the Trainer's and ours)."""
    from dataclasses import replace

    p, rid = run.data.params, run.info.run_id
    missing = [
        k
        for k in (
            *OWN_PARAMS,
            "learning_rate",
            "per_device_train_batch_size",
            "seed",
            "num_train_epochs",
            "eval_steps",
            "save_strategy",
        )
        if k not in p
    ]
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
        raise TrainingError(f"cannot read run {rid}'s configuration from its params: {_one_line(exc)}") from exc
    return rcfg, spec


def _latest_checkpoint(client, run, dest: Path) -> tuple[int, Path]:
    """Download the run's last complete checkpoint (a logged model ``checkpoint-<step>``) into ``dest``."""
    import yaml
    from mlflow.artifacts import download_artifacts
    from mlflow.entities import LoggedModelStatus

    rid = run.info.run_id
    checkpoints = []
    token = None
    while True:
        page = client.search_logged_models(
            [run.info.experiment_id], filter_string=f"source_run_id = '{rid}'", page_token=token
        )
        checkpoints += [m for m in page if re.fullmatch(r"checkpoint-\d+", m.name)]
        token = page.token
        if not token:
            break
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


def resume_run(cfg: TrainConfig) -> RunResult:
    """Continue run ``cfg.resume`` from its last checkpoint, into the same MLflow run."""
    rid = cfg.resume
    with tracking_uri_set_to(resolve_tracking_uri(cfg.tracking_uri, cfg.output_dir)) as uri:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        _log(cfg, f"MLflow tracking URI: {uri}")
        if not _store_exists(uri):
            raise TrainingError(f"there is no MLflow store at {uri}")
        client = MlflowClient()
        try:
            run = client.get_run(rid)
        except MlflowException:
            raise TrainingError(f"there is no run {rid!r} in {uri}") from None
        tags = run.data.tags
        if run.info.lifecycle_stage != "active":
            raise TrainingError(f"run {rid} is deleted; restore it first")
        if TAG_CONFIG not in tags or TAG_TECHNIQUE not in tags:
            raise TrainingError(f"run {rid} was not trained by this command (it has no {TAG_CONFIG} tag)")
        if tags[TAG_TECHNIQUE] != cfg.technique:
            raise TrainingError(
                f"run {rid} is a {tags[TAG_TECHNIQUE]} run: python -m training {tags[TAG_TECHNIQUE]} --resume {rid}"
            )
        if run.info.status == "FINISHED":
            raise TrainingError(f"run {rid} ({run.info.run_name}) is FINISHED: nothing to resume")
        rcfg, spec = _config_from_run(cfg, run)
        source = validate(rcfg)
        if config_id(rcfg, spec, source) != tags[TAG_CONFIG]:
            raise TrainingError(
                f"run {rid}'s params do not match its {TAG_CONFIG} tag; cannot rebuild its configuration"
            )
        out_dir = Path(cfg.output_dir) / cfg.technique / _safe_name(spec.run_name)
        step, checkpoint = _latest_checkpoint(client, run, out_dir / ".resume")
        try:
            _check_models([spec.model_name])
            data = _load_data(rcfg, source, spec.seed)
            resume = _Resume(rid, checkpoint, step, _logged_steps(client, run))
            return _with_threads(
                rcfg, spec.model_name, train_one, rcfg, spec, *data, source, tags.get(TAG_SWEEP, ""), resume
            )
        finally:
            shutil.rmtree(out_dir / ".resume", ignore_errors=True)


def _with_threads(cfg: TrainConfig, model_name: str, fn, *args):
    import torch

    threads = cfg.cpu_threads or (1 if is_tiny(model_name) and not torch.cuda.is_available() else None)
    if not threads:
        return fn(*args)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(previous)
