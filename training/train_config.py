"""What a training command is given and what it gives back: ``TrainConfig`` (checked by ``validate``),
one point of its grid (``RunSpec``), one run's outcome (``RunResult``), the errors the command line
reports as one line, and the names every run carries (tags, params).

Light: imports nothing heavy, so the command line can read it before the Hugging Face libraries load.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .data import LANGUAGES, TECHNIQUES, XNLI_LANGUAGES, local_languages
from .tiny_models import is_tiny

SAVE_STRATEGIES = ("no", "steps", "epoch")
DATA_SOURCES = ("auto", "local", "hub")
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
    # False when a quick check (the command line's) found the hub unreachable and switched the Hugging Face
    # libraries to offline mode: a failure to get something from the hub then says so.
    hub_reachable: bool = True


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


def values_of(x) -> list:
    """One value or several, duplicates dropped (first kept)."""
    values = [x] if isinstance(x, (int, float, str)) else list(x)
    return list(dict.fromkeys(values))


def run_dir(cfg: TrainConfig, spec: RunSpec) -> Path:
    """Where a run's local files go: ``<output_dir>/<technique>/<run name>``."""
    safe = re.sub(r"[^0-9A-Za-z._-]+", "__", spec.run_name).strip("_") or "model"
    return Path(cfg.output_dir) / cfg.technique / safe


def say(cfg: TrainConfig, msg: str) -> None:
    """A progress line on stderr, unless quiet."""
    if cfg.verbose:
        print(msg, file=sys.stderr, flush=True)


def one_line(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def choose_data_source(cfg: TrainConfig) -> str:
    if cfg.data_source not in DATA_SOURCES:
        raise TrainingError(f"unknown data source {cfg.data_source!r} (auto, local or hub)")
    if cfg.data_source != "auto":
        return cfg.data_source
    return "local" if all(is_tiny(m) for m in cfg.model_names) else "hub"


def validate(cfg: TrainConfig) -> str:
    """Refuse what cannot be trained, before anything is loaded or written; returns the data source."""
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
    if any(bs < 1 for bs in values_of(cfg.batch_size)):
        raise TrainingError("batch sizes must be at least 1")
    if cfg.num_train_epochs <= 0 or any(not lr > 0 or math.isinf(lr) for lr in values_of(cfg.learning_rate)):
        raise TrainingError("the number of epochs and the learning rates must be positive")
    if cfg.system_metrics_interval is not None and not cfg.system_metrics_interval > 0:
        raise TrainingError("the system metrics interval must be positive")
    return source
