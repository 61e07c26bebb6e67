"""A training-like writer process for the daemon tests (run as a subprocess).

    python tests/live_writer.py URI EXPERIMENT SECONDS OUT.json [EVERY [STOP_FILE]]

Logs a long run with a point every EVERY s (default 0.2) and, meanwhile, short runs that start and finish
within a second (between two syncer rounds), for SECONDS or until STOP_FILE exists (a test that
waits on a condition, not on the clock). Writes what it logged to OUT.json at the end.
Survives the tracking server going away for a while (retries each call).
"""

import json
import os
import sys
import time

os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient


def retry(fn, *a, **kw):
    deadline = time.monotonic() + 60
    while True:
        try:
            return fn(*a, **kw)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main(uri: str, experiment: str, seconds: float, out: str, every: float = 0.2, stop: str = "") -> None:
    c = MlflowClient(uri)
    exp = retry(c.create_experiment, experiment)
    logged: dict[str, dict] = {}
    long_run = retry(c.create_run, exp, run_name="long").info.run_id
    logged[long_run] = {"name": "long", "points": []}
    t_end = time.monotonic() + seconds
    step = 0
    short = 0
    while time.monotonic() < t_end and not (stop and os.path.exists(stop)):
        ts = int(time.time() * 1000)
        retry(c.log_batch, long_run, metrics=[Metric("train_loss", 1.0 / (step + 1), ts, step)])
        logged[long_run]["points"].append([step, 1.0 / (step + 1), ts])
        if step % 10 == 5:  # a short run that starts and finishes between two rounds
            r = retry(c.create_run, exp, run_name=f"short-{short}").info.run_id
            pts = [[s, float(s), int(time.time() * 1000) + s] for s in range(3)]
            retry(c.log_batch, r, metrics=[Metric("acc", v, t, s) for s, v, t in pts])
            retry(c.set_terminated, r, "FINISHED")
            logged[r] = {"name": f"short-{short}", "points": pts}
            short += 1
        step += 1
        time.sleep(every)
    retry(c.set_terminated, long_run, "FINISHED")
    with open(out, "w") as f:
        json.dump(logged, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], *(float(a) for a in sys.argv[5:6]), *sys.argv[6:7])
