"""Everything that reads MLflow, one module per kind of store behind `base.Source`; the kinds
are listed in `registry` (a new kind of store: one module and one line there):

- `files.FileStoreSource`: local file stores (`mlruns/` folders, `file:` URIs);
- `sql.SqlSource`: sqlite, PostgreSQL, MySQL databases, read directly (read-only);
- `http.HttpSource`: MLflow tracking servers, through MLflow's REST client.

A tracking URI is parsed once (`location.StoreLocation`); a source is asked what may have
changed (`base.ListingAsk` -> `base.Changes`) and counts what it reads (`base.ReadStats`).
MLflow internals in use are listed in `mlflow_compat`, checked when a source opens.
"""

from __future__ import annotations

import importlib
import threading

from .base import Changes, ListingAsk, ReadStats, Source
from .location import StoreLocation
from .records import AnyRun, ArtifactFile, BrokenRun, Experiment, KeyMark, LoggedModel, MetricChunk, RunRecord
from .registry import KINDS

__all__ = [
    "AnyRun",
    "ArtifactFile",
    "BrokenRun",
    "Changes",
    "Experiment",
    "KeyMark",
    "ListingAsk",
    "LoggedModel",
    "MetricChunk",
    "ReadStats",
    "RunRecord",
    "Source",
    "StoreLocation",
    "open_source",
]


def open_source(
    location: StoreLocation,
    reads: ReadStats,
    *,
    must_exist: bool = True,
    stop: threading.Event | None = None,
    workspaces: tuple[str, ...] = (),
) -> Source:
    """The source for a store (its kind's module imported now); `workspaces`: the MLflow
    workspaces to read (empty: all). Raises StoreError, or StoreUnavailable when the store may
    appear later and `must_exist` is False, with a one-line reason."""
    kind = next(k for k in KINDS if k.name == location.kind)
    cls = getattr(importlib.import_module(kind.module), kind.cls)
    source: Source = cls(location, reads, must_exist=must_exist, stop=stop, workspaces=workspaces)
    return source
