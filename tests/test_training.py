"""training/: offline XNLI runs through the real code paths (Trainer + transformers' MLflow
integration), checked from MLflow itself; sweeps (a grid, one run each, finished ones skipped);
checkpoints and a run killed after its first one, resumed into the same MLflow run; system
metrics; the shipped data set; the tiny-model builder; and the real-mode (hub) path up to where it
would need the network."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LANGS = ["en", "de", "fr", "es", "ar", "zh"]
TECHNIQUES = ["fine-tune", "feature-extraction"]
# Small enough to take seconds on 2 CPU cores, big enough for the loss to fall: 64 English
# pairs seen 12 times (96 steps), evaluated on all six languages every 12 steps (8 points).
RUN_ARGS = dict(num_train_samples=64, num_train_epochs=12, eval_steps=12, learning_rate=1e-3, seed=73)
EVAL_POINTS = 8


def _env_without_hub(tmp: Path) -> dict:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(tmp / "hf-home"),  # an empty cache: nothing real can be found locally
        XNLI_TINY_HOME=str(tmp / "tiny"),
        PYTHONPATH=str(ROOT),
    )
    return env


@pytest.fixture(scope="module")
def tiny_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("xnli-tiny")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XNLI_TINY_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def runs(tiny_home, tmp_path_factory):
    """One offline run per technique, into a fresh file store, exactly as `python -m training` does."""
    import mlflow
    from training import TrainConfig, run

    out = tmp_path_factory.mktemp("training-runs")
    results = {}
    with pytest.MonkeyPatch.context() as mp:
        # the package must allow MLflow 3's file store by itself
        mp.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        before = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
        for technique in TECHNIQUES:
            cfg = TrainConfig(
                technique=technique,
                model_names=["tiny-bert"],
                output_dir=out,
                save_model=True,
                verbose=False,
                **RUN_ARGS,
            )
            [results[technique]] = run(cfg)
        assert os.environ.get("MLFLOW_ALLOW_FILE_STORE") == "true"
        # the process-wide tracking URI is put back as it was
        assert (mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None) == before
    client = mlflow.MlflowClient(tracking_uri=(out / "mlruns").as_uri())
    return out, client, results


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --------------------------------------------------------------------------- shipped data


def test_shipped_data_set_is_xnli_shaped_and_parallel():
    from training.data import LABEL_NAMES, load_local

    data = ROOT / "training" / "data" / "xnli_tiny"
    train = _read_jsonl(data / "train.en.jsonl")
    assert len(train) >= 300
    valid = {lang: _read_jsonl(data / f"validation.{lang}.jsonl") for lang in LANGS}
    n = len(valid["en"])
    assert n >= 60
    for lang, rows in valid.items():
        assert len(rows) == n, lang
        for row in rows:
            assert set(row) == {"premise", "hypothesis", "label"}
            assert row["label"] in LABEL_NAMES and row["premise"].strip() and row["hypothesis"].strip()
        # parallel: the same pairs (same labels, in the same order) ...
        assert [r["label"] for r in rows] == [r["label"] for r in valid["en"]], lang
        if lang != "en":  # ... but translated
            assert not {r["premise"] for r in rows} & {r["premise"] for r in valid["en"]}, lang
            assert not {r["hypothesis"] for r in rows} & {r["hypothesis"] for r in valid["en"]}, lang
    # premises come in groups of three hypotheses, one of each label, in every language
    for lang, rows in valid.items():
        by_premise = {}
        for r in rows:
            by_premise.setdefault(r["premise"], []).append(r["label"])
        assert len(by_premise) == n // 3 and all(sorted(v) == sorted(LABEL_NAMES) for v in by_premise.values()), lang
    assert not {r["premise"] for r in train} & {r["premise"] for r in valid["en"]}
    assert {r["label"] for r in train} == set(LABEL_NAMES)
    # scripts: Arabic and Chinese really are Arabic and Chinese
    assert all(re.search(r"[\u0600-\u06ff]", r["premise"]) for r in valid["ar"])
    assert all(re.search(r"[\u4e00-\u9fff]", r["premise"]) for r in valid["zh"])

    ds = load_local("validation", "zh")  # through `datasets`, with XNLI's features
    assert ds.features["label"].names == list(LABEL_NAMES)
    assert ds.column_names == ["premise", "hypothesis", "label"]
    assert [LABEL_NAMES[i] for i in ds["label"]] == [r["label"] for r in valid["zh"]]


# --------------------------------------------------------------------------- tiny models


BUILD = "from training.tiny_models import ensure_tiny_model; print(ensure_tiny_model('tiny-bert'))"


@pytest.mark.slow
def test_tiny_models_build_deterministically_and_survive_a_race(tmp_path):
    from training.tiny_models import ensure_tiny_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    race_home = tmp_path / "race"
    env = dict(os.environ, XNLI_TINY_HOME=str(race_home), PYTHONPATH=str(ROOT))
    # another process and this one build the same model into the same cache at the same time
    proc = subprocess.Popen(
        [sys.executable, "-c", BUILD], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    mine = ensure_tiny_model("tiny-bert", root=race_home)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    raced = Path(out.strip().splitlines()[-1])
    assert raced == mine and raced.parent == race_home
    assert [p.name for p in race_home.iterdir()] == [raced.name]  # no temporary folder left behind
    # deterministic: an independent build elsewhere gives the very same files
    here = ensure_tiny_model("tiny-bert", root=tmp_path / "solo")
    assert here != raced
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (raced / name).read_bytes() == (here / name).read_bytes(), name

    tokenizer = AutoTokenizer.from_pretrained(raced)
    enc = tokenizer("Der Zug kam verspätet an.", "火车晚到了。")
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2 and "[UNK]" not in tokens
    assert "火" in tokens and set(enc["token_type_ids"]) == {0, 1}
    model = AutoModelForSequenceClassification.from_pretrained(raced, num_labels=3)
    assert model.config.model_type == "bert" and model.config.hidden_size == 64

    wide = ensure_tiny_model("tiny-bert-wide", root=tmp_path / "solo")
    assert AutoModelForSequenceClassification.from_pretrained(wide, num_labels=3).config.hidden_size > 64


# --------------------------------------------------------------------------- runs, read back from MLflow


@pytest.mark.slow
@pytest.mark.parametrize("technique", TECHNIQUES)
def test_run_is_tracked_in_mlflow_like_a_users_run(runs, technique, tiny_home):
    out, client, results = runs
    result = results[technique]
    experiment = client.get_experiment_by_name(f"xnli_{technique}")
    assert experiment is not None and result.experiment_id == experiment.experiment_id
    found = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in found] == [result.run_id]
    run = found[0]
    assert run.info.run_name == "tiny-bert" and run.info.status == "FINISHED"

    params = run.data.params  # TrainingArguments and the model config, logged by transformers
    assert params["learning_rate"] == "0.001"
    assert params["per_device_train_batch_size"] == "8" and params["seed"] == "73"
    assert params["run_name"] == "tiny-bert"
    assert Path(params["_name_or_path"]).parent == tiny_home
    assert params["model_type"] == "bert" and params["hidden_size"] == "64"

    metrics = set(run.data.metrics)
    for key in ("loss", "learning_rate", "grad_norm", "epoch", "train_loss", "train_runtime"):
        assert key in metrics, key
    for lang in LANGS:
        for suffix in ("accuracy", "loss"):
            history = client.get_metric_history(result.run_id, f"eval_{lang}_{suffix}")
            steps = [m.step for m in history]
            assert steps == [RUN_ARGS["eval_steps"] * k for k in range(1, EVAL_POINTS + 1)], (lang, suffix)
            if suffix == "accuracy":
                assert all(0.0 <= m.value <= 1.0 for m in history)
    assert len(client.get_metric_history(result.run_id, "loss")) == EVAL_POINTS

    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert artifacts == {f"confusion_matrix_{lang}.png" for lang in LANGS} | {
        "sample_predictions.txt",
        "requirements.txt",
    }
    dst = out / f"download-{technique}"
    png = Path(client.download_artifacts(result.run_id, "confusion_matrix_zh.png", str(dst)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(png) as img:
        assert img.format == "PNG" and img.width > 200 and img.height > 200
    text = Path(client.download_artifacts(result.run_id, "sample_predictions.txt", str(dst))).read_text("utf-8")
    for lang in LANGS:
        assert f"=== {lang}: accuracy" in text
    assert re.search(r"[\u4e00-\u9fff]", text) and re.search(r"[\u0600-\u06ff]", text)
    assert "predicted: " in text


@pytest.mark.slow
def test_feature_extraction_trains_only_the_head_and_fine_tune_everything(runs, tiny_home):
    from safetensors.torch import load_file

    out, _, results = runs
    fe, ft = results["feature-extraction"], results["fine-tune"]
    assert fe.changed_parameters and all(n.startswith("classifier.") for n in fe.changed_parameters)
    assert {"classifier.weight", "classifier.bias"} <= set(fe.changed_parameters)
    assert any(n.startswith("bert.encoder.") for n in fe.unchanged_parameters)
    assert "bert.embeddings.word_embeddings.weight" in ft.changed_parameters
    assert any(n.startswith("bert.encoder.layer.1.") for n in ft.changed_parameters)
    assert "classifier.weight" in ft.changed_parameters
    saved = json.loads((fe.output_dir / "parameter_changes.json").read_text())
    assert saved["changed"] == fe.changed_parameters

    # independently of the digests: compare the saved final weights with the checkpoint they started from
    [base_dir] = [p for p in tiny_home.iterdir() if p.name.startswith("tiny-bert-") and "wide" not in p.name]
    base = load_file(base_dir / "model.safetensors")
    for result, encoder_should_change in ((fe, False), (ft, True)):
        final = load_file(result.output_dir / "model" / "model.safetensors")
        assert "classifier.weight" in final
        diffs = {k: not final[f"bert.{k}"].equal(v) for k, v in base.items() if f"bert.{k}" in final}
        assert len(diffs) > 20
        if encoder_should_change:
            assert diffs["encoder.layer.0.attention.self.query.weight"] and sum(diffs.values()) > len(diffs) / 2
        else:
            assert not any(diffs.values())


@pytest.mark.slow
def test_training_loss_went_down(runs):
    _, client, results = runs
    loss = [m.value for m in client.get_metric_history(results["fine-tune"].run_id, "loss")]
    assert loss[-1] < loss[0] - 0.1, loss
    assert min(loss[-3:]) < min(loss[:3]), loss


@pytest.mark.slow
def test_runs_are_repeatable(runs, tmp_path):
    """Same seed, same data, same numbers."""
    from training import TrainConfig, run

    _, client, results = runs
    cfg = TrainConfig(
        technique="feature-extraction", model_names=["tiny-bert"], output_dir=tmp_path, verbose=False, **RUN_ARGS
    )
    [again] = run(cfg)
    again_client = type(client)(tracking_uri=(tmp_path / "mlruns").as_uri())
    for key in ("loss", "eval_de_loss", "eval_zh_accuracy"):
        first = [(m.step, m.value) for m in client.get_metric_history(results["feature-extraction"].run_id, key)]
        second = [(m.step, m.value) for m in again_client.get_metric_history(again.run_id, key)]
        assert first == second, key
    assert again.accuracy == results["feature-extraction"].accuracy


# --------------------------------------------------------------------------- sweeps, checkpoints, resume


def test_the_grid_names_its_runs_and_keeps_ids_stable():
    from training import TrainConfig
    from training.grid import config_id, plan, sweep_id

    cfg = TrainConfig(
        technique="fine-tune",
        model_names=["tiny-bert", "tiny-bert-wide"],
        learning_rate=[1e-3, 3e-4],
        batch_size=16,
        seed=[1, 2, 1],
    )
    specs = plan(cfg)
    assert [s.run_name for s in specs] == [
        f"{m}-lr{lr}-bs16-s{s}" for m in ("tiny-bert", "tiny-bert-wide") for lr in ("0.001", "0.0003") for s in (1, 2)
    ]
    assert [(s.model_name, s.learning_rate, s.batch_size, s.seed) for s in specs[:2]] == [
        ("tiny-bert", 1e-3, 16, 1),
        ("tiny-bert", 1e-3, 16, 2),
    ]
    # one configuration per model: the runs are named after the model, as before sweeps existed
    single = TrainConfig(technique="fine-tune", model_names=["tiny-bert", "tiny-bert-wide"], learning_rate=1e-3)
    assert [s.run_name for s in plan(single)] == ["tiny-bert", "tiny-bert-wide"]
    # a configuration's id does not depend on the sweep it is part of; a sweep's id is its grid's
    smaller = TrainConfig(
        technique="fine-tune", model_names=["tiny-bert"], learning_rate=[1e-3], batch_size=[16], seed=[1, 2]
    )
    assert config_id(smaller, plan(smaller)[1], "local") == config_id(cfg, specs[1], "local")
    assert config_id(cfg, specs[0], "local") != config_id(cfg, specs[1], "local")
    assert sweep_id(cfg, "local") == sweep_id(TrainConfig(**{**cfg.__dict__}), "local") != sweep_id(smaller, "local")
    other = TrainConfig(**{**smaller.__dict__, "technique": "feature-extraction"})
    assert config_id(other, plan(other)[0], "local") != config_id(smaller, plan(smaller)[0], "local")


# 2 learning rates x 2 batch sizes of one tiny model: 48 English pairs, 2 epochs (24 or 12 steps), evaluated
# in two languages every 3 steps (a few seconds a run).
SWEEP_ARGS = [
    "--model-names",
    "tiny-bert",
    "--learning-rate",
    "1e-3",
    "3e-3",
    "--batch-size",
    "4",
    "8",
    "--num-train-samples",
    "48",
    "--num-train-epochs",
    "2",
    "--eval-steps",
    "3",
    "--eval-datasets-names",
    "en",
    "de",
]
SWEEP_NAMES = {f"tiny-bert-lr{lr}-bs{bs}-s73": (lr, bs) for lr in ("0.001", "0.003") for bs in (4, 8)}
SYSTEM_KEYS = ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes")
TRAINER_KEYS = (
    "loss",
    "grad_norm",
    "learning_rate",
    "eval_en_accuracy",
    "eval_en_loss",
    "eval_de_accuracy",
    "eval_de_loss",
)


def _main(argv) -> tuple[int, str]:
    """`python -m training ...` in this process; (exit code, stderr)."""
    from training.commands import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue()


def _runs_by_name(client, technique="fine-tune") -> dict:
    exp = client.get_experiment_by_name(f"xnli_{technique}")
    return {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}


def _history(client, run_id, key):
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


@pytest.fixture(scope="module")
def sweep(tiny_home, tmp_path_factory):
    """The 2x2 sweep through the command line, with system metrics (the default), then the same command
    again."""
    import mlflow

    out = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # MLflow's 10 s would outlast these runs
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        first = _main(["fine-tune", *SWEEP_ARGS, "--output-dir", str(out)])
        client = mlflow.MlflowClient(tracking_uri=(out / "mlruns").as_uri())
        before = _runs_by_name(client)
        again = _main(["fine-tune", *SWEEP_ARGS, "--output-dir", str(out)])
    return dict(out=out, client=client, first=first, again=again, runs=before)


@pytest.mark.slow
def test_a_sweep_trains_its_grid_one_named_tagged_run_each(sweep):
    from training import TrainConfig
    from training.grid import sweep_id

    client, runs = sweep["client"], sweep["runs"]
    code, err = sweep["first"]
    assert code == 0, err
    assert set(runs) == set(SWEEP_NAMES)
    expected_sweep = sweep_id(
        TrainConfig(
            technique="fine-tune",
            model_names=["tiny-bert"],
            learning_rate=[1e-3, 3e-3],
            batch_size=[4, 8],
            num_train_samples=48,
            num_train_epochs=2,
            eval_steps=3,
            eval_languages=["en", "de"],
        ),
        "local",
    )
    for name, run in runs.items():
        lr, bs = SWEEP_NAMES[name]
        p, tags = run.data.params, run.data.tags
        assert run.info.status == "FINISHED"
        assert p["learning_rate"] == lr and p["per_device_train_batch_size"] == str(bs) and p["seed"] == "73"
        assert p["run_name"] == name and p["model_name"] == "tiny-bert" and p["hidden_size"] == "64"
        assert p["save_strategy"] == "no" and p["eval_languages"] == "en de"
        assert tags["technique"] == "fine-tune" and tags["sweep_id"] == expected_sweep
        steps = 48 // bs * 2
        assert [s for s, _ in _history(client, run.info.run_id, "loss")] == list(range(3, steps + 1, 3))
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == {
            "confusion_matrix_en.png",
            "confusion_matrix_de.png",
            "sample_predictions.txt",
            "requirements.txt",
        }
    assert len({r.data.tags["config_id"] for r in runs.values()}) == 4
    # the learning rate matters: the two rates give different losses for the same batches
    assert (
        _history(client, runs["tiny-bert-lr0.001-bs8-s73"].info.run_id, "loss")[-1]
        != _history(client, runs["tiny-bert-lr0.003-bs8-s73"].info.run_id, "loss")[-1]
    )

    # a progress line per run: n/N, the run's name, the time left (known after the first run)
    progress = re.findall(r"^\[(\d)/4\] (\S+) \(fine-tune\): training; (.*)$", err, re.M)
    assert [int(n) for n, _, _ in progress] == [1, 2, 3, 4]
    assert {name for _, name, _ in progress} == set(SWEEP_NAMES)
    assert all(re.fullmatch(r"about \d+ s left", left) for _, _, left in progress[1:]), progress


@pytest.mark.slow
def test_running_a_sweep_again_trains_nothing(sweep):
    client, runs = sweep["client"], sweep["runs"]
    code, err = sweep["again"]
    assert code == 0, err
    now = _runs_by_name(client)
    assert {n: r.info.run_id for n, r in now.items()} == {n: r.info.run_id for n, r in runs.items()}
    for name, run in now.items():
        assert run.info.end_time == runs[name].info.end_time
        assert run.data.metrics == runs[name].data.metrics
        assert f"] {name} (fine-tune): already FINISHED in run {run.info.run_id}; skipped" in err
    assert "training;" not in err


@pytest.mark.slow
def test_system_metrics_are_logged_by_default(sweep):
    client = sweep["client"]
    for run in sweep["runs"].values():
        for key in SYSTEM_KEYS:
            assert key in run.data.metrics, (run.info.run_name, sorted(run.data.metrics))
        cpu = client.get_metric_history(run.info.run_id, SYSTEM_KEYS[0])
        assert cpu and all(0 <= m.value <= 100 for m in cpu)


# Run in a child process: the sweep's lr 1e-3, batch 8 configuration with checkpoints, killed hard (as by
# the OOM killer or a lost node) at the first evaluation after its first checkpoint, once that evaluation's
# first language reached MLflow: the store then holds steps 3 and 6 of the loss, step 3 only of
# eval_de_*, and checkpoint-3.
CRASH = """
import json, os, signal, sys
import mlflow
from transformers import TrainerCallback
from training import TrainConfig, run

class KillAfterFirstCheckpoint(TrainerCallback):
    saved = 0
    def on_save(self, args, state, control, **kwargs):
        self.saved += 1
    def on_evaluate(self, args, state, control, **kwargs):
        if self.saved:
            mlflow.flush_async_logging()
            os.kill(os.getpid(), signal.SIGKILL)

run(TrainConfig(callbacks=[KillAfterFirstCheckpoint()], **json.loads(sys.argv[1])))
print("not killed")
"""


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_checkpoint_into_the_same_run(sweep, tiny_home, tmp_path, monkeypatch):
    import mlflow

    out = tmp_path / "logs"
    cfg = dict(
        technique="fine-tune",
        model_names=["tiny-bert"],
        learning_rate=1e-3,
        batch_size=8,
        num_train_samples=48,
        num_train_epochs=2,
        eval_steps=3,
        eval_languages=["en", "de"],
        output_dir=str(out),
        save_strategy="steps",
        system_metrics=False,
        verbose=False,
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XNLI_TINY_HOME": str(tiny_home), "MLFLOW_ALLOW_FILE_STORE": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [sys.executable, "-c", CRASH, json.dumps(cfg)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr[-3000:]

    client = mlflow.MlflowClient(tracking_uri=(out / "mlruns").as_uri())
    [(name, killed)] = _runs_by_name(client).items()
    rid, exp_id = killed.info.run_id, killed.info.experiment_id
    assert name == "tiny-bert" and killed.info.status == "RUNNING"  # nobody closed it
    assert [s for s, _ in _history(client, rid, "loss")] == [3, 6]
    assert [s for s, _ in _history(client, rid, "eval_de_loss")] == [3]
    checkpoints = {m.name: m for m in client.search_logged_models([exp_id])}
    assert set(checkpoints) == {"checkpoint-3"}
    assert checkpoints["checkpoint-3"].source_run_id == rid and checkpoints["checkpoint-3"].status.name == "READY"

    # sampled as often as in the sweep, which had them: had they been on, the resumed part would have some
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    code, err = _main(["fine-tune", "--resume", rid, "--output-dir", str(out), "--no-system-metrics", "--quiet"])
    assert code == 0, err

    [(name, resumed)] = _runs_by_name(client).items()  # still one run: the same one, finished
    assert resumed.info.run_id == rid and resumed.info.status == "FINISHED"
    # the curves continue: each step once, no gap, no repeat ...
    for key in TRAINER_KEYS:
        assert [s for s, _ in _history(client, rid, key)] == [3, 6, 9, 12], key
    # ... and they are the very curves of the same configuration trained without interruption (the
    # sweep's): weights, optimizer, schedule and data order came back from checkpoint-3
    reference = sweep["runs"]["tiny-bert-lr0.001-bs8-s73"].info.run_id
    for key in TRAINER_KEYS:
        assert _history(client, rid, key) == _history(sweep["client"], reference, key), key
    assert {m.name for m in client.search_logged_models([exp_id]) if m.source_run_id == rid} == {
        f"checkpoint-{s}" for s in (3, 6, 9, 12)
    }
    assert {a.path for a in client.list_artifacts(rid)} == {
        "confusion_matrix_en.png",
        "confusion_matrix_de.png",
        "sample_predictions.txt",
        "requirements.txt",
    }
    # system metrics were off for both attempts
    assert not [k for k in resumed.data.metrics if k.startswith("system/")]

    # a finished run has nothing to resume
    code, err = _main(["fine-tune", "--resume", rid, "--output-dir", str(out), "--quiet"])
    assert code == 2 and err.count("\n") == 1 and "is FINISHED: nothing to resume" in err


@pytest.mark.slow
def test_resume_refuses_what_it_cannot_continue_in_one_line(sweep, tmp_path):
    out, client = sweep["out"], sweep["client"]
    run = sweep["runs"]["tiny-bert-lr0.003-bs4-s73"]
    # a copy of a sweep run, left RUNNING without any checkpoint (trained with --save-strategy no)
    tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
    copy = client.create_run(run.info.experiment_id, run_name="copy", tags=tags).info.run_id
    from mlflow.entities import Param

    client.log_batch(copy, params=[Param(k, v) for k, v in run.data.params.items()])
    cases = [
        (["fine-tune", "--resume", copy], "has no checkpoint in MLflow"),
        (["feature-extraction", "--resume", copy], f"is a fine-tune run: python -m training fine-tune --resume {copy}"),
        (["fine-tune", "--resume", "0123456789abcdef"], "there is no run '0123456789abcdef'"),
        (["fine-tune", "--resume", copy, "--learning-rate", "1e-3"], "drop --learning-rate"),
        (["fine-tune", "--learning-rate", "1e-3"], "--model-names is required"),
        (["fine-tune", "--model-names", "tiny-bert", "--learning-rate", "1e-3", "0"], "must be positive"),
    ]
    for argv, message in cases:
        code, err = _main([*argv, "--output-dir", str(out), "--quiet"])
        assert code == 2, (argv, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, (argv, err)
    code, err = _main(["fine-tune", "--resume", "x", "--output-dir", str(tmp_path / "nothing-here"), "--quiet"])
    assert code == 2 and "there is no MLflow store at" in err
    assert not (tmp_path / "nothing-here").exists()
    with pytest.raises(SystemExit) as exit_info:  # argparse's own errors: one line too
        _main(["fine-tune", "--model-names", "tiny-bert", "--batch-size", "eight"])
    assert exit_info.value.code == 2
    assert len(_runs_by_name(client)) == 5  # nothing trained


# --------------------------------------------------------------------------- provenance: git and packages


# One training step of the smallest run, evaluated in English: the command line's own path, in seconds.
TINY_ARGS = ["fine-tune", "--model-names", "tiny-bert", "--num-train-samples", "8", "--num-train-epochs", "1"]
TINY_ARGS += ["--eval-steps", "1", "--eval-datasets-names", "en", "--no-system-metrics", "--quiet"]
GIT_TAGS = ("mlflow.source.git.commit", "mlflow.source.git.branch", "mlflow.source.git.repoURL")
SECRET_REMOTE = "https://someone:s3cret@git.example.com/team/xnli-study.git"
# the packages the issue names; the file may list more (what else a run uses), each at its installed version
CORE_PACKAGES = {"torch", "transformers", "datasets", "tokenizers", "accelerate", "mlflow", "numpy"}


def _git(cwd: Path, *args) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _new_checkout(path: Path, branch: str, remote: str) -> str:
    """A git repository with one commit on ``branch`` and ``remote`` as its origin; returns the commit."""
    path.mkdir()
    _git(path, "init", "-q", "-b", branch)
    (path / "study.md").write_text("a study\n")
    _git(path, "add", "study.md")
    _git(path, "-c", "user.name=Study", "-c", "user.email=study@example.com", "commit", "-q", "-m", "start")
    _git(path, "remote", "add", "origin", remote)
    commit = _git(path, "rev-parse", "HEAD")
    assert len(commit) == 40, f"git could not make a repository in {path}"
    return commit


def _cli_run(cmd: list, cwd: Path, out: Path, tiny_home: Path):
    """Train TINY_ARGS with ``cmd`` in a child process started in ``cwd``; the run, read back from MLflow."""
    import mlflow

    env = {**os.environ, "PYTHONPATH": str(ROOT), "XNLI_TINY_HOME": str(tiny_home), "MLFLOW_ALLOW_FILE_STORE": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(
        [*cmd, *TINY_ARGS, "--output-dir", str(out)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = mlflow.MlflowClient(tracking_uri=(out / "mlruns").as_uri())
    [run] = _runs_by_name(client).values()
    return client, run


@pytest.fixture(scope="module")
def provenance(tiny_home, tmp_path_factory):
    """Two runs started in a git checkout made here (``study``), outside the project: one by ``python -c``
    (MLflow finds no checkout for an entry point that is no file), one by ``python -m training``
    (MLflow looks at training/__main__.py: the project's checkout, when it is one)."""
    tmp = tmp_path_factory.mktemp("provenance")
    study = tmp / "study"
    commit = _new_checkout(study, "xnli-study", SECRET_REMOTE)
    by_c = _cli_run(
        [sys.executable, "-c", "import sys; from training.commands import main; sys.exit(main())"],
        study,
        tmp / "c",
        tiny_home,
    )
    by_m = _cli_run([sys.executable, "-m", "training"], study, tmp / "m", tiny_home)
    return dict(study=study, commit=commit, by_c=by_c, by_m=by_m, tmp=tmp)


@pytest.mark.slow
def test_a_run_logs_the_installed_versions_of_its_packages(provenance):
    client, run = provenance["by_c"]
    assert "requirements.txt" in {a.path for a in client.list_artifacts(run.info.run_id)}  # at the root
    path = client.download_artifacts(run.info.run_id, "requirements.txt", str(provenance["tmp"] / "req"))
    lines = Path(path).read_text().splitlines()
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+==[^=\s]+", line) for line in lines), lines  # pip's name==version
    pins = dict(line.split("==") for line in lines)
    assert len(pins) == len(lines), lines
    assert not CORE_PACKAGES - {name.lower() for name in pins}, lines
    for name, version in pins.items():
        assert version == metadata.version(name), (name, version)


@pytest.mark.slow
def test_a_run_started_in_a_git_checkout_carries_its_git_tags(provenance):
    # `python -c`: MLflow records nothing of git itself; the checkout the command runs in is used
    _, run = provenance["by_c"]
    tags = run.data.tags
    assert tags["mlflow.source.name"] == "-c"
    assert {k: tags.get(k) for k in GIT_TAGS} == {
        "mlflow.source.git.commit": provenance["commit"],
        "mlflow.source.git.branch": "xnli-study",
        "mlflow.source.git.repoURL": "https://git.example.com/team/xnli-study.git",  # no credentials
    }
    assert not [v for v in tags.values() if "s3cret" in v]

    # `python -m training` (as `make demo` runs it): MLflow's own tags, from the checkout training/ lives
    # in, win over the working directory's; outside a checkout (an installed package) it is the study's
    _, run = provenance["by_m"]
    tags = run.data.tags
    assert Path(tags["mlflow.source.name"]) == ROOT / "training" / "__main__.py"
    project = _git(ROOT / "training", "rev-parse", "HEAD")
    if project:
        assert tags["mlflow.source.git.commit"] == project
        assert tags.get("mlflow.source.git.branch") == (_git(ROOT, "symbolic-ref", "--short", "-q", "HEAD") or None)
        assert tags.get("mlflow.source.git.repoURL") != "https://git.example.com/team/xnli-study.git"
    else:
        assert tags["mlflow.source.git.commit"] == provenance["commit"]
        assert tags["mlflow.source.git.branch"] == "xnli-study"


def test_outside_a_git_checkout_there_are_no_git_tags(tmp_path):
    from training.provenance import git_tags

    if _git(tmp_path, "rev-parse", "HEAD") or _git(tmp_path, "rev-parse", "--git-dir"):
        pytest.skip(f"{tmp_path} lies inside a git checkout")
    assert git_tags(str(tmp_path)) == {}


# --------------------------------------------------------------------------- command line


def test_cli_rejects_a_language_the_offline_data_lacks_in_one_line(tmp_path, capsys):
    from training.commands import main

    code = main(
        [
            "fine-tune",
            "--model-names",
            "tiny-bert",
            "--eval-datasets-names",
            "en",
            "sw",
            "--output-dir",
            str(tmp_path),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err and "sw" in err
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra, what",
    [([], "the XNLI data set"), (["--data-source", "local"], "the model 'xlm-roberta-base'")],
    ids=["hub-data", "hub-model"],
)
def test_real_mode_without_the_hub_is_a_one_line_error(tmp_path, extra, what):
    cmd = [
        sys.executable,
        "-m",
        "training",
        "fine-tune",
        "--model-names",
        "xlm-roberta-base",
        "--output-dir",
        str(tmp_path / "logs"),
        *extra,
    ]
    proc = subprocess.run(
        cmd, env=_env_without_hub(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert f"cannot get {what} from the Hugging Face hub" in errors[0]
    assert "--model-names tiny-bert tiny-bert-wide" in errors[0]
    assert proc.stdout == ""


def test_help_lists_the_flags():
    proc = subprocess.run(
        [sys.executable, "-m", "training", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    for flag in (
        "--model-names",
        "--eval-datasets-names",
        "--output-dir",
        "--batch-size",
        "--num-train-samples",
        "--num-train-epochs",
        "--eval-steps",
        "--learning-rate",
        "--seed",
        "--tracking-uri",
        "--system-metrics",
        "--no-system-metrics",
        "--save-strategy",
        "--resume",
    ):
        assert flag in proc.stdout, flag
    assert "fine-tune" in proc.stdout and "feature-extraction" in proc.stdout
