"""`syncer backfill --dry-run`: read the store, write nothing, and print what a backfill would do:
the experiments and runs it would write, and every distinct MLflow key (metrics, step-image
keys, media names, logged models' metrics) with the Aim name and context it maps to, the rule
that put it there, and how many runs have it. How a user writes a rules file with confidence.

Nothing is written anywhere: no Aim repo is created or opened, the sync state (when there is
one) is read from a copy in a temporary folder."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .artifacts import Artifacts
from .config import Config
from .listing import ListingPolicy
from .mapping import ContextMapper, MappedMetric
from .mapping.collisions import resolve
from .mapping.model_series import foreign_metrics, model_metric
from .pipeline import Options
from .plan import Plan, Planner, RunWork
from .sources import ReadStats, RunRecord, Source, StoreLocation, open_source
from .state import State

MAX_RUNS_SHOWN = 30  # per experiment
MAX_CONTEXT = 60  # characters of a context shown


@dataclass
class Row:
    kind: str  # metric | step image | image | text | audio | table | figure | model metric
    key: str  # the MLflow key (a step image's key, a file's path without extension)
    name: str
    context: str
    rule: str
    runs: set[str] = field(default_factory=set)


def show_context(ctx: dict[str, Any]) -> str:
    text = "{" + ", ".join(f"{k}: {v}" for k, v in sorted(ctx.items())) + "}"
    return text if len(text) <= MAX_CONTEXT else text[: MAX_CONTEXT - 1] + "…"


class Preview:
    """The rows of the key table, collected run by run."""

    def __init__(self, mapper: ContextMapper):
        self.mapper = mapper
        self.rows: dict[tuple[str, str, str, str], Row] = {}

    def add(self, run_id: str, kind: str, key: str, mapped: MappedMetric, rule: str | None = None) -> None:
        name, ctx = mapped.aim_name, show_context(mapped.context)
        row = self.rows.setdefault((kind, key, name, ctx), Row(kind, key, name, ctx, rule or mapped.rule))
        row.runs.add(run_id)

    def run(self, run: RunRecord, work: RunWork, artifacts: Artifacts, errors: list[str]) -> None:
        run_mapper = self.mapper.for_run(run.metric_marks)
        names = resolve(run_mapper, run.metric_marks, known=set(work.cursors))
        for key in run.metric_marks:
            self.add(run.run_id, "metric", key, names.of(key))
        found = artifacts.find(run, work, errors, self.mapper)
        for m in found.media.values():
            target = found.targets.get(m.owner)
            if target is None:
                continue
            mapped = MappedMetric(target.name, target.context)
            rule = "collision: kept its MLflow name" if target.collided else run_mapper.map_media(m.key).rule
            self.add(run.run_id, "step image" if m.step_image else m.kind, m.key, mapped, rule)
        for model, metric in foreign_metrics(found.models or [], run_id=run.run_id, run_keys=set(run.metric_marks)):
            mapped = run_mapper.map(metric.key, metric.dataset_name)
            self.add(run.run_id, "model metric", metric.key, model_metric(mapped, model.name))

    def table(self) -> list[str]:
        head = ("MLflow key", "kind", "Aim name", "context", "runs", "rule")
        body = [
            (r.key, r.kind, r.name, r.context, str(len(r.runs)), r.rule)
            for r in sorted(self.rows.values(), key=lambda r: (r.kind != "metric", r.kind, r.key, r.name))
        ]
        width = [max([len(head[i])] + [len(b[i]) for b in body]) for i in range(len(head) - 1)]
        out = []
        for cells in (head, *body):
            out.append(
                "  ".join(c.ljust(w) if i != 4 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, width)))
                + "  "
                + cells[-1]
            )
        return out


def dry_run(cfg: Config, options: Options, echo: Callable[[str], None]) -> None:
    """Print what `syncer backfill` would write with these settings (`options`: the pipeline's
    Options, rules loaded). Raises the usual errors (StoreError, BadInput) for bad input."""
    location = StoreLocation.parse(cfg.tracking_uri)
    source = open_source(location, ReadStats(), must_exist=True, workspaces=cfg.workspaces)
    identity = location.identity
    try:
        with tempfile.TemporaryDirectory(prefix="syncer-dry-run-") as tmp:
            empty = State(Path(tmp) / "empty.sqlite", identity, cfg.experiments)
            synced = _state_copy(cfg, Path(tmp), identity)
            try:
                everything = _plan(source, empty, options)
                would = _plan(source, synced, options) if synced is not None else everything
                _report(
                    everything,
                    would,
                    Artifacts(source, empty, exclude=options.exclude_artifacts, max_bytes=options.max_artifact_bytes),
                    options,
                    cfg,
                    location,
                    echo,
                )
            finally:
                empty.close()
                if synced is not None:
                    synced.close()
    finally:
        source.close()


def _plan(source: Source, state: State, options: Options) -> Plan:
    planner = Planner(
        source,
        state,
        listing=ListingPolicy(),
        reads=source.reads,
        experiments=options.experiments,
        strict=True,
        artifacts=options.artifacts,
    )
    return planner.plan(full=True)


def _state_copy(cfg: Config, tmp: Path, identity: str) -> State | None:
    """The sync state as a backfill would find it, opened from a copy (the original is only read)."""
    if not cfg.state_file.is_file() or not cfg.aim_repo.exists():
        return None
    for suffix in ("", "-wal"):
        src = Path(str(cfg.state_file) + suffix)
        if src.is_file():
            shutil.copyfile(src, tmp / f"state.sqlite{suffix}")
    return State(tmp / "state.sqlite", identity, cfg.experiments)


def _report(
    everything: Plan,
    would: Plan,
    artifacts: Artifacts,
    options: Options,
    cfg: Config,
    location: StoreLocation,
    echo: Callable[[str], None],
) -> None:
    preview = Preview(options.mapper)
    todo = {w.run.run_id: w for w in would.todo}
    errors: list[str] = []
    echo(f"dry run: nothing is written (MLflow store {location.display}, Aim repo {cfg.aim_repo})")
    for exp in everything.experiments:
        works = [w for w in everything.todo if w.exp.id == exp.id]
        written = [w for w in works if w.run.run_id in todo]
        echo(f"experiment {exp.aim_name!r} (id {exp.id}): {len(works)} runs, {len(written)} would be written")
        for i, w in enumerate(written):
            if i == MAX_RUNS_SHOWN:
                echo(f"  … and {len(written) - MAX_RUNS_SHOWN} more")
                break
            echo("  " + _run_line(todo[w.run.run_id]))
        for w in works:
            if isinstance(w.run, RunRecord):
                preview.run(w.run, w, artifacts, errors)
    echo("")
    for line in preview.table():
        echo(line)
    if not preview.rows:
        echo("(no metrics, media or model metrics)")
    for e in errors:
        echo(f"! {e}")
    echo("MLflow 3 metrics that name a dataset also get {dataset: <name>} (read with their points).")


def _run_line(work: RunWork) -> str:
    run = work.run
    if not isinstance(run, RunRecord):
        return f"{run.run_id}: cannot be read ({run.error})"
    what = ["new"] if work.prev is None else (["metadata"] if work.meta_changed else [])
    if work.changed_keys:
        what.append(f"{len(work.changed_keys)} metric key(s) with new points")
    if work.list_artifacts:
        what.append("artifacts")
    return f"{run.name} ({run.run_id}, {run.status}): {', '.join(what) or 'artifacts'}"
