"""Wiring: a Config becomes a Syncer with its source, Aim repo and state opened."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from .config import Config
from .kept_runs import KeptRuns
from .mapping import ContextMapper, load_rules
from .pipeline import Options, Syncer
from .plan import select_experiments
from .sources import open_source, source_identity
from .state import State

log = logging.getLogger("syncer")


def options_from(cfg: Config, *, strict_experiments: bool) -> Options:
    rules = load_rules(cfg.context_map) if (cfg.context_map and cfg.context_mapping) else []
    return Options(
        experiments=cfg.experiments,
        artifacts=cfg.artifacts,
        exclude_artifacts=cfg.exclude_artifacts,
        max_artifact_bytes=cfg.max_artifact_bytes,
        mapper=ContextMapper(rules, enabled=cfg.context_mapping),
        tag_labels=cfg.tag_labels,
        strict_experiments=strict_experiments,
    )


def heal(syncer: Syncer) -> None:
    """Once per process that writes (the backfill's parent, the daemon; not the workers): make
    visible the runs an interrupted sync left out of Aim's run index."""
    from .aim import index_missing

    healed = index_missing(syncer.repo)
    if healed:
        log.info("made %d Aim run(s) visible that an interrupted sync had left unindexed", len(healed))


def open_syncer(
    cfg: Config,
    *,
    strict_experiments: bool,
    must_exist: bool,
    keep_open: bool = False,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
) -> Syncer:
    """A Syncer with its source, Aim repo and state open; `Syncer.close()` closes them.
    `keep_open`: keep RUNNING runs' Aim writers open between rounds (the daemon)."""
    from .aim import open_repo, repo_id

    options = options_from(cfg, strict_experiments=strict_experiments)
    source = open_source(cfg.tracking_uri, must_exist=must_exist, full_every_s=cfg.full_scan_interval)
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
        state = State(cfg.state_file, source_identity(cfg.tracking_uri), cfg.experiments)
    except BaseException:
        source.close()
        raise
    try:
        state.bind(repo_id(repo))
    except BaseException:
        state.close()
        source.close()
        raise
    syncer = Syncer(source, repo, state, options, progress=progress)
    if keep_open:
        syncer.kept = KeptRuns()
    return syncer
