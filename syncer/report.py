"""What landed in an Aim repo, read back through Aim's public SDK (`syncer status --aim`), and
how it adds up against the MLflow points the state says were read."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from .mapping import ContextMapper
from .mapping.collisions import resolve

MODEL_CONTEXT = "model"  # `{model: <name>}` series: a logged model's metrics, not one of the run's keys


def mlflow_points_by_name(key_points: Iterable[tuple[str, str, str, int]]) -> dict[str, dict[str, int]]:
    """{Aim hash: {Aim metric name: MLflow points read}} from the state's (experiment, hash, key,
    points), each key named as the default rules name it (a run synced with other rules shows its
    difference under "other")."""
    keys: dict[str, dict[str, int]] = defaultdict(dict)
    for _exp, aim_hash, key, n in key_points:
        keys[aim_hash][key] = int(n or 0)
    out: dict[str, dict[str, int]] = {}
    mapper = ContextMapper()
    for aim_hash, read in keys.items():
        names = resolve(mapper.for_run(read), read, known=set())
        by_name: dict[str, int] = defaultdict(int)
        for key, n in read.items():
            by_name[names.of(key).aim_name] += n
        out[aim_hash] = dict(by_name)
    return out


def summarize_repo(
    path: str | os.PathLike[str], key_points: Iterable[tuple[str, str, str, int]] = ()
) -> list[dict[str, Any]]:
    """What landed, read back through Aim's public SDK: per experiment, its runs, per metric name
    the contexts it has (e.g. accuracy by lang), its points; with the state's `key_points`, the
    MLflow points they came from (`mlflow_points`, of the runs found in Aim) and, per metric name,
    how many of those Aim holds as one (`collapsed`: points of one key at a step another point of
    it has; Aim keeps one value per step), and the points of logged models' metrics
    (`model_points`, not the run's own keys)."""
    from aim.sdk.repo import Repo

    from .config import repo_root

    mlflow = mlflow_points_by_name(key_points)
    repo = Repo(str(repo_root(path)))
    exps: dict[str, dict[str, Any]] = {}
    try:
        for run in repo.iter_runs():
            name = run.experiment or "(none)"
            exp = exps.setdefault(name, _new_experiment(name))
            exp["runs"].append(run.name + (" (archived)" if run.archived else ""))
            in_aim: dict[str, int] = defaultdict(int)
            for metric, context, _ in run.iter_metrics_info():  # run.metrics() skips archived runs
                m: Any = run.get_metric(metric, context)
                ctx = m.context.to_dict()
                exp["metrics"].setdefault(m.name, set()).add(tuple(sorted(ctx.items())))
                steps, _ = m.data.numpy()
                exp["points"] += len(steps)
                if MODEL_CONTEXT in ctx:
                    exp["model_points"] += len(steps)
                else:
                    in_aim[m.name] += len(steps)
            _add_up(exp, mlflow.get(run.hash), in_aim)
    finally:
        repo.close()
    return sorted(exps.values(), key=lambda e: e["experiment"])


def _new_experiment(name: str) -> dict[str, Any]:
    return {
        "experiment": name,
        "runs": [],
        "metrics": {},
        "points": 0,
        "mlflow_points": 0,
        "model_points": 0,
        "collapsed": defaultdict(int),
    }


def _add_up(exp: dict[str, Any], read: dict[str, int] | None, in_aim: dict[str, int]) -> None:
    """Fold one run's MLflow points (by Aim name) and its Aim points into its experiment's sums."""
    if read is None:  # not in this state (another state file, or synced before it was made)
        return
    exp["mlflow_points"] += sum(read.values())
    other = 0
    for name in set(read) | set(in_aim):
        diff = read.get(name, 0) - in_aim.get(name, 0)
        if name in read and name in in_aim and diff > 0:
            exp["collapsed"][name] += diff
        else:
            other += diff
    if other:
        exp["collapsed"]["other"] += other


def collapse_note(exp: dict[str, Any]) -> str | None:
    """One line that says why an experiment's Aim points are fewer than the MLflow points read."""
    collapsed = {k: v for k, v in exp["collapsed"].items() if v}
    if not exp["mlflow_points"] or not collapsed:
        return None
    total = sum(collapsed.values())
    named = ", ".join(f"{k} {v:,}" for k, v in sorted(collapsed.items(), key=lambda kv: (-kv[1], kv[0])))
    return (
        f"from {exp['mlflow_points']:,} MLflow points: {total:,} of them repeat a step their key already has "
        f"and Aim keeps one value per step (the later one): {named}"
    )


def print_summary(
    repo: str | os.PathLike[str], key_points: Iterable[tuple[str, str, str, int]], echo: Callable[[str], object]
) -> None:
    """`syncer status --aim`: per experiment, its runs and points, what collapsed, each metric's contexts."""
    exps = summarize_repo(repo, key_points)
    runs = sum(len(e["runs"]) for e in exps)
    echo(f"\nin Aim ({repo}): {_count(len(exps), 'experiment')}, {_count(runs, 'run')}")
    for exp in exps:
        echo(
            f"  experiment {exp['experiment']}: {len(exp['runs'])} runs ({', '.join(sorted(exp['runs']))}), "
            f"{exp['points']:,} points"
        )
        note = collapse_note(exp)
        if note:
            echo(f"    {note}")
        if exp["model_points"]:
            echo(f"    ({exp['model_points']:,} of the points are logged models' metrics, under {{model: ...}})")
        for name, contexts in sorted(exp["metrics"].items()):
            ctxs = sorted(contexts)
            shown = ", ".join("{" + ", ".join(f"{k}: {v}" for k, v in c) + "}" if c else "{}" for c in ctxs[:8])
            more = f", ... ({len(ctxs)} contexts)" if len(ctxs) > 8 else ""
            echo(f"    {name:<28} {shown}{more}")


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def print_rounds(
    rounds: dict[str, tuple[float, bool, dict[str, Any]]], rows: list[dict[str, Any]], echo: Callable[[str], object]
) -> None:
    """`syncer status`: the last round of each source (what it read, why it failed), then the
    runs and points synced per experiment."""
    import time

    for key, (t, ok, summary) in sorted(rounds.items()):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
        outcome = "failed" if summary.get("failed") else ("ok" if ok else "with errors")
        echo(
            f"last round of {key}: {when} ({outcome}, "
            f"{summary.get('points', 0)} new points in {summary.get('seconds', 0):.1f} s)"
        )
        if summary.get("failed"):
            echo(f"  it failed: {summary['failed']}")
        read = summary.get("read") or {}
        if read:
            echo(
                f"  it read: {read.get('runs_listed', 0)} runs listed, {read.get('runs_read', 0)} runs' metadata, "
                f"{read.get('histories', 0)} histories, {read.get('points', 0)} points, "
                f"{read.get('requests', 0)} requests/queries/files "
                f"({'a full listing' if read.get('full') else 'only what could have changed'})"
            )
        with_runs = len({r["experiment"] for r in rows if r["source"] == key})
        empty = int(summary.get("experiments") or 0) - with_runs
        if empty > 0:
            echo(
                f"  it listed {summary.get('experiments')} MLflow experiments: {empty} without runs "
                f"(MLflow's `Default` is one when nothing was logged to it), so nothing of them is in Aim"
            )
    width = max([len(str(r["experiment"])) for r in rows] + [10])
    for source in sorted({r["source"] for r in rows}):
        echo(f"source {source}")
        echo(f"  {'experiment':<{width}}  {'runs':>6}  {'points':>10}  errors")
        for r in (r for r in rows if r["source"] == source):
            echo(f"  {str(r['experiment']):<{width}}  {r['runs']:>6}  {r['points']:>10}  {len(r['errors'])}")
            for e in r["errors"]:
                echo(f"      ! {e}")
        echo("  (points: MLflow points read; Aim keeps one value per step of a key, see --aim)")
