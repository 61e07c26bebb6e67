"""training/: offline XNLI runs through the real code paths (Trainer + transformers' MLflow
integration), checked from MLflow itself; the shipped data set; the tiny-model builder; and the
real-mode (hub) path up to where it would need the network."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
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

    from training.experiment import TrainConfig, run

    out = tmp_path_factory.mktemp("training-runs")
    results = {}
    with pytest.MonkeyPatch.context() as mp:
        # the package must allow MLflow 3's file store by itself
        mp.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        before = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
        for technique in TECHNIQUES:
            cfg = TrainConfig(technique=technique, model_names=["tiny-bert"], output_dir=out,
                              save_model=True, verbose=False, **RUN_ARGS)
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
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from training.tiny_models import ensure_tiny_model

    race_home = tmp_path / "race"
    env = dict(os.environ, XNLI_TINY_HOME=str(race_home), PYTHONPATH=str(ROOT))
    # another process and this one build the same model into the same cache at the same time
    proc = subprocess.Popen([sys.executable, "-c", BUILD], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
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
    assert artifacts == {f"confusion_matrix_{lang}.png" for lang in LANGS} | {"sample_predictions.txt"}
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
    from training.experiment import TrainConfig, run

    _, client, results = runs
    cfg = TrainConfig(technique="feature-extraction", model_names=["tiny-bert"], output_dir=tmp_path,
                      verbose=False, **RUN_ARGS)
    [again] = run(cfg)
    again_client = type(client)(tracking_uri=(tmp_path / "mlruns").as_uri())
    for key in ("loss", "eval_de_loss", "eval_zh_accuracy"):
        first = [(m.step, m.value) for m in client.get_metric_history(results["feature-extraction"].run_id, key)]
        second = [(m.step, m.value) for m in again_client.get_metric_history(again.run_id, key)]
        assert first == second, key
    assert again.accuracy == results["feature-extraction"].accuracy


# --------------------------------------------------------------------------- command line


def test_cli_rejects_a_language_the_offline_data_lacks_in_one_line(tmp_path, capsys):
    from training.cli import main

    code = main(["fine-tune", "--model-names", "tiny-bert", "--eval-datasets-names", "en", "sw",
                 "--output-dir", str(tmp_path), "--quiet"])
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
    cmd = [sys.executable, "-m", "training", "fine-tune", "--model-names", "xlm-roberta-base",
           "--output-dir", str(tmp_path / "logs"), *extra]
    proc = subprocess.run(cmd, env=_env_without_hub(tmp_path), cwd=tmp_path, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert f"cannot get {what} from the Hugging Face hub" in errors[0]
    assert "--model-names tiny-bert tiny-bert-wide" in errors[0]
    assert proc.stdout == ""


def test_help_lists_the_flags():
    proc = subprocess.run([sys.executable, "-m", "training", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0
    for flag in ("--model-names", "--eval-datasets-names", "--output-dir", "--batch-size", "--num-train-samples",
                 "--num-train-epochs", "--eval-steps", "--learning-rate", "--seed", "--tracking-uri",
                 "--system-metrics"):
        assert flag in proc.stdout, flag
    assert "fine-tune" in proc.stdout and "feature-extraction" in proc.stdout
