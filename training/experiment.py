"""Zero-shot cross-lingual XNLI runs: train on English, evaluate on every requested language.

Training goes through the Hugging Face ``Trainer`` with transformers' own MLflow integration
(``report_to="mlflow"``), so the runs carry exactly what users' runs carry: TrainingArguments and
the model config as params; ``loss``, ``learning_rate``, ``grad_norm``, ``epoch`` and
``eval_<lang>_accuracy`` / ``eval_<lang>_loss`` / ... as metrics. One run per model, named after it,
in the experiment ``xnli_<technique>``. At the end of a run a confusion matrix per language and
a text file of sample predictions are logged into the same run.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from .data import LABEL_NAMES, LANGUAGES, TECHNIQUES, XNLI_LANGUAGES, local_languages, load_xnli
from .tiny_models import TINY_MODEL_NAMES, ensure_tiny_model, is_tiny

OFFLINE_HINT = (
    "for offline runs use the tiny local models and the shipped data: --model-names "
    + " ".join(TINY_MODEL_NAMES)
)


class TrainingError(Exception):
    """An error that the command line reports as one line (exit code 2), without a traceback."""


class HubUnavailableError(TrainingError):
    """Something had to come from the Hugging Face hub and could not."""


@dataclass
class TrainConfig:
    technique: str
    model_names: list[str]
    eval_languages: list[str] = field(default_factory=lambda: list(LANGUAGES))
    output_dir: Path = Path("logs")
    batch_size: int = 8
    num_train_samples: int = 15000
    num_train_epochs: float = 3
    eval_steps: int = 500
    learning_rate: float = 5e-5
    seed: int = 73
    tracking_uri: str | None = None  # None: the file store <output_dir>/mlruns
    system_metrics: bool | None = None  # None: MLflow's default (env MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING)
    data_source: str = "auto"  # auto: the shipped data when every model is a tiny one, else the hub's XNLI
    max_length: int = 128
    # torch CPU threads while training; None: 1 for the tiny models (their matrices are far too small
    # to gain from threads, and on a busy machine threads make them many times slower), else torch's default
    cpu_threads: int | None = None
    eval_batch_size: int = 64
    save_model: bool = False  # save the trained model (and tokenizer) into <output_dir>/<technique>/<model>/model
    sample_predictions_per_language: int = 5
    verbose: bool = True


@dataclass
class RunResult:
    model_name: str
    run_id: str
    experiment_id: str
    experiment_name: str
    output_dir: Path
    trainable_parameters: list[str]
    changed_parameters: list[str]
    unchanged_parameters: list[str]
    accuracy: dict[str, float]


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


# --------------------------------------------------------------------------- runs


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
    source = choose_data_source(cfg)
    known = local_languages("validation") if source == "local" else list(XNLI_LANGUAGES)
    unknown = [lang for lang in cfg.eval_languages if lang not in known]
    if unknown:
        where = "the shipped data set" if source == "local" else "XNLI"
        raise TrainingError(f"{where} has no {', '.join(unknown)}; choose among {' '.join(known)}")
    for name, value in (("batch size", cfg.batch_size), ("number of training samples", cfg.num_train_samples),
                        ("eval steps", cfg.eval_steps)):
        if value < 1:
            raise TrainingError(f"the {name} must be at least 1")
    if cfg.num_train_epochs <= 0 or cfg.learning_rate <= 0:
        raise TrainingError("the number of epochs and the learning rate must be positive")
    return source


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


def train_one(cfg: TrainConfig, model_name: str, train_raw, eval_raw: dict) -> RunResult:
    """One MLflow run: train ``model_name`` with the configured technique, evaluate, log artifacts."""
    import mlflow
    import numpy as np
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from .artifacts import confusion_matrix, save_confusion_matrix_png, write_sample_predictions

    tokenizer, model = _load_model(model_name, cfg.seed)
    trainable = freeze_for_technique(model, cfg.technique)

    max_length = min(cfg.max_length, getattr(tokenizer, "model_max_length", cfg.max_length) or cfg.max_length)

    def encode(batch):
        return tokenizer(batch["premise"], batch["hypothesis"], truncation=True, max_length=max_length)

    columns = ["premise", "hypothesis"]
    train_ds = train_raw.map(encode, batched=True, remove_columns=columns)
    eval_ds = {lang: ds.map(encode, batched=True, remove_columns=columns) for lang, ds in eval_raw.items()}

    out_dir = Path(cfg.output_dir) / cfg.technique / _safe_name(model_name)
    args = TrainingArguments(
        output_dir=str(out_dir),
        run_name=model_name,
        report_to=["mlflow"],
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        num_train_epochs=cfg.num_train_epochs,
        learning_rate=cfg.learning_rate,
        seed=cfg.seed,
        data_seed=cfg.seed,
        eval_strategy="steps",
        eval_steps=cfg.eval_steps,
        logging_strategy="steps",
        logging_steps=cfg.eval_steps,
        save_strategy="no",
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
    trainer.add_callback(_progress_callback(cfg, list(eval_ds)))

    exp_name = experiment_name(cfg.technique)
    experiment_id = get_or_create_experiment(exp_name)
    before = parameter_digests(model)
    device = str(trainer.args.device)
    _log(cfg, f"[{cfg.technique}] {model_name}: {len(train_ds)} English pairs, {cfg.num_train_epochs:g} epoch(s), "
              f"evaluating {' '.join(eval_ds)} every {cfg.eval_steps} steps on {device}")
    # The run is opened here so that the artifacts land in the very run the Trainer's MLflowCallback
    # logs to (the callback uses the active run and leaves it open).
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=model_name, log_system_metrics=cfg.system_metrics
    ) as run:
        trainer.train()
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
                cm, LABEL_NAMES, f"{model_name} ({cfg.technique}) - {lang}", artifact_dir / f"confusion_matrix_{lang}.png"
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
        json.dumps({"technique": cfg.technique, "trainable": trainable, "changed": changed, "unchanged": unchanged},
                   indent=1)
    )
    accs = "  ".join(f"{k} {v:.3f}" for k, v in accuracy.items())
    _log(cfg, f"[{cfg.technique}] {model_name}: done, run {run.info.run_id}; final accuracy  {accs}")
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
    )
    del trainer, model
    gc.collect()
    return result


def run(cfg: TrainConfig) -> list[RunResult]:
    """Train every model of ``cfg`` with ``cfg.technique``: one MLflow run each."""
    source = validate(cfg)
    _log(cfg, f"data: {'the shipped offline data set' if source == 'local' else 'XNLI from the hub'}")
    load_args = (source, cfg.eval_languages, cfg.num_train_samples, cfg.seed)
    if source == "local":
        train_raw, eval_raw = load_xnli(*load_args)
    else:
        train_raw, eval_raw = _from_hub("the XNLI data set", load_xnli, *load_args)
    # Fail before any training if a model cannot be had (all models, not just the first).
    from transformers import AutoConfig

    for name in cfg.model_names:
        if is_tiny(name):
            ensure_tiny_model(name)
        else:
            _from_hub(f"the model {name!r}", AutoConfig.from_pretrained, name)

    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    with tracking_uri_set_to(resolve_tracking_uri(cfg.tracking_uri, cfg.output_dir)) as uri:
        _log(cfg, f"MLflow tracking URI: {uri}")
        return [_with_threads(cfg, name, train_one, cfg, name, train_raw, eval_raw) for name in cfg.model_names]


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
