"""Everything that reads MLflow, one module per kind of store, behind `base.Source`.

`open_source(uri)` picks the backend for a tracking URI:

- `files.FileStoreSource`: local file stores (`mlruns/` folders, `file:` URIs);
- `sql.SqlSource`: sqlite, PostgreSQL, MySQL databases, read directly (read-only);
- `http.HttpSource`: MLflow tracking servers, through MLflow's REST client.

Each lists only what can have changed since the last round (`Source.changes`), with a full
listing every `full_every_s` seconds; `listing.ReadStats` counts what a round read.

MLflow internals in use are listed in `mlflow_compat`, checked when a source opens.
"""

from __future__ import annotations

from urllib.parse import urlparse

from ..errors import StoreError, StoreUnavailable
from ..redact import redact
from .base import ArtifactFile, BrokenRun, Experiment, MetricChunk, RunRecord, Source
from .uri import is_local_store, local_path, source_identity

__all__ = [
    "ArtifactFile",
    "BrokenRun",
    "Experiment",
    "MetricChunk",
    "RunRecord",
    "Source",
    "is_local_store",
    "local_path",
    "open_source",
    "source_identity",
]

_SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def open_source(uri: str, *, must_exist: bool = True, full_every_s: float = 60.0) -> Source:
    """The right backend for a tracking URI. Raises StoreError, or StoreUnavailable when the
    store may appear later and `must_exist` is False, with a one-line reason."""
    if not uri:
        raise StoreError("no MLflow tracking URI: pass --mlflow-tracking-uri or set MLFLOW_TRACKING_URI")
    if is_local_store(uri):
        from .files import FileStoreSource

        return FileStoreSource(uri, must_exist=must_exist, full_every_s=full_every_s)
    if uri.startswith("sqlite:"):
        path = local_path(uri)
        if path is not None and not path.exists():
            if must_exist:
                raise StoreError(f"no MLflow database at {path} (from {uri})")
            raise StoreUnavailable(f"waiting for the MLflow database {path} to appear")
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https", "databricks"):
        from .http import HttpSource

        return HttpSource(uri, full_every_s=full_every_s)
    if scheme.split("+")[0] in _SQL_SCHEMES:
        from .sql import SqlSource

        return SqlSource(uri, full_every_s=full_every_s)
    raise StoreError(f"unsupported MLflow tracking URI scheme {scheme!r} in {redact(uri)}")
