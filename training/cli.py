"""``python -m training {fine-tune,feature-extraction} --model-names M [M ...] ...``"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .data import LANGUAGES, TECHNIQUES
from .tiny_models import TINY_MODEL_NAMES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training",
        description=(
            "Zero-shot cross-lingual XNLI: train on English, evaluate on every requested language, "
            "one MLflow run per model in the experiment xnli_<technique>. The tiny local models ("
            + ", ".join(TINY_MODEL_NAMES)
            + ") run offline on the data set shipped in training/data; any other name is a Hugging Face "
            "hub model trained on XNLI from the hub."
        ),
    )
    p.add_argument("technique", choices=TECHNIQUES,
                   help="fine-tune: train every weight; feature-extraction: train only the classification head")
    p.add_argument("--model-names", nargs="+", required=True, metavar="M",
                   help="hub model names (bert-base-multilingual-cased, xlm-roberta-base, ...) or "
                   + " / ".join(TINY_MODEL_NAMES))
    p.add_argument("--eval-datasets-names", nargs="+", default=list(LANGUAGES), metavar="LANG",
                   help="XNLI languages to evaluate on (default: %(default)s)")
    p.add_argument("--output-dir", type=Path, default=Path("logs"), help="default: %(default)s")
    p.add_argument("--batch-size", type=int, default=8, help="default: %(default)s")
    p.add_argument("--num-train-samples", type=int, default=15000,
                   help="English training pairs (default: %(default)s; the shipped data set has 315)")
    p.add_argument("--num-train-epochs", type=float, default=3, help="default: %(default)s")
    p.add_argument("--eval-steps", type=int, default=500,
                   help="evaluate (and log the training loss) every N steps (default: %(default)s)")
    p.add_argument("--learning-rate", type=float, default=5e-5, help="default: %(default)s")
    p.add_argument("--seed", type=int, default=73, help="default: %(default)s")
    p.add_argument("--tracking-uri", default=None,
                   help="any MLflow tracking URI (default: the file store <output-dir>/mlruns)")
    p.add_argument("--system-metrics", action=argparse.BooleanOptionalAction, default=None,
                   help="log MLflow system metrics (default: MLflow's own default, off unless "
                   "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=true)")
    p.add_argument("--data-source", choices=("auto", "local", "hub"), default="auto",
                   help="auto (default): the shipped data set when every model is a tiny local one, "
                   "else XNLI from the hub")
    p.add_argument("--save-model", action="store_true",
                   help="also save each trained model into <output-dir>/<technique>/<model>/model")
    p.add_argument("--quiet", action="store_true", help="print only errors")
    return p


def _quiet_libraries() -> None:
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        import datasets
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        datasets.logging.set_verbosity_error()
        datasets.disable_progress_bars()
    except ImportError:
        pass


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    needs_hub = args.data_source == "hub" or any(m not in TINY_MODEL_NAMES for m in args.model_names)
    if needs_hub and not os.environ.get("HF_HUB_OFFLINE"):
        from . import experiment  # light: its heavy imports are lazy

        if not experiment.hub_reachable():
            experiment.HUB_UNREACHABLE = True
            # Before transformers/datasets are imported: they then use their caches only and fail
            # at once on what is not cached, instead of retrying for a minute.
            os.environ["HF_HUB_OFFLINE"] = "1"
            os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    _quiet_libraries()
    from .experiment import TrainConfig, TrainingError, run

    cfg = TrainConfig(
        technique=args.technique,
        model_names=args.model_names,
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
        save_model=args.save_model,
        verbose=not args.quiet,
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
