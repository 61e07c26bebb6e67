"""The grid a command trains: models x learning rates x batch sizes x seeds, one ``RunSpec`` each, and
the ids that make runs comparable across commands (``config_id``: one configuration; ``sweep_id``:
the whole grid)."""

from __future__ import annotations

import hashlib
import json

from .train_config import RunSpec, TrainConfig, values_of


def format_lr(lr: float) -> str:
    return f"{lr:g}"  # 0.001, 0.0003, 5e-05


def plan(cfg: TrainConfig) -> list[RunSpec]:
    """The grid, models x learning rates x batch sizes x seeds, in that order. A run is named after its
    model alone when each model has one configuration (as a single run always was), else
    ``<model>-lr<lr>-bs<bs>-s<seed>``."""
    lrs, bss, seeds = values_of(cfg.learning_rate), values_of(cfg.batch_size), values_of(cfg.seed)
    sweep = len(lrs) > 1 or len(bss) > 1 or len(seeds) > 1
    specs = []
    for model in values_of(cfg.model_names):
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
            "model_names": values_of(cfg.model_names),
            "learning_rates": [float(v) for v in values_of(cfg.learning_rate)],
            "batch_sizes": [int(v) for v in values_of(cfg.batch_size)],
            "seeds": [int(v) for v in values_of(cfg.seed)],
        }
    )[:8]
