"""Wiring: a Config becomes a round driver with its source, Aim repo, state, planner, pipeline
and sink pool, each handed what it needs through its constructor."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Literal

from .config import Config
from .errors import BadInput
from .listing import ListingPolicy
from .logs import OnceLog
from .mapping import ContextMapper, LabelPolicy, load_rules
from .pipeline import Options, RunPipeline
from .plan import Planner, select_experiments
from .rounds import Progress, RoundDriver
from .sink_pool import KeepOpen, OpenAndClose, SinkPool
from .sources import ReadStats, StoreLocation, open_source
from .state import State
from .workers import WorkerPool

log = logging.getLogger("syncer")

# backfill: open and close each run, workers when there are many; daemon: RUNNING runs' Aim
# writers kept open between rounds; worker: a backfill's worker process (its parent indexes)
Role = Literal["backfill", "daemon", "worker"]
# a daemon that meets runs it never synced (its first round over an existing store) catches up in
# slices this long, with what cannot wait (RUNNING runs' new points, file events) in between
CATCH_UP_SLICE_S = 10.0


def options_from(cfg: Config, *, strict_experiments: bool) -> Options:
    rules = load_rules(cfg.context_map) if (cfg.context_map and cfg.context_mapping) else []
    return Options(
        experiments=cfg.experiments,
        artifacts=cfg.artifacts,
        exclude_artifacts=cfg.exclude_artifacts,
        max_artifact_bytes=cfg.max_artifact_bytes,
        mapper=ContextMapper(rules, enabled=cfg.context_mapping),
        tag_labels=cfg.tag_labels,
        labels=LabelPolicy(exclude=cfg.no_label_tags, include=cfg.label_tags),
        strict_experiments=strict_experiments,
    )


def heal(driver: RoundDriver) -> None:
    """Once per process that writes (the backfill's parent, the daemon; not the workers): make
    visible the runs an interrupted sync left out of Aim's run index."""
    from .aim import index_missing

    healed = index_missing(driver.repo)
    if healed:
        log.info("made %d Aim run(s) visible that an interrupted sync had left unindexed", len(healed))


def refuse_overlap(cfg: Config, location: StoreLocation) -> None:
    """BadInput when the syncer would write into the MLflow store (an Aim repo, a state or a
    health file inside a file store: MLflow reads the store's folders as experiments, and a
    daemon watching the store would wake itself with its own writes), or read a store from
    inside the Aim repo's `.aim` folder. Checked before anything is created."""
    store = location.path
    if store is None:
        return
    store = store.expanduser().resolve()
    aim_root = cfg.aim_repo.expanduser().resolve()
    if location.kind == "file":
        writes: list[tuple[str, Path | None]] = [
            ("--aim-repo", cfg.aim_repo),
            ("--state", cfg.state_file),
            ("--health-file", cfg.health_file),
        ]
        for flag, path in writes:
            if path is not None and path.expanduser().resolve().is_relative_to(store):
                raise BadInput(
                    f"{flag} {path} is inside the MLflow file store {store}: the syncer never writes into the "
                    f"store (MLflow would read what it writes there as an experiment); put it outside, "
                    f"e.g. {flag} {store.parent / ('aim' if flag == '--aim-repo' else path.name)}"
                )
    aim_dir = aim_root / ".aim"
    if store.is_relative_to(aim_dir):
        raise BadInput(
            f"the MLflow store {store} is inside the Aim repo {aim_dir}: keep the store beside the repo "
            f"(e.g. {aim_root / store.name} with --aim-repo {aim_root})"
        )


def open_worker(cfg: Config) -> RoundDriver:
    """What a backfill's worker process syncs with (`workers.WorkerPool`)."""
    return open_driver(cfg, strict_experiments=False, must_exist=True, role="worker")


def open_driver(
    cfg: Config,
    *,
    strict_experiments: bool,
    must_exist: bool,
    role: Role = "backfill",
    workers: int | None = 1,
    progress: Progress | None = None,
) -> RoundDriver:
    """A round driver with its source, Aim repo and state open; `RoundDriver.close()` closes them.
    `workers` > 1: large rounds (a backfill's, a daemon's first) are spread over that many
    processes; None: as many as `workers.default_workers` says for each round."""
    from .aim import open_repo, repo_id, run_hashes

    options = options_from(cfg, strict_experiments=strict_experiments)
    location = StoreLocation.parse(cfg.tracking_uri)
    refuse_overlap(cfg, location)
    reads = ReadStats()
    stop = threading.Event()
    source = open_source(location, reads, must_exist=must_exist, stop=stop, workspaces=cfg.workspaces)
    try:
        # bad input fails here, before an Aim repo is created for it
        if must_exist:
            select_experiments(source.experiments(), options.experiments, strict=options.strict_experiments)
        inside = cfg.state_file.resolve().is_relative_to(cfg.aim_repo.resolve())
        if not inside:  # a --state elsewhere that cannot be used: said before a repo is made
            State.check(cfg.state_file)
        repo, created = open_repo(cfg.aim_repo)
        if created:
            log.info("created a new Aim repo at %s", cfg.aim_repo)
        state = State(cfg.state_file, location.identity, cfg.experiments)
    except BaseException:
        source.close()
        raise
    try:
        state.bind(repo_id(repo))
    except BaseException:
        state.close()
        source.close()
        raise
    pool: SinkPool = (
        KeepOpen(repo, transaction=state.transaction)
        if role == "daemon"
        else OpenAndClose(repo, transaction=state.transaction)
    )
    once = OnceLog(log)
    planner = Planner(
        source,
        state,
        listing=ListingPolicy(full_every_s=cfg.full_scan_interval),
        reads=reads,
        experiments=options.experiments,
        strict=options.strict_experiments,
        artifacts=options.artifacts,
        aim_runs=lambda: run_hashes(repo),
        stop=stop,
    )
    return RoundDriver(
        source=source,
        state=state,
        repo=repo,
        planner=planner,
        pipeline=RunPipeline(source, state, pool, options, stop=stop, once=once),
        pool=pool,
        stop=stop,
        once=once,
        spread=WorkerPool(workers, cfg, open_worker) if workers != 1 and role != "worker" else None,
        progress=progress,
        slice_s=CATCH_UP_SLICE_S if role == "daemon" else None,
    )
