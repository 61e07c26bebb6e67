"""`syncer backfill` against real MLflow stores (file, sqlite, a real server), read back
through Aim's own SDK."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from syncer.cli import cli

from conftest import T0, client_for, populate, read_aim, run_syncer, same_float

DATA = Path(__file__).parent / "data"


def backfill(uri: str, repo: Path, *extra: str, exit_code: int = 0) -> str:
    """In-process `syncer backfill` (real MLflow, real Aim); returns stdout."""
    res = CliRunner().invoke(cli, ["backfill", "--mlflow-tracking-uri", uri, "--aim-repo", str(repo), *extra])
    assert res.exit_code == exit_code, (res.output, res.exception)
    return res.output


def by_name(aim: dict) -> dict:
    return {r["name"]: r for r in aim.values()}


def metric(run: dict, name: str, **ctx) -> dict:
    return run["metrics"][(name, tuple(sorted(ctx.items())))]


def test_backfill_fidelity(any_store, tmp_path, aim_repo):
    kind, uri = any_store
    logged = populate(uri, tmp_path, suffix=f"-{tmp_path.name}")
    out = backfill(uri, aim_repo, "--experiment", logged["experiment"])
    assert "5 runs" in out and "90 points" in out and "2 artifacts" in out, out

    aim = read_aim(aim_repo)
    runs = logged["runs"]
    assert set(aim) == {r["run_id"] for r in runs.values()}  # exactly one Aim run per MLflow run
    assert len({r["hash"] for r in aim.values()}) == 5

    fin = aim[runs["finished"]["run_id"]]
    assert fin["name"] == "bert-base-multilingual-cased"
    assert fin["experiment"] == logged["experiment"]  # unicode survives
    assert fin["description"] == "baseline"
    hp = fin["params"]["hparams"]
    assert hp["learning_rate"] == 5e-05 and isinstance(hp["learning_rate"], float)
    assert hp["per_device_train_batch_size"] == 8 and isinstance(hp["per_device_train_batch_size"], int)
    assert hp["fp16"] is False and hp["label_names"] is None and hp["layers"] == [0, 1]
    assert hp["id2label"] == "{0: 'a', 1: 'b'}"  # int keys: not a JSON object, kept as logged
    assert hp["_name_or_path"] == "bert-base-multilingual-cased"
    assert hp["long"] == "x" * 6000
    ml = fin["params"]["mlflow"]
    assert ml["run_id"] == runs["finished"]["run_id"] and ml["status"] == "FINISHED"
    assert ml["start_time"] == T0 and ml["end_time"] == T0 + 3_600_000 and ml["user"] == "ann"
    assert ml["experiment_id"] == logged["experiment_id"] and ml["artifact_uri"]
    assert ml["experiment_tags"] == {"team": "nlp"}
    assert fin["params"]["tags"] == {"team": "nlp", "stage": "final"}
    assert fin["labels"] == ["stage=final", "team=nlp"]

    # every point, with MLflow's own timestamp
    loss = metric(fin, "loss")
    assert loss["steps"] == [s for s, _, _ in runs["finished"]["loss"]]
    assert loss["values"] == [v for _, v, _ in runs["finished"]["loss"]]
    assert loss["timestamps"] == [ts / 1000 for _, _, ts in runs["finished"]["loss"]]
    for lang, pts in runs["finished"]["evals"].items():
        acc = metric(fin, "accuracy", subset="eval", dataset=lang, lang=lang)
        assert acc["values"] == [v for _, v, _ in pts]
        assert acc["timestamps"] == [ts / 1000 for _, _, ts in pts]
        assert len(metric(fin, "loss", subset="eval", dataset=lang, lang=lang)["steps"]) == 5
    weird = metric(fin, "weird")
    assert weird["steps"] == [0, 1, 2, 10**12]
    truth = sorted(client_for(uri).get_metric_history(runs["finished"]["run_id"], "weird"), key=lambda m: m.step)
    assert math.isnan(weird["values"][0]) and weird["values"][3] == 1.5
    assert all(same_float(a, m.value) for a, m in zip(weird["values"], truth))  # sqlite stores +-inf as +-max float
    assert weird["timestamps"] == [m.timestamp / 1000 for m in truth]
    dup = metric(fin, "dup")  # two points at step 5: the later by timestamp wins
    assert (
        dup["steps"] == [5, 6]
        and dup["values"] == [2.0, 3.0]
        and dup["timestamps"] == [(T0 + 200) / 1000, (T0 + 300) / 1000]
    )

    # times, status, nesting, archive
    assert fin["created_at"] == pytest.approx(T0 / 1000, abs=1e-3)
    assert fin["end_time"] == pytest.approx((T0 + 3_600_000) / 1000, abs=1e-3)
    assert fin["active"] is False and fin["archived"] is False
    failed = aim[runs["failed"]["run_id"]]
    assert failed["params"]["mlflow"]["status"] == "FAILED" and failed["active"] is False
    assert metric(failed, "loss", subset="train")["values"] == [0.5]
    child = aim[runs["child"]["run_id"]]
    assert child["params"]["mlflow"]["parent_run_id"] == runs["failed"]["run_id"]
    assert child["params"]["mlflow"]["parent_run_name"] == "xlm-roberta-base"
    assert "xlm-roberta-base" in child["description"]
    assert metric(child, "acc", subset="val")["values"] == [0.7]
    deleted = aim[runs["deleted"]["run_id"]]
    assert deleted["archived"] is True
    assert metric(deleted, "loss")["values"] == [1.0]  # archived, never deleted: its data stays
    running = aim[runs["running"]["run_id"]]
    assert running["active"] is True and running["end_time"] is None

    # artifacts: image and text converted once, the rest listed
    arts = {a["path"]: a for a in fin["params"]["artifacts"]}
    assert set(arts) == {"plots/confusion_de.png", "predictions.txt", "checkpoints/model.bin"}
    assert arts["checkpoints/model.bin"]["copied_as"] is None and arts["checkpoints/model.bin"]["size"] == 2048
    assert arts["plots/confusion_de.png"]["copied_as"] == "image"
    assert arts["predictions.txt"]["copied_as"] == "text"
    assert all(a["uri"].endswith(p) for p, a in arts.items())
    # media names pass the mapping, no extension; `<name>_de` beside the run's `eval_de_*` metrics gets {lang: de}
    assert fin["objects"] == ["plots/confusion", "predictions"]
    assert arts["plots/confusion_de.png"]["context"] == {"lang": "de"}

    # dataset inputs
    assert fin["params"]["datasets"] == [
        {
            "name": "xnli-en-train",
            "digest": "abc123",
            "source_type": "local",
            "source": '{"uri": "data/en.jsonl"}',
            "context": "training",
        }
    ]


def test_runs_visible_to_aim_queries(tmp_path, aim_repo):
    from aim import Repo

    uri = str(tmp_path / "mlruns")
    populate(uri, tmp_path)
    backfill(uri, aim_repo)
    repo = Repo.from_path(str(aim_repo))
    assert len(list(repo.iter_runs())) == 5
    hits = list(repo.query_metrics("metric.name == 'accuracy' and metric.context.lang == 'de'").iter())
    assert len(hits) == 1
    runs = [r.run for r in repo.query_runs("run.mlflow.status == 'FAILED'", report_mode=0).iter_runs()]
    assert [r.name for r in runs] == ["xlm-roberta-base"]


def test_second_backfill_writes_nothing(tmp_path, aim_repo):
    uri = str(tmp_path / "mlruns")
    populate(uri, tmp_path)
    backfill(uri, aim_repo)
    before = read_aim(aim_repo)
    out = backfill(uri, aim_repo)
    assert " 0 points, 0 artifacts" in out, out
    after = read_aim(aim_repo)
    assert repr(before) == repr(after)


def test_repo_path_forms_and_env_uri(tmp_path):
    uri = str(tmp_path / "mlruns")
    populate(uri, tmp_path)
    res = CliRunner().invoke(
        cli, ["backfill", "--aim-repo", str(tmp_path / "logs" / ".aim")], env={"MLFLOW_TRACKING_URI": uri}
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "logs" / ".aim").is_dir()
    # the root and its .aim folder are the same repo: nothing new the second time
    out = backfill(uri, tmp_path / "logs")
    assert " 0 points" in out
    assert len(read_aim(tmp_path / "logs")) == 5


def test_experiment_filter_by_name_and_id(tmp_path, aim_repo):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    a = populate(uri, tmp_path, suffix="-a")
    c = MlflowClient(uri)
    other = c.create_experiment("other", artifact_location=(tmp_path / "o").as_uri())
    c.create_run(other, run_name="elsewhere")
    backfill(uri, aim_repo, "--experiment", a["experiment_id"])
    assert {r["experiment"] for r in read_aim(aim_repo).values()} == {a["experiment"]}
    parent = a["runs"]["failed"]["run_id"]
    c.create_run(other, run_name="nested-elsewhere", tags={"mlflow.parentRunId": parent})
    backfill(uri, aim_repo, "--experiment", "other")
    got = by_name(read_aim(aim_repo))
    assert "elsewhere" in got
    # its parent is not listed this time (another experiment): its name is the one synced before
    assert got["nested-elsewhere"]["params"]["mlflow"]["parent_run_name"] == "xlm-roberta-base"


def test_artifact_options(tmp_path):
    uri = str(tmp_path / "mlruns")
    populate(uri, tmp_path)
    backfill(uri, tmp_path / "none", "--no-artifacts")
    fin = by_name(read_aim(tmp_path / "none"))["bert-base-multilingual-cased"]
    assert fin["params"]["artifacts"] is None
    out = backfill(uri, tmp_path / "excl", "--exclude-artifacts", "*.png", "--exclude-artifacts", "checkpoints/*")
    assert "1 artifacts" in out
    fin = by_name(read_aim(tmp_path / "excl"))["bert-base-multilingual-cased"]
    assert [a["path"] for a in fin["params"]["artifacts"]] == ["predictions.txt"]
    out = backfill(uri, tmp_path / "small", "--max-artifact-size", "60")  # the png is 77 bytes, the txt 53
    assert "1 artifacts" in out
    arts = {
        a["path"]: a["copied_as"]
        for a in by_name(read_aim(tmp_path / "small"))["bert-base-multilingual-cased"]["params"]["artifacts"]
    }
    assert arts == {"plots/confusion_de.png": None, "predictions.txt": "text", "checkpoints/model.bin": None}
    # a step image's compressed .webp twin goes with its excluded .png
    import numpy as np

    run_id = fin["params"]["mlflow"]["run_id"]
    client_for(uri).log_image(run_id, np.zeros((8, 8, 3), dtype=np.uint8), key="samples", step=1, synchronous=True)
    assert any(p.endswith("compressed.webp") for p in _artifact_paths(uri, run_id))
    backfill(uri, tmp_path / "excl", "--exclude-artifacts", "*.png", "--exclude-artifacts", "checkpoints/*")
    fin = by_name(read_aim(tmp_path / "excl"))["bert-base-multilingual-cased"]
    assert [a["path"] for a in fin["params"]["artifacts"]] == ["predictions.txt"]
    assert fin["objects"] == ["predictions"]  # the text; no image sequence


def _artifact_paths(uri: str, run_id: str) -> list[str]:
    client, out, stack = client_for(uri), [], [None]
    while stack:
        for f in client.list_artifacts(run_id, stack.pop()):
            (stack if f.is_dir else out).append(f.path)
    return out


def test_context_map_options(tmp_path):
    uri = str(tmp_path / "mlruns")
    populate(uri, tmp_path)
    backfill(uri, tmp_path / "raw", "--no-context-map")
    fin = by_name(read_aim(tmp_path / "raw"))["bert-base-multilingual-cased"]
    assert ("eval_de_accuracy", ()) in fin["metrics"] and (
        "accuracy",
        (("dataset", "de"), ("lang", "de"), ("subset", "eval")),
    ) not in fin["metrics"]
    rules = tmp_path / "rules.toml"
    rules.write_text(
        "[[rule]]\npattern = '^eval_(?P<language>[a-z]{2})_(?P<name>accuracy)$'\ncontext = { split = 'dev' }\n"
    )
    backfill(uri, tmp_path / "rules", "--context-map", str(rules))
    fin = by_name(read_aim(tmp_path / "rules"))["bert-base-multilingual-cased"]
    assert metric(fin, "accuracy", language="de", split="dev")["values"][0] == pytest.approx(0.3)
    assert metric(fin, "loss", subset="eval", dataset="de", lang="de")  # defaults still apply after the rules


@pytest.mark.parametrize("version", ["1.30.1", "2.9.2"])
def test_legacy_file_stores(version, tmp_path, aim_repo):
    # a copy elsewhere: the store's recorded artifact paths point at the machine that wrote it
    store = shutil.copytree(DATA / f"legacy-mlflow-{version}", tmp_path / "mlruns")
    out = backfill(str(store), aim_repo)
    assert "1 runs" in out and "15 points" in out and "1 artifacts" in out, out
    (run,) = read_aim(aim_repo).values()
    assert run["name"] == "legacy-run" and run["experiment"] == "legacy-experiment"
    assert run["params"]["hparams"] == {"learning_rate": 0.001, "epochs": 3}
    assert run["labels"] == ["team=old"]
    loss = metric(run, "loss")
    assert loss["steps"] == [0, 1, 2, 3, 4]
    assert loss["timestamps"] == [1_600_000_000 + s for s in range(5)]
    assert metric(run, "accuracy", subset="eval", dataset="de", lang="de")["values"][-1] == pytest.approx(0.9)
    assert run["created_at"] == pytest.approx(1_600_000_000, abs=1e-3)
    assert run["end_time"] == pytest.approx(1_600_000_060, abs=1e-3)
    assert run["objects"] == ["notes"]
    # the index stamped the chunk as it stays: the next start has nothing to index again (the
    # note's Text once reopened the closed chunk for writing while the index copied it)
    from syncer.aim import open_repo
    from syncer.aim.index import index_missing

    repo, _ = open_repo(aim_repo)
    try:
        assert index_missing(repo) == []
    finally:
        repo.close()


def test_file_uri_and_mlflow3_metric_lines(tmp_path, aim_repo):
    """`file:` URIs work, and MLflow 3's 5-field metric lines (with a dataset) keep their step
    (MLflow's own FileStore reader drops it) and get a `dataset` context."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    store = tmp_path / "mlruns"
    c = MlflowClient(store.as_uri())
    exp = c.create_experiment("e")
    run = c.create_run(exp, run_name="r", start_time=T0)
    c.log_batch(run.info.run_id, metrics=[Metric("accuracy", 0.5, T0 + 1, 3)])
    metric_file = next(store.glob("*/*/metrics/accuracy"))
    with open(metric_file, "a") as f:  # the line format MLflow 3 writes for a metric with a dataset
        f.write(f"{T0 + 2} 0.75 7 holdout 1a2b3c\n")
    c.set_terminated(run.info.run_id, end_time=T0 + 3)
    backfill(store.as_uri(), aim_repo)
    (r,) = read_aim(aim_repo).values()
    assert metric(r, "accuracy")["steps"] == [3]
    assert metric(r, "accuracy", dataset="holdout") == {"steps": [7], "values": [0.75], "timestamps": [(T0 + 2) / 1000]}


# ---------------------------------------------------------------------------------------------
# bad input: one line, exit code 2, no traceback (through the real console script)


def _one_line_error(p, *needles):
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), p.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_bad_inputs(tmp_path, aim_repo):
    store = tmp_path / "mlruns"
    populate(str(store), tmp_path)
    (tmp_path / "plain").mkdir()
    (tmp_path / "afile").write_text("x")
    cases = [
        (["--mlflow-tracking-uri", str(tmp_path / "missing")], "does not exist"),
        (["--mlflow-tracking-uri", str(tmp_path / "plain")], "not an MLflow file store"),
        (["--mlflow-tracking-uri", f"sqlite:///{tmp_path / 'nope.db'}"], "no MLflow database"),
        (["--mlflow-tracking-uri", "ftp://example.org/x"], "unsupported"),
        (["--mlflow-tracking-uri", "http://user:s3cret@127.0.0.1:9"], "unreachable"),
        (["--mlflow-tracking-uri", str(store), "--experiment", "no-such-exp"], "unknown MLflow experiment"),
        (["--mlflow-tracking-uri", str(store), "--context-map", str(tmp_path / "none.toml")], "does not exist"),
        ([], "no MLflow tracking URI"),
    ]
    for args, needle in cases:
        p = run_syncer("backfill", "--aim-repo", str(aim_repo), *args, env={"MLFLOW_TRACKING_URI": ""})
        _one_line_error(p, needle)
        assert "s3cret" not in p.stderr
    # a repo that cannot be created (its parent is a file; as root, permissions would not stop us)
    p = run_syncer("backfill", "--mlflow-tracking-uri", str(store), "--aim-repo", str(tmp_path / "afile" / "repo"))
    _one_line_error(p, "Aim repo")
    # bad rules file content
    bad = tmp_path / "bad.toml"
    bad.write_text("[[rule]]\npattern='('\nname='x'\n")
    p = run_syncer(
        "backfill", "--mlflow-tracking-uri", str(store), "--aim-repo", str(aim_repo), "--context-map", str(bad)
    )
    _one_line_error(p, "bad pattern")
    assert not (aim_repo / ".aim").exists() or read_aim(aim_repo) == {}


def test_broken_runs_warn_and_the_rest_converts(tmp_path, aim_repo):
    store = tmp_path / "mlruns"
    logged = populate(str(store), tmp_path)
    runs = logged["runs"]
    exp_dir = store / logged["experiment_id"]
    (exp_dir / runs["failed"]["run_id"] / "meta.yaml").write_text("run_id: [unclosed\n  : :")
    with open(exp_dir / runs["finished"]["run_id"] / "metrics" / "loss", "a") as f:
        f.write("garbage line here\n")
        f.write(f"{T0 + 999_999} 0.001 999\n")  # a good line after the garbage still arrives
    (exp_dir / runs["finished"]["run_id"] / "artifacts" / "plots" / "confusion_de.png").write_bytes(b"not a png")
    p = run_syncer("backfill", "--mlflow-tracking-uri", str(store), "--aim-repo", str(aim_repo), "--log-format", "json")
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    assert all(json.loads(line) for line in p.stderr.splitlines() if line.strip())  # one JSON object a line
    assert runs["failed"]["run_id"] in p.stderr and "cannot be read" in p.stderr
    assert "malformed line" in p.stderr and "'loss'" in p.stderr
    assert "confusion_de.png" in p.stderr
    aim = read_aim(aim_repo)
    assert set(aim) == {r["run_id"] for k, r in runs.items() if k != "failed"}
    fin = aim[runs["finished"]["run_id"]]
    assert metric(fin, "loss")["steps"][-1] == 999 and len(metric(fin, "loss")["steps"]) == 51
    assert {a["path"]: a["copied_as"] for a in fin["params"]["artifacts"]}["predictions.txt"] == "text"
    st = run_syncer("status", "--aim-repo", str(aim_repo))
    assert st.returncode == 0 and runs["failed"]["run_id"] in st.stdout, st.stdout


def test_restored_run_is_unarchived_and_custom_state_path(tmp_path, aim_repo):
    uri = str(tmp_path / "mlruns")
    logged = populate(uri, tmp_path)
    deleted = logged["runs"]["deleted"]["run_id"]
    state = tmp_path / "elsewhere" / "state.sqlite"
    backfill(uri, aim_repo, "--state", str(state))
    assert state.exists() and not (aim_repo / ".aim" / "mlflow-syncer").exists()
    assert read_aim(aim_repo)[deleted]["archived"] is True
    client_for(uri).restore_run(deleted)
    out = backfill(uri, aim_repo, "--state", str(state))
    assert "1 updated" in out and " 0 points" in out, out  # only the restored run, nothing re-sent
    assert read_aim(aim_repo)[deleted]["archived"] is False


def test_steps_aim_cannot_key_are_skipped_with_a_warning(tmp_path, aim_repo):
    from mlflow.entities import Metric

    uri = str(tmp_path / "mlruns")
    c = client_for(uri)
    run = c.create_run(c.create_experiment("huge"), run_name="r", start_time=T0)
    c.log_batch(
        run.info.run_id,
        metrics=[Metric("m", 1.0, T0, 2**53), Metric("m", 2.0, T0 + 1, 2**60), Metric("m", 3.0, T0 + 2, -(2**62))],
    )
    c.set_terminated(run.info.run_id, end_time=T0 + 3)
    p = run_syncer("backfill", "--mlflow-tracking-uri", uri, "--aim-repo", str(aim_repo))
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert "skipped 2 point(s)" in p.stderr and "'m'" in p.stderr
    (r,) = read_aim(aim_repo).values()
    assert metric(r, "m")["steps"] == [2**53] and metric(r, "m")["values"] == [1.0]
