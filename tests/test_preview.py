"""`syncer backfill --dry-run` on a real file store (the CLI, a subprocess): it prints the runs a
backfill would write and how each MLflow key maps to Aim, and writes nothing: an Aim repo that
exists is byte-for-byte the same after it, one that does not is not created."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from conftest import T0, client_for, log_points, run_syncer

RULES = """
[[rule]]
pattern = '^(?P<subset>eval)/(?P<lang>[a-z]{2})/(?P<name>.+)$'

[[rule]]
pattern = '^plots/(?P<name>confusion_matrix)_(?P<lang>[a-z]{2})$'
"""


@pytest.fixture
def store(tmp_path) -> dict:
    import numpy as np
    from PIL import Image

    uri = str(tmp_path / "mlruns")
    client = client_for(uri)
    exp = client.create_experiment("preview")
    rid = client.create_run(exp, run_name="xnli-de", start_time=T0).info.run_id
    for key in ("eval_de_accuracy", "eval_de_loss", "loss", "system/cpu_utilization_percentage"):
        log_points(client, rid, key, [(s, 0.5, T0 + s) for s in range(3)])
    for step in (0, 1):
        client.log_image(
            rid,
            np.zeros((4, 4, 3), dtype=np.uint8),
            key="eval/de/samples",
            step=step,
            timestamp=T0 + step,
            synchronous=True,
        )
    (tmp_path / "plots").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "plots" / "confusion_matrix_de.png")
    client.log_artifact(rid, str(tmp_path / "plots" / "confusion_matrix_de.png"), "plots")
    client.set_terminated(rid, "FINISHED", end_time=T0 + 10_000)
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    return {"uri": uri, "client": client, "run_id": rid, "rules": rules, "repo": tmp_path / "aim"}


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under root: its content digest (folders: '/')."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "/"
        for f in filenames:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def dry_run(store: dict, *extra: str):
    return run_syncer(
        "backfill", "--dry-run", "--mlflow-tracking-uri", store["uri"], "--aim-repo", str(store["repo"]), *extra
    )


def rows(stdout: str) -> dict[str, list[str]]:
    """The key table: MLflow key -> its other columns, split on runs of 2+ spaces."""
    lines = stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("MLflow key"))
    out = {}
    for line in lines[head + 1 :]:
        if not line.strip() or line.startswith("MLflow 3 metrics"):
            break
        cells = [c for c in line.split("  ") if c.strip()]
        out[cells[0].strip()] = [c.strip() for c in cells[1:]]
    return out


def test_dry_run_prints_runs_and_the_key_table_and_creates_no_repo(store):
    p = dry_run(store)
    assert p.returncode == 0, p.stderr
    assert not store["repo"].exists()
    assert "experiment 'preview'" in p.stdout and "1 runs, 1 would be written" in p.stdout
    assert f"xnli-de ({store['run_id']}, FINISHED): new" in p.stdout
    table = rows(p.stdout)
    assert table["eval_de_accuracy"] == [
        "metric",
        "accuracy",
        "{dataset: de, lang: de, subset: eval}",
        "1",
        "default: Hugging Face eval sets",
    ]
    assert table["system/cpu_utilization_percentage"][:2] == ["metric", "__system__cpu"]
    assert table["eval/de/samples"] == ["step image", "de/samples", "{subset: eval}", "1", "default: subset prefix"]
    # `<name>_<lang>` with a language the run's metrics have: the same {lang} they get
    assert table["plots/confusion_matrix_de"] == [
        "image",
        "plots/confusion_matrix",
        "{lang: de}",
        "1",
        "default: artifact <name>_<lang>",
    ]


def test_dry_run_shows_which_rule_of_a_rules_file_matched(store):
    p = dry_run(store, "--context-map", str(store["rules"]))
    assert p.returncode == 0, p.stderr
    table = rows(p.stdout)
    assert table["eval/de/samples"] == [
        "step image",
        "samples",
        "{lang: de, subset: eval}",
        "1",
        "rule 1: ^(?P<subset>eval)/(?P<lang>[a-z]{2})/(?P<name>.+)$",
    ]
    assert table["plots/confusion_matrix_de"][:3] == ["image", "confusion_matrix", "{lang: de}"]
    assert table["plots/confusion_matrix_de"][4].startswith("rule 2: ")
    assert table["loss"][-1] == "none: kept as is"


def test_dry_run_leaves_a_synced_repo_byte_for_byte_unchanged_and_names_only_what_changed(store):
    run_syncer("backfill", "--mlflow-tracking-uri", store["uri"], "--aim-repo", str(store["repo"]), check=True)
    before = snapshot(store["repo"])
    p = dry_run(store, "--context-map", str(store["rules"]))
    assert p.returncode == 0, p.stderr
    assert snapshot(store["repo"]) == before
    assert "1 runs, 0 would be written" in p.stdout
    assert rows(p.stdout)["eval/de/samples"][1] == "samples"  # the table covers every run, synced or not

    log_points(store["client"], store["run_id"], "loss", [(3, 0.1, T0 + 3)])
    p = dry_run(store)
    assert snapshot(store["repo"]) == before
    assert "1 runs, 1 would be written" in p.stdout and "1 metric key(s) with new points" in p.stdout


def test_dry_run_with_bad_input_is_one_line_exit_2_and_writes_nothing(store):
    p = dry_run(store, "--experiment", "no-such-experiment")
    assert p.returncode == 2
    assert "unknown MLflow experiment(s): 'no-such-experiment'" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert not store["repo"].exists()
