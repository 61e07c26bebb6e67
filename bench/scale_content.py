"""What every run of bench/scale.py's stores holds (gen_scale.py writes it into each kind of store;
verify() reads it back against this).

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
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator
from typing import Any

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
