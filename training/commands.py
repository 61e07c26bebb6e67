"""``python -m training {fine-tune,feature-extraction} --model-names M [M ...] ...``"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .data import LANGUAGES, TECHNIQUES
from .tiny_models import TINY_MODEL_NAMES

# What shapes a run; with --resume it all comes from the run itself. (flag, default)
CONFIG_FLAGS = {
    "model_names": ("--model-names", None),
    "eval_datasets_names": ("--eval-datasets-names", list(LANGUAGES)),
    "batch_size": ("--batch-size", [8]),
    "num_train_samples": ("--num-train-samples", 15000),
    "num_train_epochs": ("--num-train-epochs", 3.0),
    "eval_steps": ("--eval-steps", 500),
    "learning_rate": ("--learning-rate", [5e-5]),
    "seed": ("--seed", [73]),
    "data_source": ("--data-source", "auto"),
    "save_strategy": ("--save-strategy", "no"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse would print the usage first)
        self.exit(_usage_error(message))


def _usage_error(message: str) -> int:
    print(f"error: {message} (python -m training --help)", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m training",
        description=(
            "Zero-shot cross-lingual XNLI: train on English, evaluate on every requested language. "
            "Trains the grid models x learning rates x batch sizes x seeds, one MLflow run each in the "
            "experiment xnli_<technique>, skipping configurations already FINISHED in the store. The tiny "
            "local models (" + ", ".join(TINY_MODEL_NAMES) + ") run offline on the data set shipped in "
            "training/data; any other name is a Hugging Face hub model trained on XNLI from the hub."
        ),
    )
    p.add_argument(
        "technique",
        choices=TECHNIQUES,
        help="fine-tune: train every weight; feature-extraction: train only the classification head",
    )
    p.add_argument(
        "--model-names",
        nargs="+",
        metavar="M",
        help="hub model names (bert-base-multilingual-cased, xlm-roberta-base, ...) or "
        + " / ".join(TINY_MODEL_NAMES)
        + " (required unless --resume)",
    )
    p.add_argument(
        "--eval-datasets-names",
        nargs="+",
        metavar="LANG",
        help=f"XNLI languages to evaluate on (default: {' '.join(LANGUAGES)})",
    )
    p.add_argument("--output-dir", type=Path, default=Path("logs"), help="default: %(default)s")
    p.add_argument("--batch-size", type=int, nargs="+", metavar="BS", help="one or several (default: 8)")
    p.add_argument(
        "--num-train-samples", type=int, help="English training pairs (default: 15000; the shipped data set has 315)"
    )
    p.add_argument("--num-train-epochs", type=float, help="default: 3")
    p.add_argument(
        "--eval-steps",
        type=int,
        help="evaluate (and log the training loss, and checkpoint with --save-strategy steps) "
        "every N steps (default: 500)",
    )
    p.add_argument("--learning-rate", type=float, nargs="+", metavar="LR", help="one or several (default: 5e-5)")
    p.add_argument("--seed", type=int, nargs="+", metavar="SEED", help="one or several (default: 73)")
    p.add_argument(
        "--save-strategy",
        choices=("steps", "epoch", "no"),
        help="log the Trainer's checkpoints to the run: every --eval-steps steps, every epoch, or "
        "not at all (default: no)",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_ID",
        help="continue this interrupted run from its last checkpoint, into the same MLflow run "
        "(its configuration comes from the run)",
    )
    p.add_argument(
        "--tracking-uri", default=None, help="any MLflow tracking URI (default: the file store <output-dir>/mlruns)"
    )
    p.add_argument(
        "--system-metrics",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="MLflow's system metrics (CPU, memory, disk, network; GPU with nvidia-ml-py) beside each "
        "run, sampled every MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL seconds (here 2 unless set) "
        "(default: on)",
    )
    p.add_argument(
        "--data-source",
        choices=("auto", "local", "hub"),
        help="auto (default): the shipped data set when every model is a tiny local one, else XNLI from the hub",
    )
    p.add_argument(
        "--save-model",
        action="store_true",
        help="also save each trained model into <output-dir>/<technique>/<run>/model",
    )
    p.add_argument(
        "--quiet", action="store_true", help="print only errors (and, on a terminal, one progress line per run)"
    )
    return p


def _quiet_libraries() -> None:
    import logging
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    try:
        import datasets
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        datasets.logging.set_verbosity_error()
        datasets.disable_progress_bars()
    except ImportError:
        pass


def _check_hub(needed: bool) -> bool:
    """False when the hub is needed and a quick check finds it unreachable. The Hugging Face libraries are
    then switched to offline mode, before they are imported: they use their caches only and fail at once
    on what is not cached, instead of retrying for a minute."""
    if not needed or os.environ.get("HF_HUB_OFFLINE"):
        return True
    from .hub import hub_reachable  # light: its heavy imports are lazy

    if hub_reachable():
        return True
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    return False


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume:
        given = [flag for dest, (flag, _) in CONFIG_FLAGS.items() if getattr(args, dest) is not None]
        if given:
            return _usage_error(f"--resume takes the run's own configuration; drop {', '.join(given)}")
    elif not args.model_names:
        return _usage_error("--model-names is required (or --resume RUN_ID)")
    for dest, (_, default) in CONFIG_FLAGS.items():
        if getattr(args, dest) is None:
            setattr(args, dest, default)

    models = args.model_names or []
    reachable = _check_hub(args.data_source == "hub" or any(m not in TINY_MODEL_NAMES for m in models))
    _quiet_libraries()
    from .sweep import run
    from .train_config import TrainConfig, TrainingError

    cfg = TrainConfig(
        technique=args.technique,
        model_names=models,
        eval_languages=args.eval_datasets_names,
        output_dir=args.output_dir,
        batch_size=args.batch_size,
        num_train_samples=args.num_train_samples,
        num_train_epochs=args.num_train_epochs,
        eval_steps=args.eval_steps,
        learning_rate=args.learning_rate,
        seed=args.seed,
        tracking_uri=args.tracking_uri,
        system_metrics=args.system_metrics,
        data_source=args.data_source,
        save_strategy=args.save_strategy,
        resume=args.resume,
        save_model=args.save_model,
        verbose=not args.quiet,
        hub_reachable=reachable,
    )
    try:
        run(cfg)
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
