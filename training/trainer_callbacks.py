"""What this package adds to the Hugging Face ``Trainer``: short progress lines, the accuracy metric,
and transformers' own ``MLflowCallback`` with two additions (checkpoints flushed in order, and no point
logged twice on a resumed run)."""

from __future__ import annotations

import re

from .train_config import TrainConfig, say


def progress_callback(cfg: TrainConfig, langs):
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """One short line per logging step instead of the Trainer's dict dumps."""

        def __init__(self):
            self.acc = {}

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" in logs:
                say(cfg, f"  step {state.global_step}/{state.max_steps}  loss {logs['loss']:.4f}")
            for lang in langs:
                if f"eval_{lang}_accuracy" in logs:
                    self.acc[lang] = logs[f"eval_{lang}_accuracy"]
            if len(self.acc) == len(langs):
                accs = "  ".join(f"{k} {v:.3f}" for k, v in self.acc.items())
                say(cfg, f"  step {state.global_step}/{state.max_steps}  accuracy  {accs}")
                self.acc = {}

    return Progress()


def accuracy(eval_pred):
    """The Trainer's ``compute_metrics``: the share of argmax predictions equal to the labels."""
    import numpy as np

    logits, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def _metric_key(key: str) -> str:
    return re.sub(r"[^0-9A-Za-z_\-\.\ :/]", "_", key)  # what MLflowCallback.on_log makes of a key


def mlflow_callback(logged: dict[str, int]):
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


def replace_mlflow_callback(trainer, replacement) -> None:
    """Put ``replacement`` where the Trainer's own MLflowCallback (from ``report_to``) was."""
    from transformers.integrations import MLflowCallback

    callbacks = trainer.callback_handler.callbacks
    [index] = [i for i, cb in enumerate(callbacks) if type(cb) is MLflowCallback]
    callbacks[index] = replacement


def quiet_checkpoint_logging() -> None:
    """MLflow's logged-model calls (one per checkpoint) warn about things the Trainer decides."""
    import logging

    for name in ("mlflow.models.model", "mlflow.pyfunc"):
        logging.getLogger(name).setLevel(logging.ERROR)
