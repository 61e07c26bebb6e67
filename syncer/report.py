"""What landed in an Aim repo, read back through Aim's public SDK (`syncer status --aim`)."""

from __future__ import annotations

import os
from typing import Any


def summarize_repo(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """What landed, read back through Aim's public SDK: per experiment, its runs and, per metric
    name, the contexts it has (e.g. accuracy by lang)."""
    from aim.sdk.repo import Repo

    from .config import repo_root

    repo = Repo(str(repo_root(path)))
    exps: dict[str, dict[str, Any]] = {}
    try:
        for run in repo.iter_runs():
            exp = exps.setdefault(
                run.experiment or "(none)",
                {"experiment": run.experiment or "(none)", "runs": [], "metrics": {}, "points": 0},
            )
            exp["runs"].append(run.name + (" (archived)" if run.archived else ""))
            for name, context, _ in run.iter_metrics_info():  # run.metrics() skips archived runs
                m: Any = run.get_metric(name, context)
                exp["metrics"].setdefault(m.name, set()).add(tuple(sorted(m.context.to_dict().items())))
                steps, _ = m.data.numpy()
                exp["points"] += len(steps)
    finally:
        repo.close()
    return sorted(exps.values(), key=lambda e: e["experiment"])
