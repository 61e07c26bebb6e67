#!/usr/bin/env python
"""ONE pass of aimlflow's MLflow -> Aim conversion, timed.  Run it with the
aimlflow venv's python (see bench/aimlflow_env.sh), never the project venv::

    bench/out/aimlflow-venv/bin/python bench/aimlflow_backfill.py \
        --mlflow-tracking-uri bench/out/store --aim-repo bench/out/aim-aimlflow

It calls ``aimlflow.utils.convert_existing_logs(repo, tracking_uri, None, ())``,
which is exactly the "Converting existing MLflow logs." step of
``aimlflow sync`` (aimlflow/cli.py), without the watcher loop that ``sync``
starts afterwards and never leaves.  ``()`` for the excluded artifacts is what
the click option (``multiple=True``) hands over when none are given; ``None``
would crash in ``collect_artifacts`` (``'*' in None``).

Prints one JSON line on stdout:

* ``seconds``: wall time of convert_existing_logs plus closing the Aim runs it
  left open (aimlflow never closes them; closing is what makes the data final);
* ``points``: metric points present in the Aim repo afterwards (counted after
  the timed section by reading the repo back, after indexing it the way
  ``aim up`` does: see bench/aim_read.py; indexing is not timed);
* ``points_per_s``, ``aim_runs``, ``total_seconds`` (from the first line of
  this script, so including ``import aim``/``import mlflow``), ``max_rss_mb``
  (peak RSS of this process).

tqdm's progress bars go to stderr.
"""

import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402

os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # only matters for mlflow >= 3
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="one timed pass of aimlflow's conversion")
    ap.add_argument("--mlflow-tracking-uri", required=True)
    ap.add_argument("--aim-repo", required=True, help="created (aim init) if missing")
    ap.add_argument("--no-count", action="store_true", help="skip reading the Aim repo back")
    args = ap.parse_args(argv)

    import mlflow
    from aim.sdk.repo import Repo
    from aim.sdk.utils import clean_repo_path
    from aimlflow.utils import convert_existing_logs

    import aim
    from aim import Run

    uri = args.mlflow_tracking_uri
    if "://" not in uri:
        uri = os.path.abspath(uri)
    os.makedirs(args.aim_repo, exist_ok=True)
    repo_path = clean_repo_path(os.path.abspath(args.aim_repo))
    repo = Repo.from_path(repo_path, init=not Repo.exists(repo_path))

    # Keep the aim.Run objects aimlflow creates so they can be closed inside the timed section.
    created = []
    orig_init = Run.__init__

    def tracking_init(self, *a, **kw):
        orig_init(self, *a, **kw)
        created.append(self)

    Run.__init__ = tracking_init

    t0 = time.perf_counter()
    convert_existing_logs(repo, uri, None, ())
    for run in created:
        run.close()
    seconds = time.perf_counter() - t0
    total_seconds = time.perf_counter() - T_START
    Run.__init__ = orig_init
    created.clear()
    gc.collect()

    out = {
        "seconds": round(seconds, 3),
        "total_seconds": round(total_seconds, 3),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "aim_version": aim.__version__.__version__ if hasattr(aim.__version__, "__version__") else str(aim.__version__),
        "mlflow_version": mlflow.__version__,
    }
    if not args.no_count:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from aim_read import count_points  # indexes the repo first, like `aim up` would

        aim_runs, points = count_points(repo_path)
        out.update(points=points, aim_runs=aim_runs, points_per_s=round(points / seconds, 1) if seconds else None)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
