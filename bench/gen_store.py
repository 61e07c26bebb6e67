#!/usr/bin/env python
"""Generate an MLflow *file store* shaped like Hugging Face Trainer runs.

Default: 40 finished runs in one experiment, each with

* ``loss``, ``learning_rate``, ``grad_norm``, ``epoch`` at every step 1..1000
  (what ``transformers.integrations.MLflowCallback`` logs with ``logging_steps=1``);
* ``eval_<lang>_accuracy``, ``eval_<lang>_loss``, ``eval_<lang>_runtime`` for
  en de fr es ar zh every 20 steps (one ``evaluate()`` per language, run one
  after another, so every language has its own, later, timestamp);
* ~40 Trainer-like params (stringified the way MLflow stores them: ``"None"``,
  ``"True"``, ``"['en', 'de']"``, ``"2e-05"`` ...), a few tags, a start time in
  the past and strictly increasing millisecond timestamps.

That is ``4*steps + 18*(steps//eval_every)`` points per run: 4,900 per run and
196,000 in total with the defaults.

``--single-metric-points N`` instead writes one run holding one metric
(``loss``) with N points (steps 0..N-1), for memory tests.

Runs, params, tags and run status always go through ``MlflowClient``.  Metric
points are written one of two ways:

* ``--method direct`` (default, ~1.5 s for the default store): the generator
  appends the metric lines itself, in exactly the ``"<timestamp> <value>
  <step>\n"`` format of ``FileStore._log_run_metric``, one ``open()`` per key;
* ``--method log_batch`` (~20 s): ``MlflowClient.log_batch`` with batches of
  1,000 metrics (MLflow's per-request maximum).  The FileStore re-resolves the
  run directory (listing every experiment directory) and reopens the file for
  every single point, hence the 15x.

With the same ``--seed`` and ``--now-ms`` both produce byte-identical
metric/param/tag files (checked; see README), and the generator reads a sample
back through MLflow either way.

Usable from Python::

    from bench.gen_store import generate_store
    info = generate_store("bench/out/store", runs=40, steps=1000)

Command line::

    .venv/bin/python bench/gen_store.py --out bench/out/store
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

# MLflow 3 refuses to open a file store without this opt-in.
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")

LANGS = ("en", "de", "fr", "es", "ar", "zh")
TRAIN_KEYS = ("loss", "learning_rate", "grad_norm", "epoch")
EVAL_SUFFIXES = ("accuracy", "loss", "runtime")
EXPERIMENT_NAME = "xnli-hf-trainer-bench"
BATCH = 1000  # MLflow's per-request limit for metrics in log_batch

DAY_MS = 24 * 3600 * 1000


def points_per_run(steps: int = 1000, eval_every: int = 20, langs=LANGS) -> int:
    return len(TRAIN_KEYS) * steps + len(langs) * len(EVAL_SUFFIXES) * (steps // eval_every)


def _trainer_params(rng: random.Random, i: int, steps: int, langs) -> dict[str, str]:
    """A Trainer-run-like parameter set, already stringified as MLflow stores it."""
    model = rng.choice(["xlm-roberta-base", "bert-base-multilingual-cased", "distilbert-base-multilingual-cased"])
    lr = rng.choice([1e-5, 2e-5, 3e-5, 5e-5])
    bs = rng.choice([8, 16, 32])
    p = {
        "_name_or_path": model,
        "model_type": model.split("-")[0].replace("xlm", "xlm-roberta"),
        "architectures": "['XLMRobertaForSequenceClassification']"
        if model.startswith("xlm")
        else "['BertForSequenceClassification']",
        "num_labels": 3,
        "id2label": "{0: 'entailment', 1: 'neutral', 2: 'contradiction'}",
        "label2id": "{'entailment': 0, 'neutral': 1, 'contradiction': 2}",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "vocab_size": 250002 if model.startswith("xlm") else 119547,
        "torch_dtype": "float32",
        "transformers_version": "4.44.2",
        "output_dir": f"outputs/run-{i:03d}",
        "overwrite_output_dir": False,
        "do_train": True,
        "do_eval": True,
        "eval_strategy": "steps",
        "eval_steps": 20,
        "logging_strategy": "steps",
        "logging_steps": 1,
        "learning_rate": lr,
        "weight_decay": rng.choice([0.0, 0.01]),
        "adam_beta1": 0.9,
        "adam_beta2": 0.999,
        "adam_epsilon": 1e-08,
        "max_grad_norm": 1.0,
        "num_train_epochs": 4.0,
        "max_steps": steps,
        "lr_scheduler_type": "linear",
        "lr_scheduler_kwargs": "{}",
        "warmup_ratio": 0.1,
        "warmup_steps": 0,
        "per_device_train_batch_size": bs,
        "per_device_eval_batch_size": bs * 2,
        "gradient_accumulation_steps": 1,
        "seed": 1000 + i,
        "fp16": False,
        "bf16": False,
        "save_strategy": "no",
        "report_to": "['mlflow']",
        "run_name": f"xnli-{model}-{i:03d}",
        "label_smoothing_factor": 0.0,
        "optim": "adamw_torch",
        "resume_from_checkpoint": None,
        "dataloader_num_workers": 0,
        "eval_languages": str(list(langs)),
        "train_language": "en",
    }
    return {k: str(v) for k, v in p.items()}


def _run_series(rng: random.Random, steps: int, eval_every: int, langs, start_ms: int, lr0: float):
    """Yield (key, value, timestamp_ms, step) for one run, timestamps increasing."""
    warmup = max(1, steps // 10)
    steps_per_epoch = max(1, steps // 4)
    final_loss = rng.uniform(0.35, 0.6)
    base_acc = {lang: rng.uniform(0.55, 0.85) for lang in langs}
    step_ms = rng.randint(180, 420)  # time per optimizer step
    t = start_ms
    for step in range(1, steps + 1):
        t += step_ms + rng.randint(-30, 30)
        frac = step / steps
        loss = final_loss + (1.1 - final_loss) * math.exp(-5 * frac) + rng.gauss(0, 0.05)
        lr = lr0 * step / warmup if step <= warmup else lr0 * (steps - step) / (steps - warmup)
        yield "loss", round(max(loss, 0.01), 4), t, step  # Trainer rounds loss
        yield "learning_rate", lr, t, step  # full float
        yield "grad_norm", abs(rng.gauss(2.0 * (1 - frac) + 0.5, 0.6)), t, step
        yield "epoch", round(step / steps_per_epoch, 4), t, step
        if step % eval_every == 0:
            for lang in langs:
                runtime = round(rng.uniform(2.0, 6.0), 4)
                t += int(runtime * 1000)
                acc = base_acc[lang] * (1 - 0.6 * math.exp(-4 * frac)) + rng.gauss(0, 0.01)
                eloss = 1.1 - 0.7 * acc + rng.gauss(0, 0.02)
                yield f"eval_{lang}_accuracy", min(acc, 1.0), t, step
                yield f"eval_{lang}_loss", eloss, t, step
                yield f"eval_{lang}_runtime", runtime, t, step


def _single_series(n: int, start_ms: int, seed: int):
    rng = random.Random(seed)
    t = start_ms
    for step in range(n):
        t += rng.randint(1, 5)
        yield "loss", 2.0 * math.exp(-step / max(n, 1) * 3) + rng.gauss(0, 0.01), t, step


def _write_direct(store, run_id: str, series) -> int:
    """Append metric lines exactly as FileStore._log_run_metric would (one open per key)."""
    run_info = store._get_run_info(run_id)
    buffers: dict[str, list[str]] = {}
    n = 0
    for key, value, ts, step in series:
        buffers.setdefault(key, []).append(f"{ts} {value} {step}\n")
        n += 1
    for key, lines in buffers.items():
        path = store._get_metric_path(run_info.experiment_id, run_info.run_id, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a") as fh:
            fh.writelines(lines)
    return n


def _write_log_batch(client, run_id: str, series) -> int:
    from mlflow.entities import Metric

    batch: list = []
    n = 0
    for key, value, ts, step in series:
        batch.append(Metric(key, value, ts, step))
        if len(batch) == BATCH:
            client.log_batch(run_id, metrics=batch)
            n += len(batch)
            batch = []
    if batch:
        client.log_batch(run_id, metrics=batch)
        n += len(batch)
    return n


def generate_store(
    out: str | os.PathLike,
    runs: int = 40,
    steps: int = 1000,
    eval_every: int = 20,
    langs=LANGS,
    seed: int = 0,
    single_metric_points: int | None = None,
    method: str = "direct",
    overwrite: bool = True,
    now_ms: int | None = None,
) -> dict:
    """Create the store at ``out`` and return a summary dict.

    Summary keys: ``tracking_uri`` (absolute path), ``experiment_id``,
    ``run_ids``, ``runs``, ``points``, ``seconds``, ``method``.
    """
    from mlflow import MlflowClient
    from mlflow.entities import Param, RunTag

    if method not in ("log_batch", "direct"):
        raise ValueError(f"unknown method {method!r}")
    out = Path(out).resolve()
    if out.exists():
        if not overwrite:
            raise FileExistsError(out)
        shutil.rmtree(out)
    t0 = time.perf_counter()
    client = MlflowClient(tracking_uri=str(out))
    store = client._tracking_client.store
    exp_id = client.create_experiment(EXPERIMENT_NAME)
    rng = random.Random(seed)
    if now_ms is None:  # pass a fixed value for byte-for-byte reproducible stores
        now_ms = int(time.time() * 1000)

    if single_metric_points is not None:
        plan = [("single-metric", None)]
    else:
        plan = [(f"xnli-run-{i:03d}", i) for i in range(runs)]

    run_ids: list[str] = []
    total = 0
    for idx, (name, i) in enumerate(plan):
        # runs start 1..N days ago, at different times of day, oldest first
        start_ms = now_ms - (len(plan) - idx) * DAY_MS + rng.randint(0, 6 * 3600 * 1000)
        tags = {
            "mlflow.user": "bench",
            "mlflow.source.name": "training/train_xnli.py",
            "mlflow.source.type": "LOCAL",
            "task": "xnli",
            "bench": "gen_store",
        }
        if idx == 0:
            tags["mlflow.note.content"] = "Synthetic Trainer-shaped run generated by bench/gen_store.py"
        run = client.create_run(exp_id, start_time=start_ms, tags=tags, run_name=name)
        rid = run.info.run_id
        run_ids.append(rid)
        if i is None:
            params = {"points": str(single_metric_points)}
            series = _single_series(single_metric_points, start_ms, seed)
        else:
            params = _trainer_params(random.Random(seed * 100003 + i), i, steps, langs)
            series = _run_series(
                random.Random(seed * 100019 + i), steps, eval_every, langs, start_ms, float(params["learning_rate"])
            )
        items = list(params.items())
        for k in range(0, len(items), 100):  # 100 params per log_batch is MLflow's limit
            client.log_batch(
                rid,
                params=[Param(a, b) for a, b in items[k : k + 100]],
                tags=[RunTag("dataset", "xnli")] if k == 0 else [],
            )
        last_ts = [start_ms]

        def tracking(series=series, last_ts=last_ts):
            for p in series:
                last_ts[0] = p[2]
                yield p

        if method == "direct":
            total += _write_direct(store, rid, tracking())
        else:
            total += _write_log_batch(client, rid, tracking())
        client.set_terminated(rid, "FINISHED", end_time=last_ts[0] + 1000)

    # Read a little back through MLflow so an invalid store fails here, not later.  Never the
    # whole of a long history: MlflowClient.get_metric_history pages 25,000 points at a time
    # and the FileStore re-reads and re-parses the whole file for every page (quadratic:
    # ~4 minutes for a 1,000,000-point metric); even one full parse costs ~5 s per 300k points.
    from mlflow.store.tracking.file_store import FileStore

    info0 = store._get_run_info(run_ids[0])
    path = store._get_metric_path(info0.experiment_id, info0.run_id, "loss")
    with open(path) as fh:
        head = [FileStore._get_metric_from_line(info0.run_id, "loss", fh.readline(), exp_id) for _ in range(3)]
    if info0.status != "FINISHED" or head[0].step not in (0, 1):
        raise RuntimeError("generated store does not read back through MLflow")
    if single_metric_points is None and len(client.get_metric_history(run_ids[0], "loss")) != steps:
        raise RuntimeError("generated store does not read back through MLflow")

    seconds = time.perf_counter() - t0
    return {
        "tracking_uri": str(out),
        "experiment_id": exp_id,
        "run_ids": run_ids,
        "runs": len(run_ids),
        "points": total,
        "seconds": round(seconds, 3),
        "method": method,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench/out/store", help="store directory (replaced)")
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--single-metric-points",
        type=int,
        default=None,
        metavar="N",
        help="instead: one run, one metric ('loss') with N points",
    )
    ap.add_argument(
        "--method",
        choices=("direct", "log_batch"),
        default="direct",
        help="direct (default): runs/params/tags via MlflowClient, metric lines "
        "appended in FileStore's own format (~1.5 s for the default store); "
        "log_batch: everything via MlflowClient.log_batch, 1000 metrics a "
        "call (~20 s; byte-identical output)",
    )
    ap.add_argument(
        "--now-ms",
        type=int,
        default=None,
        help="pretend 'now' is this epoch-ms (reproducible timestamps); default: now",
    )
    ap.add_argument("--json", action="store_true", help="print the summary (without run ids) as JSON")
    args = ap.parse_args(argv)
    info = generate_store(
        args.out,
        runs=args.runs,
        steps=args.steps,
        eval_every=args.eval_every,
        seed=args.seed,
        single_metric_points=args.single_metric_points,
        method=args.method,
        now_ms=args.now_ms,
    )
    summary = {k: v for k, v in info.items() if k != "run_ids"}
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"wrote {summary['points']:,} points in {summary['runs']} runs to "
            f"{summary['tracking_uri']} in {summary['seconds']:.1f}s ({summary['method']})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
