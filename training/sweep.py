"""``run(cfg)``: train the grid of ``cfg``, one MLflow run per configuration, skipping those already
FINISHED in the store (so running a sweep again resumes it), with one progress line per run; with
``cfg.resume``, continue that one interrupted run instead (resume.py)."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

from .grid import config_id, plan, sweep_id
from .hub import check_models, load_data
from .resume import resume_run
from .tracking_store import (
    configs_in_store,
    experiment_name,
    get_or_create_experiment,
    resolve_tracking_uri,
    tracking_uri_set_to,
)
from .train_config import RunResult, RunSpec, TrainConfig, run_dir, say, validate
from .train_run import train_one


def _steps_of(spec: RunSpec, cfg: TrainConfig) -> float:
    return math.ceil(cfg.num_train_samples / spec.batch_size) * cfg.num_train_epochs


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class _Progress:
    """One line per run: n/N, the run's name, and the time the sweep has left (from the seconds per
    training step so far). Printed unless quiet, and on a terminal even when quiet."""

    def __init__(self, cfg: TrainConfig, specs: list[RunSpec], todo: set[RunSpec]):
        self.cfg, self.n = cfg, len(specs)
        self.show = cfg.verbose or sys.stderr.isatty()
        self.left_steps = sum(_steps_of(s, cfg) for s in todo)
        self.done_steps, self.seconds = 0.0, 0.0

    def line(self, i: int, spec: RunSpec, msg: str) -> None:
        if self.show:
            print(f"[{i}/{self.n}] {spec.run_name} ({self.cfg.technique}): {msg}", file=sys.stderr, flush=True)

    def training(self, i: int, spec: RunSpec) -> None:
        if self.done_steps:
            left = f"about {_duration(self.seconds / self.done_steps * self.left_steps)} left"
        else:
            left = "time left known after this run"
        self.line(i, spec, f"training; {left}")

    def trained(self, spec: RunSpec, seconds: float) -> None:
        steps = _steps_of(spec, self.cfg)
        self.done_steps += steps
        self.left_steps -= steps
        self.seconds += seconds


def _prepare(cfg: TrainConfig, source: str, sweep: str, specs: list, todo: list, data: dict) -> str:
    """Everything that can fail before anything is written: the first seed's data, every model; then the
    experiment (created if need be). Returns its id."""
    exp_name = experiment_name(cfg.technique)
    if not todo:
        from mlflow import MlflowClient

        return MlflowClient().get_experiment_by_name(exp_name).experiment_id
    say(
        cfg,
        f"data: {'the shipped offline data set' if source == 'local' else 'XNLI from the hub'}; "
        f"sweep {sweep}: {len(specs)} run(s), {len(specs) - len(todo)} already finished",
    )
    data[todo[0].seed] = load_data(cfg, source, todo[0].seed)
    check_models(cfg, (spec.model_name for spec in todo))
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    return get_or_create_experiment(exp_name)


def run(cfg: TrainConfig) -> list[RunResult]:
    """Train the grid of ``cfg`` with ``cfg.technique``: one MLflow run per configuration, skipping those
    already FINISHED in the store. With ``cfg.resume``: continue that one run instead."""
    if cfg.resume:
        return [resume_run(cfg)]
    source = validate(cfg)
    specs = plan(cfg)
    sweep = sweep_id(cfg, source)
    exp_name = experiment_name(cfg.technique)
    with tracking_uri_set_to(resolve_tracking_uri(cfg.tracking_uri, cfg.output_dir)) as uri:
        say(cfg, f"MLflow tracking URI: {uri}")
        finished, unfinished = configs_in_store(uri, exp_name)
        cids = {spec: config_id(cfg, spec, source) for spec in specs}
        todo = [spec for spec in specs if cids[spec] not in finished]
        data: dict[int, tuple] = {}
        experiment_id = _prepare(cfg, source, sweep, specs, todo, data)
        progress = _Progress(cfg, specs, set(todo))
        results = []
        for i, spec in enumerate(specs, 1):
            cid = cids[spec]
            if cid in finished:
                progress.line(i, spec, f"already FINISHED in run {finished[cid]}; skipped")
                results.append(
                    RunResult(
                        spec.model_name,
                        finished[cid],
                        experiment_id,
                        exp_name,
                        run_dir(cfg, spec),
                        run_name=spec.run_name,
                        status="skipped",
                    )
                )
                continue
            if cid in unfinished:
                say(
                    cfg,
                    f"  (run {unfinished[cid]} of this configuration did not finish; a new run starts. "
                    f"`--resume {unfinished[cid]}` continues it instead, from its last checkpoint)",
                )
            progress.training(i, spec)
            if spec.seed not in data:
                data[spec.seed] = load_data(cfg, source, spec.seed)
            started = time.monotonic()
            results.append(train_one(cfg, spec, *data[spec.seed], source, sweep))
            progress.trained(spec, time.monotonic() - started)
        return results
