"""Zero-shot cross-lingual XNLI training runs (fine-tune vs feature-extraction), tracked in MLflow.

``python -m training --help`` for the command line; ``training.run(TrainConfig(...))`` from Python.
This module imports nothing heavy: torch, transformers and MLflow load when a run starts.
"""

from .data import LABEL_NAMES, LANGUAGES, TECHNIQUES
from .tiny_models import TINY_MODEL_NAMES, ensure_tiny_model

__all__ = [
    "LABEL_NAMES",
    "LANGUAGES",
    "TECHNIQUES",
    "TINY_MODEL_NAMES",
    "RunResult",
    "TrainConfig",
    "ensure_tiny_model",
    "run",
]


def __getattr__(name):
    if name in ("RunResult", "TrainConfig", "TrainingError", "HubUnavailableError"):
        from . import train_config

        return getattr(train_config, name)
    if name == "run":
        from .sweep import run

        return run
    raise AttributeError(name)
