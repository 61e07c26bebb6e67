#!/usr/bin/env python
"""Generate the stores of bench/scale.py: N finished Hugging Face Trainer-shaped runs plus one
RUNNING run with a long `loss` history, with the same content in an MLflow file store, a sqlite
database and a PostgreSQL database (the `mlflow server` kind serves a copy of the sqlite one).

Every run (deterministic: run ids, names, values and timestamps follow from the run's index):

* 150 params, stringified the way MLflow stores them (`TrainingArguments` and model-config
  fields: "None", "True", "2e-05", "['mlflow']", dict reprs ...);
* 8 tags (`mlflow.runName`, `mlflow.user`, `mlflow.source.name`, `mlflow.source.type`,
  `mlflow.source.git.commit`, `task`, `dataset`, `bench`);
* 30 metric keys x 20 points: `loss learning_rate grad_norm epoch train_runtime
  train_samples_per_second` and `eval_<lang>_{accuracy,loss,runtime,samples_per_second}` for
  en de fr es ar zh, at steps 50, 100 ... 1000, timestamps strictly increasing (each
  language's evaluation later than the training step): 600 points per run;
* FINISHED, started `i` hours before a fixed date (2026-05-28) so that no finished run is
  "recent" when the benchmark runs; end time = last point + 1 s.

The RUNNING run (`RUNNING_ID`) has the same params and tags, the same 29 other keys x 20 points,
and `loss` at steps 0 .. history-1 (50,000 by default), one point every 100 ms of MLflow time.

How each kind is written:

* file: the experiment through `MlflowClient` (MLflow writes its `meta.yaml`); each run folder
  directly, in `FileStore`'s formats: `meta.yaml` from MLflow's own `RunInfo` and
  `_make_persisted_run_info_dict` through MLflow's `write_yaml`, one file per param and tag
  (the value, no newline), one line `"<ts> <value> <step>\\n"` per point in `metrics/<key>`;
* sqlite / PostgreSQL: `MlflowClient(uri).create_experiment` creates the schema (MLflow's
  migrations) and the experiment; then `runs`, `tags`, `params`, `metrics`, `latest_metrics`
  rows are inserted in bulk through the `__table__` of MLflow's own SQLAlchemy models
  (`mlflow.store.tracking.dbmodels.models`), the rows `SqlAlchemyStore` itself would write
  (`latest_metrics`: the point with the largest (step, timestamp, value) per key, as
  `_update_latest_metrics_if_necessary` keeps it). PostgreSQL gets `VACUUM ANALYZE` after the
  load (a production database has statistics); sqlite is left as MLflow leaves it (no ANALYZE).

`verify()` reads sample runs back through `MlflowClient` (first, middle and last finished run,
and the RUNNING run: info, params, tags, latest metrics, two metric histories) and compares them
with what the generator meant to write, and with the file store's reading of the same runs when
given one. Used from bench/scale.py; also a command line::

    .venv/bin/python bench/gen_scale.py --kind file --runs 100 --out /tmp/s100
    .venv/bin/python bench/gen_scale.py --kind sqlite --runs 100 --out /tmp/s100.db
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

GEN_VERSION = 1  # bump when the content changes: cached stores are rebuilt
EXPERIMENT = "scale-bench-xnli"
T_BASE = 1_780_000_000_000  # 2026-05-28 (ms): every finished run ends before this
HOUR_MS = 3600 * 1000
LANGS = ("en", "de", "fr", "es", "ar", "zh")
TRAIN_KEYS = ("loss", "learning_rate", "grad_norm", "epoch", "train_runtime", "train_samples_per_second")
EVAL_SUFFIXES = ("accuracy", "loss", "runtime", "samples_per_second")
KEYS = TRAIN_KEYS + tuple(f"eval_{lang}_{s}" for lang in LANGS for s in EVAL_SUFFIXES)
assert len(KEYS) == 30
POINTS_PER_KEY = 20
STEP_EVERY = 50
HISTORY = 50_000  # points of the RUNNING run's `loss`
RUNNING_ID = hashlib.md5(b"scale-bench-running-run").hexdigest()
RUNNING_NAME = "xnli-running"


def run_id(i: int) -> str:
    return hashlib.md5(f"scale-bench-run-{i}".encode()).hexdigest()


def points_total(runs: int, history: int = HISTORY) -> int:
    return runs * len(KEYS) * POINTS_PER_KEY + (len(KEYS) - 1) * POINTS_PER_KEY + history


# 150 params: the fields of transformers' TrainingArguments and of a BERT-like model config,
# as `MLflowCallback` logs them (every value stringified)
_TRAINING_ARGS = """output_dir overwrite_output_dir do_train do_eval do_predict eval_strategy prediction_loss_only
per_device_train_batch_size per_device_eval_batch_size per_gpu_train_batch_size per_gpu_eval_batch_size
gradient_accumulation_steps eval_accumulation_steps eval_delay torch_empty_cache_steps learning_rate weight_decay
adam_beta1 adam_beta2 adam_epsilon max_grad_norm num_train_epochs max_steps lr_scheduler_type lr_scheduler_kwargs
warmup_ratio warmup_steps log_level log_level_replica log_on_each_node logging_dir logging_strategy
logging_first_step logging_steps logging_nan_inf_filter save_strategy save_steps save_total_limit save_safetensors
save_on_each_node save_only_model restore_callback_states_from_checkpoint no_cuda use_cpu use_mps_device seed
data_seed jit_mode_eval use_ipex bf16 fp16 fp16_opt_level half_precision_backend bf16_full_eval fp16_full_eval tf32
local_rank ddp_backend tpu_num_cores tpu_metrics_debug debug dataloader_drop_last eval_steps dataloader_num_workers
dataloader_prefetch_factor past_index run_name disable_tqdm remove_unused_columns label_names load_best_model_at_end
metric_for_best_model greater_is_better ignore_data_skip fsdp fsdp_min_num_params fsdp_config
fsdp_transformer_layer_cls_to_wrap accelerator_config deepspeed label_smoothing_factor optim optim_args adafactor
group_by_length length_column_name report_to ddp_find_unused_parameters ddp_bucket_cap_mb ddp_broadcast_buffers
dataloader_pin_memory dataloader_persistent_workers skip_memory_metrics use_legacy_prediction_loop push_to_hub
resume_from_checkpoint hub_model_id hub_strategy hub_token hub_private_repo hub_always_push gradient_checkpointing
gradient_checkpointing_kwargs include_inputs_for_metrics eval_do_concat_batches fp16_backend evaluation_strategy
push_to_hub_model_id push_to_hub_organization push_to_hub_token mp_parameters auto_find_batch_size
full_determinism torchdynamo ray_scope ddp_timeout torch_compile torch_compile_backend torch_compile_mode
dispatch_batches split_batches include_tokens_per_second include_num_input_tokens_seen neftune_noise_alpha
optim_target_modules batch_eval_metrics eval_on_start use_liger_kernel eval_use_gather_object""".split()
_MODEL_CONFIG = """_name_or_path model_type architectures num_labels id2label label2id hidden_size num_hidden_layers
num_attention_heads intermediate_size hidden_act hidden_dropout_prob attention_probs_dropout_prob
max_position_embeddings type_vocab_size initializer_range layer_norm_eps vocab_size torch_dtype transformers_version
pad_token_id bos_token_id eos_token_id position_embedding_type use_cache classifier_dropout problem_type""".split()
PARAM_KEYS = (_MODEL_CONFIG + _TRAINING_ARGS)[:150]
assert len(PARAM_KEYS) == 150 and len(set(PARAM_KEYS)) == 150, len(PARAM_KEYS)

_KNOWN = {
    "num_labels": "3",
    "id2label": "{0: 'entailment', 1: 'neutral', 2: 'contradiction'}",
    "label2id": "{'entailment': 0, 'neutral': 1, 'contradiction': 2}",
    "hidden_act": "gelu",
    "torch_dtype": "float32",
    "transformers_version": "4.44.2",
    "report_to": "['mlflow']",
    "optim": "adamw_torch",
    "lr_scheduler_type": "linear",
    "lr_scheduler_kwargs": "{}",
    "eval_strategy": "steps",
    "logging_strategy": "steps",
    "save_strategy": "no",
    "adam_beta1": "0.9",
    "adam_beta2": "0.999",
    "adam_epsilon": "1e-08",
    "max_grad_norm": "1.0",
    "num_train_epochs": "4.0",
    "max_steps": "1000",
    "eval_steps": "50",
    "logging_steps": "50",
    "ddp_timeout": "1800",
    "log_level": "passive",
    "fsdp": "[]",
    "fsdp_config": "{'min_num_params': 0, 'xla': False, 'xla_fsdp_v2': False}",
    "accelerator_config": "{'split_batches': False, 'dispatch_batches': None, 'even_batches': True}",
    "debug": "[]",
    "label_names": "None",
    "hub_strategy": "every_save",
    "half_precision_backend": "auto",
    "fp16_opt_level": "O1",
    "position_embedding_type": "absolute",
    "problem_type": "single_label_classification",
}


def params_for(i: int) -> dict[str, str]:
    rng = random.Random(1_000_003 * (i + 7))
    model = ("xlm-roberta-base", "bert-base-multilingual-cased", "distilbert-base-multilingual-cased")[i % 3]
    lr = (1e-5, 2e-5, 3e-5, 5e-5)[(i // 3) % 4]
    bs = (8, 16, 32)[(i // 12) % 3]
    out = {}
    for k in PARAM_KEYS:
        if k in _KNOWN:
            v = _KNOWN[k]
        elif k == "_name_or_path":
            v = model
        elif k == "model_type":
            v = model.split("-")[0]
        elif k == "architectures":
            v = (
                "['XLMRobertaForSequenceClassification']"
                if model.startswith("xlm")
                else "['BertForSequenceClassification']"
            )
        elif k == "learning_rate":
            v = str(lr)
        elif k in ("per_device_train_batch_size", "per_gpu_train_batch_size"):
            v = str(bs)
        elif k in ("per_device_eval_batch_size", "per_gpu_eval_batch_size"):
            v = str(2 * bs)
        elif k in ("seed", "data_seed"):
            v = str(1000 + i)
        elif k in ("output_dir", "logging_dir"):
            v = f"outputs/run-{i:05d}" + ("/runs" if k == "logging_dir" else "")
        elif k in ("run_name", "hub_model_id"):
            v = f"xnli-{model}-{i:05d}"
        elif k in (
            "weight_decay",
            "warmup_ratio",
            "label_smoothing_factor",
            "hidden_dropout_prob",
            "attention_probs_dropout_prob",
            "neftune_noise_alpha",
            "classifier_dropout",
        ):
            v = str(rng.choice([0.0, 0.01, 0.1]))
        elif k in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
            "warmup_steps",
            "save_steps",
            "dataloader_num_workers",
            "gradient_accumulation_steps",
            "pad_token_id",
            "bos_token_id",
            "eos_token_id",
            "local_rank",
            "past_index",
            "torch_empty_cache_steps",
            "eval_delay",
        ):
            v = str(rng.choice([0, 1, 2, 12, 768, 3072, 512, 250002, 119547, -1]))
        elif k in ("initializer_range", "layer_norm_eps"):
            v = str(rng.choice([0.02, 1e-12, 1e-05]))
        else:  # flags, options left at their default: the bulk of TrainingArguments
            v = rng.choice(["False", "True", "None", "", "auto", "0", "steps"])
        out[k] = v
    return out


def tags_for(i: int | None, name: str) -> dict[str, str]:
    return {
        "mlflow.runName": name,
        "mlflow.user": "bench",
        "mlflow.source.name": "training/train_xnli.py",
        "mlflow.source.type": "LOCAL",
        "mlflow.source.git.commit": hashlib.sha1(f"commit-{(i or 0) // 50}".encode()).hexdigest(),
        "task": "xnli",
        "dataset": "xnli",
        "bench": "gen_scale",
    }


def _series(i: int, start_ms: int, skip_loss: bool) -> Iterator[tuple[str, float, int, int]]:
    """(key, value, timestamp ms, step) of one run's 30 keys x 20 points, timestamps increasing."""
    rng = random.Random(7_919 * (i + 11))
    final = rng.uniform(0.35, 0.6)
    acc0 = {lang: rng.uniform(0.55, 0.85) for lang in LANGS}
    t = start_ms
    lr0 = 3e-5
    for j in range(POINTS_PER_KEY):
        step = STEP_EVERY * (j + 1)
        frac = (j + 1) / POINTS_PER_KEY
        t += 60_000 + rng.randint(-500, 500)
        if not skip_loss:
            yield "loss", round(final + (1.1 - final) * math.exp(-5 * frac) + rng.gauss(0, 0.02), 4), t, step
        yield "learning_rate", lr0 * (1 - frac), t, step
        yield "grad_norm", abs(rng.gauss(2.0 * (1 - frac) + 0.5, 0.5)), t, step
        yield "epoch", round(4 * frac, 4), t, step
        yield "train_runtime", round(60.0 * (j + 1) + rng.random(), 4), t, step
        yield "train_samples_per_second", round(rng.uniform(40, 60), 3), t, step
        for lang in LANGS:
            runtime = round(rng.uniform(2.0, 6.0), 4)
            t += int(runtime * 1000)
            acc = acc0[lang] * (1 - 0.6 * math.exp(-4 * frac)) + rng.gauss(0, 0.01)
            yield f"eval_{lang}_accuracy", min(acc, 1.0), t, step
            yield f"eval_{lang}_loss", 1.1 - 0.7 * acc + rng.gauss(0, 0.02), t, step
            yield f"eval_{lang}_runtime", runtime, t, step
            yield f"eval_{lang}_samples_per_second", round(2490 / runtime, 3), t, step


def run_spec(i: int, n: int) -> dict[str, Any]:
    """Run i of n (finished)."""
    name = f"xnli-run-{i:05d}"
    start = T_BASE - (n - i) * HOUR_MS - 2 * 24 * HOUR_MS
    pts = list(_series(i, start, skip_loss=False))
    return {
        "run_id": run_id(i),
        "name": name,
        "status": "FINISHED",
        "start_time": start,
        "end_time": pts[-1][2] + 1000,
        "params": params_for(i),
        "tags": tags_for(i, name),
        "points": pts,
    }


def running_spec(history: int = HISTORY) -> dict[str, Any]:
    """The RUNNING run: started before T_BASE; `loss` at steps 0..history-1, 100 ms apart."""
    start = T_BASE - 24 * HOUR_MS
    pts = list(_series(-1, start, skip_loss=True))
    rng = random.Random(42)
    pts += [
        ("loss", round(2.0 * math.exp(-3 * s / history) + rng.gauss(0, 0.01), 5), start + 100 * s + 1, s)
        for s in range(history)
    ]
    return {
        "run_id": RUNNING_ID,
        "name": RUNNING_NAME,
        "status": "RUNNING",
        "start_time": start,
        "end_time": None,
        "params": params_for(-1),
        "tags": tags_for(-1, RUNNING_NAME),
        "points": pts,
    }


def all_specs(n: int, history: int) -> Iterator[dict[str, Any]]:
    for i in range(n):
        yield run_spec(i, n)
    yield running_spec(history)


# --------------------------------------------------------------------------- file store


def write_file_store(root: Path, n: int, history: int = HISTORY) -> dict[str, Any]:
    from mlflow import MlflowClient
    from mlflow.entities import LifecycleStage, RunInfo
    from mlflow.store.tracking.file_store import _make_persisted_run_info_dict
    from mlflow.utils.yaml_utils import write_yaml

    t0 = time.perf_counter()
    if root.exists():
        shutil.rmtree(root)
    client = MlflowClient(tracking_uri=str(root))
    exp_id = client.create_experiment(EXPERIMENT)
    exp_dir = root / exp_id
    for spec in all_specs(n, history):
        rid = spec["run_id"]
        run_dir = exp_dir / rid
        for sub in ("metrics", "params", "artifacts", "tags"):
            os.makedirs(run_dir / sub)
        info = RunInfo(
            run_id=rid,
            run_name=spec["name"],
            experiment_id=exp_id,
            artifact_uri=str(run_dir / "artifacts"),
            user_id="bench",
            status=spec["status"],
            start_time=spec["start_time"],
            end_time=spec["end_time"],
            lifecycle_stage=LifecycleStage.ACTIVE,
        )
        meta = _make_persisted_run_info_dict(info)
        meta["deleted_time"] = None
        write_yaml(str(run_dir), "meta.yaml", meta)
        for sub, kv in (("params", spec["params"]), ("tags", spec["tags"])):
            d = run_dir / sub
            for k, v in kv.items():
                with open(d / k, "w") as fh:
                    fh.write(v)
        lines: dict[str, list[str]] = {}
        for key, value, ts, step in spec["points"]:
            lines.setdefault(key, []).append(f"{ts} {value} {step}\n")
        for key, ls in lines.items():
            with open(run_dir / "metrics" / key, "w") as fh:
                fh.writelines(ls)
    return {"kind": "file", "uri": str(root), "experiment_id": exp_id, "seconds": round(time.perf_counter() - t0, 1)}


# --------------------------------------------------------------------------- SQL stores


def write_sql_store(
    uri: str, n: int, artifact_root: Path, history: int = HISTORY, batch_runs: int = 100
) -> dict[str, Any]:
    """Into an EMPTY database (sqlite file absent, or a fresh PostgreSQL database)."""
    import sqlalchemy as sa
    from mlflow import MlflowClient
    from mlflow.store.tracking.dbmodels import models as m

    t0 = time.perf_counter()
    client = MlflowClient(tracking_uri=uri)  # the schema: MLflow's own migrations
    exp_id = client.create_experiment(EXPERIMENT, artifact_location=str(artifact_root))
    t_schema = time.perf_counter() - t0
    engine = sa.create_engine(uri)
    if uri.startswith("sqlite"):

        @sa.event.listens_for(engine, "connect")
        def _fast(dbapi_con, _rec):  # bulk load only; MLflow's own settings apply afterwards
            dbapi_con.execute("PRAGMA synchronous=OFF")

    tables = (
        m.SqlRun.__table__,
        m.SqlTag.__table__,
        m.SqlParam.__table__,
        m.SqlMetric.__table__,
        m.SqlLatestMetric.__table__,
    )
    rows: dict[Any, list[dict[str, Any]]] = {t: [] for t in tables}
    counts = {t.name: 0 for t in tables}

    def flush(con) -> None:
        for t in tables:
            if rows[t]:
                con.execute(sa.insert(t), rows[t])
                counts[t.name] += len(rows[t])
                rows[t].clear()

    with engine.begin() as con:
        for k, spec in enumerate(all_specs(n, history)):
            rid = spec["run_id"]
            rows[tables[0]].append(
                {
                    "run_uuid": rid,
                    "name": spec["name"],
                    "source_type": "UNKNOWN",
                    "source_name": "",
                    "entry_point_name": "",
                    "user_id": "bench",
                    "status": spec["status"],
                    "start_time": spec["start_time"],
                    "end_time": spec["end_time"],
                    "deleted_time": None,
                    "source_version": "",
                    "lifecycle_stage": "active",
                    "artifact_uri": f"{artifact_root}/{rid}/artifacts",
                    "experiment_id": int(exp_id),
                }
            )
            rows[tables[1]].extend({"key": k2, "value": v, "run_uuid": rid} for k2, v in spec["tags"].items())
            rows[tables[2]].extend({"key": k2, "value": v, "run_uuid": rid} for k2, v in spec["params"].items())
            latest: dict[str, tuple[int, int, float]] = {}
            mrows = rows[tables[3]]
            for key, value, ts, step in spec["points"]:
                mrows.append(
                    {"key": key, "value": value, "timestamp": ts, "run_uuid": rid, "step": step, "is_nan": False}
                )
                cand = (step, ts, value)
                if key not in latest or cand > latest[key]:
                    latest[key] = cand
            rows[tables[4]].extend(
                {"key": key, "value": v, "timestamp": ts, "step": st, "is_nan": False, "run_uuid": rid}
                for key, (st, ts, v) in latest.items()
            )
            if (k + 1) % batch_runs == 0 or len(mrows) > 200_000:
                flush(con)
        flush(con)
    t_load = time.perf_counter() - t0 - t_schema
    if uri.startswith("postgresql"):
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as con:
            con.execute(sa.text("VACUUM ANALYZE"))
    engine.dispose()
    return {
        "kind": "sql",
        "uri": uri,
        "experiment_id": exp_id,
        "rows": counts,
        "schema_s": round(t_schema, 1),
        "load_s": round(t_load, 1),
        "seconds": round(time.perf_counter() - t0, 1),
    }


# --------------------------------------------------------------------------- verification


def _read_run(client: Any, rid: str, keys: tuple[str, ...]) -> dict[str, Any]:
    r = client.get_run(rid)
    hist = {}
    for k in keys:
        got = client.get_metric_history(rid, k)
        hist[k] = sorted((m.step, m.timestamp, m.value) for m in got)
    exp = client.get_experiment(r.info.experiment_id)
    return {
        "experiment": exp.name,
        "run_id": r.info.run_id,
        "run_name": r.info.run_name,
        "status": r.info.status,
        "start_time": r.info.start_time,
        "end_time": r.info.end_time,
        "user_id": r.info.user_id,
        "lifecycle_stage": r.info.lifecycle_stage,
        "params": dict(r.data.params),
        "tags": dict(r.data.tags),
        "metrics": dict(r.data.metrics),
        "history": hist,
    }


def _expected(spec: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    latest: dict[str, tuple[int, int, float]] = {}
    hist: dict[str, list] = {k: [] for k in keys}
    for key, value, ts, step in spec["points"]:
        if key not in latest or (step, ts, value) > latest[key]:
            latest[key] = (step, ts, value)
        if key in hist:
            hist[key].append((step, ts, value))
    return {
        "experiment": EXPERIMENT,
        "run_id": spec["run_id"],
        "run_name": spec["name"],
        "status": spec["status"],
        "start_time": spec["start_time"],
        "end_time": spec["end_time"],
        "user_id": "bench",
        "lifecycle_stage": "active",
        "params": spec["params"],
        "tags": spec["tags"],
        "metrics": {k: v[2] for k, v in latest.items()},
        "history": {k: sorted(v) for k, v in hist.items()},
    }


def verify(uri: str, n: int, history: int = HISTORY, against: str | None = None) -> dict[str, Any]:
    """Sample runs read back through MlflowClient equal the generator's content (and, with
    `against`, another store's reading of them). Raises AssertionError on a difference."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    other = MlflowClient(tracking_uri=against) if against else None
    checked = []
    for i in sorted({0, n // 2, n - 1}):
        spec, keys = run_spec(i, n), ("loss", "eval_de_accuracy")
        got = _read_run(client, spec["run_id"], keys)
        want = _expected(spec, keys)
        diff = [k for k in want if got[k] != want[k]]
        assert not diff, f"{uri}: run {i} differs in {diff}: {[(got[k], want[k]) for k in diff][:1]}"
        if other is not None:
            theirs = _read_run(other, spec["run_id"], keys)
            diff = [k for k in got if got[k] != theirs[k]]
            assert not diff, f"{uri} vs {against}: run {i} differs in {diff}"
        checked.append(spec["run_id"])
    spec = running_spec(history)
    got = _read_run(client, RUNNING_ID, ("eval_fr_loss",))
    want = _expected(spec, ("eval_fr_loss",))
    diff = [k for k in want if got[k] != want[k]]
    assert not diff, f"{uri}: the RUNNING run differs in {diff}"
    n_loss = len(client.get_metric_history(RUNNING_ID, "loss"))
    assert n_loss == history, f"{uri}: RUNNING run has {n_loss} loss points, not {history}"
    checked.append(RUNNING_ID)
    return {"checked_runs": checked, "against": against, "running_loss_points": n_loss}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", choices=("file", "sqlite", "postgresql"), required=True)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--history", type=int, default=HISTORY)
    ap.add_argument(
        "--out",
        required=True,
        help="file: the store folder; sqlite: the .db file; postgresql: a URI of an empty database",
    )
    ap.add_argument("--verify-against", default=None, help="another store's URI to compare sample runs with")
    a = ap.parse_args(argv)
    if a.kind == "file":
        info = write_file_store(Path(a.out).resolve(), a.runs, a.history)
    elif a.kind == "sqlite":
        p = Path(a.out).resolve()
        p.unlink(missing_ok=True)
        info = write_sql_store(f"sqlite:///{p}", a.runs, p.parent / (p.stem + "-artifacts"), a.history)
    else:
        info = write_sql_store(a.out, a.runs, Path("/tmp/scale-bench-artifacts"), a.history)
    info["verify"] = verify(info["uri"], a.runs, a.history, a.verify_against)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
