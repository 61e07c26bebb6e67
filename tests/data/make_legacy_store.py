"""Writes a small MLflow file store with whatever MLflow version runs it.

The stores under tests/data/legacy-mlflow-*/ were made with this script by real MLflow 1.30.1
and 2.9.2 (each in its own throwaway virtualenv):

    python -m venv /tmp/v1 && /tmp/v1/bin/pip install mlflow==1.30.1
    /tmp/v1/bin/python tests/data/make_legacy_store.py tests/data/legacy-mlflow-1.30.1

Only MLflow's public client API is used, so the files are exactly what that version writes.
"""

import os
import sys
import tempfile

import mlflow
from mlflow.tracking import MlflowClient

T0 = 1_600_000_000_000  # 2020-09-13, ms

out = os.path.abspath(sys.argv[1])
client = MlflowClient(tracking_uri="file://" + out)
exp_id = client.create_experiment("legacy-experiment")
run = client.create_run(exp_id, start_time=T0, tags={"mlflow.runName": "legacy-run", "team": "old"})
rid = run.info.run_id
client.log_param(rid, "learning_rate", "0.001")
client.log_param(rid, "epochs", "3")
for step in range(5):
    client.log_metric(rid, "loss", 1.0 / (step + 1), timestamp=T0 + 1000 * step, step=step)
    client.log_metric(rid, "eval_de_accuracy", 0.5 + step / 10, timestamp=T0 + 1000 * step + 1, step=step)
    client.log_metric(rid, "eval_de_loss", 1.5 - step / 10, timestamp=T0 + 1000 * step + 2, step=step)
with tempfile.TemporaryDirectory() as d:
    p = os.path.join(d, "notes.txt")
    with open(p, "w") as f:
        f.write("written by mlflow " + mlflow.__version__ + "\n")
    client.log_artifact(rid, p)
client.set_terminated(rid, "FINISHED", end_time=T0 + 60_000)
print(mlflow.__version__, rid)
