"""Everything that reads MLflow, one module per kind of store, behind `base.Source`.

`open_source(uri)` picks the backend for a tracking URI:

- `files.FileStoreSource`: local file stores (`mlruns/` folders, `file:` URIs);
- `client.ClientSource`: `MlflowClient` for sqlite and other SQLAlchemy URIs and http(s) servers.

MLflow internals in use are listed in `mlflow_compat`, checked when a source opens.
"""

from __future__ import annotations

from urllib.parse import urlparse

from ..errors import StoreError, StoreUnavailable
from ..redact import redact
from .base import ArtifactFile, BrokenRun, Experiment, MetricChunk, RunRecord, Source
from .uri import is_local_store, local_path, source_identity

__all__ = ["ArtifactFile", "BrokenRun", "Experiment", "MetricChunk", "RunRecord", "Source",
           "is_local_store", "local_path", "open_source", "source_identity"]

_SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def open_source(uri: str, *, must_exist: bool = True) -> Source:
    """The right backend for a tracking URI. Raises StoreError (StoreUnavailable when the store
    may appear later and `must_exist` is False) with a one-line reason."""
    if not uri:
        raise StoreError("no MLflow tracking URI: pass --mlflow-tracking-uri or set MLFLOW_TRACKING_URI")
    if is_local_store(uri):
        from .files import FileStoreSource

        return FileStoreSource(uri, must_exist=must_exist)
    if uri.startswith("sqlite:"):
        path = local_path(uri)
        if path is not None and not path.exists():
            if must_exist:
                raise StoreError(f"no MLflow database at {path} (from {uri})")
            raise StoreUnavailable(f"waiting for the MLflow database {path} to appear")
    scheme = urlparse(uri).scheme
    if scheme not in ("http", "https", "databricks") and "+" not in scheme and scheme not in _SQL_SCHEMES:
        raise StoreError(f"unsupported MLflow tracking URI scheme {scheme!r} in {redact(uri)}")
    from .client import ClientSource

    return ClientSource(uri)
