"""Runs for the run-page tests: real MLflow runs made by a script in a git checkout (so MLflow records
the source and git tags itself) with a logged scikit-learn model, system metrics, a note, images named
`<name>_<lang>`, and a run that logs a `requirements.txt`; and a run tracked by Aim's own
`Run(log_system_params=True)` in the same checkout, to compare with.

Aim 3.29 lists packages with `pkg_resources`, which setuptools >= 81 no longer ships: its Run then
fails to start. The Aim-tracked run is given a stand-in `pkg_resources` whose `working_set` lists
what `importlib.metadata` lists (what pkg_resources listed), on its PYTHONPATH only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REMOTE = "https://example.com/team/xnli.git"
BRANCH = "main"
NOTE = "Zero-shot transfer: trained on English only.\n\nSee the confusion matrices per language."
CONFIG_IDS = ("018cd84ba8f9", "7d1e0c9a42b1")

MLFLOW_SCRIPT = """
import json, sys, time
import mlflow, numpy as np
from mlflow.tracking import MlflowClient
from sklearn.linear_model import LogisticRegression

uri, note, ids = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
mlflow.set_tracking_uri(uri)
mlflow.set_experiment("run-page")
mlflow.set_system_metrics_sampling_interval(0.2)
mlflow.set_system_metrics_samples_before_logging(1)
client = MlflowClient(uri)
out = {}


def settled(fn):
    # fn(), asked again while MLflow's file store reads a metric file its system-metrics thread
    # has made but not written yet ("is malformed. No data found": MLflow's own race)
    for attempt in range(100):
        try:
            return fn()
        except ValueError as e:
            if "No data found" not in str(e) or attempt == 99:
                raise
            time.sleep(0.05)


with mlflow.start_run(run_name="sklearn", log_system_metrics=True) as run:
    mlflow.log_params({"C": 0.5, "max_iter": 50})
    mlflow.set_tags({"config_id": ids[0], "technique": "fine-tune", "mlflow.note.content": note})
    for step in range(3):
        for lang, base in (("de", 1.0), ("fr", 1.2)):
            mlflow.log_metric(f"eval_{lang}_loss", base / (step + 1), step=step)
    rng = np.random.default_rng(0)
    x = rng.random((40, 3))
    model = LogisticRegression(C=0.5, max_iter=50).fit(x, (x[:, 0] > 0.5).astype(int))
    settled(lambda: mlflow.sklearn.log_model(model, name="model"))
    for lang in ("de", "fr"):
        pixels = np.full((8, 8, 3), 40 if lang == "de" else 200, dtype=np.uint8)
        mlflow.log_image(pixels, f"confusion_matrix_{lang}.png")
    wanted = {"system/cpu_utilization_percentage", "system/disk_usage_megabytes", "system/network_receive_megabytes"}
    deadline = time.monotonic() + 180
    while not wanted <= set(settled(lambda: client.get_run(run.info.run_id)).data.metrics):
        if time.monotonic() > deadline:
            sys.exit("MLflow logged no system metrics in 180 s")
        time.sleep(0.2)
    out["sklearn"] = run.info.run_id
with mlflow.start_run(run_name="requirements") as run:
    mlflow.set_tags({"config_id": ids[1], "technique": "fine-tune"})
    mlflow.log_metric("eval_de_loss", 0.5, step=0)
    mlflow.log_text("numpy==2.4.6\\nmlflow==3.17.2\\n", "requirements.txt")
    # a model as MLflow 2 logged it: into the run's artifacts
    mlflow.log_text("flavors: {}\\n", "mlflow2_model/MLmodel")
    mlflow.log_text("numpy==1.0\\nscipy==1.17.1\\n", "mlflow2_model/requirements.txt")
    out["requirements"] = run.info.run_id
print(json.dumps(out))
"""

AIM_SCRIPT = """
import sys
from aim import Run

run = Run(repo=sys.argv[1], experiment="aim-own", log_system_params=True, system_tracking_interval=None,
          capture_terminal_logs=False)
run.name = "aim-tracked"
run["hparams"] = {"C": 0.5, "max_iter": 50}
for step in range(3):
    for lang, base in (("de", 1.0), ("fr", 1.2)):
        run.track(base / (step + 1), name="loss", step=step, context={"subset": "eval", "lang": lang})
print(run.hash)
run.close()
"""

PKG_RESOURCES = '''
"""A stand-in for setuptools' pkg_resources (gone from setuptools >= 81), as much as Aim's
get_installed_packages uses: working_set entries with `key` and `version`."""
import re
from importlib import metadata
from types import SimpleNamespace

working_set = [
    SimpleNamespace(key=re.sub(r"[^A-Za-z0-9.]+", "-", d.metadata["Name"]).lower(), version=d.version)
    for d in metadata.distributions()
    if d.metadata["Name"]
]
'''


def git(checkout: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "Ann", "GIT_AUTHOR_EMAIL": "ann@example.com"}
    env.update(GIT_COMMITTER_NAME="Ann", GIT_COMMITTER_EMAIL="ann@example.com")
    p = subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, f"git {' '.join(args)}: {p.stderr}"
    return p.stdout.strip()


def make_checkout(path: Path) -> Path:
    """A git checkout with one commit, on `main`, whose origin is REMOTE; the two scripts in it."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", BRANCH)
    (path / "train.py").write_text(MLFLOW_SCRIPT)
    (path / "aim_run.py").write_text(AIM_SCRIPT)
    git(path, "add", "train.py", "aim_run.py")
    git(path, "commit", "-q", "-m", "the experiment")
    git(path, "remote", "add", "origin", REMOTE)
    return path


def mlflow_runs(checkout: Path, uri: str) -> dict[str, str]:
    """Run train.py in the checkout against `uri`: {"sklearn": run id, "requirements": run id}."""
    env = {**os.environ, "MLFLOW_ALLOW_FILE_STORE": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    p = subprocess.run(
        [sys.executable, "train.py", uri, NOTE, ",".join(CONFIG_IDS)],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, f"train.py failed:\n{p.stdout}\n{p.stderr[-4000:]}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def aim_tracked_run(checkout: Path, repo: Path) -> str:
    """Run aim_run.py in the checkout (a small environment: Aim records its variables); its run hash."""
    shim = checkout.parent / "pkg-resources-stand-in"
    shim.mkdir(exist_ok=True)
    (shim / "pkg_resources.py").write_text(PKG_RESOURCES)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(checkout.parent), "PYTHONPATH": str(shim)}
    env["LANG"] = "C.UTF-8"
    p = subprocess.run(
        [sys.executable, "aim_run.py", str(repo)], cwd=checkout, env=env, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, f"aim_run.py failed:\n{p.stdout}\n{p.stderr[-4000:]}"
    return p.stdout.strip().splitlines()[-1]
