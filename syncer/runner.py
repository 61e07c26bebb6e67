"""Wiring: a Config becomes a Syncer with its source, Aim repo and state opened."""

from __future__ import annotations

import logging
from typing import Callable, Iterable

from .config import Config
from .pipeline import Syncer, select_experiments
from .sink import open_repo
from .source import local_path, open_source, redact
from .state import State

log = logging.getLogger("syncer")


def source_identity(uri: str) -> str:
    """The key cursors are stored under: stable across spellings of the same local store."""
    path = local_path(uri)
    if path is not None:
        scheme = "sqlite" if uri.startswith("sqlite:") else "file"
        return f"{scheme}://{path.expanduser().resolve()}"
    return redact(uri).rstrip("/")


def open_syncer(cfg: Config, *, strict_experiments: bool, must_exist: bool,
                progress: Callable[[Iterable], Iterable] | None = None) -> Syncer:
    """A Syncer with its source, Aim repo and state open; `Syncer.close()` closes them."""
    options = cfg.options(strict_experiments=strict_experiments)
    source = open_source(cfg.tracking_uri, must_exist=must_exist)
    if must_exist:  # bad input fails here, before an Aim repo is created for it
        select_experiments(source.experiments(), options)
    repo, created = open_repo(cfg.aim_repo)
    if created:
        log.info("created a new Aim repo at %s", cfg.aim_repo)
    state = State(cfg.state_path, source_identity(cfg.tracking_uri))
    return Syncer(source, repo, state, options, progress=progress)
