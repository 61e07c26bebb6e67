"""A tracking URI, parsed once: which kind of store it names (`registry`), where it lives on
this machine (a file store folder, a sqlite file), the identity cursors are stored under, and
how it is shown (credentials removed). Every consumer takes this, never the string."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ..errors import StoreError
from ..redact import redact
from .registry import kind_of
from .uri import local_path


@dataclass(frozen=True)
class StoreLocation:
    uri: str  # as given: may hold credentials, never printed
    kind: str  # the registry's name for the kind of store: file | sql | http
    path: Path | None  # the local folder or database file; None for remote stores
    identity: str  # the key cursors are stored under: stable across spellings of one local store
    display: str  # what logs and errors show: credentials removed

    @property
    def is_database_file(self) -> bool:
        return self.kind == "sql" and self.path is not None

    @classmethod
    def parse(cls, uri: str) -> StoreLocation:
        """Raises StoreError with a one-line reason for an empty or unsupported URI."""
        if not uri:
            raise StoreError("no MLflow tracking URI: pass --mlflow-tracking-uri or set MLFLOW_TRACKING_URI")
        scheme = urlparse(uri).scheme
        kind = kind_of(scheme)
        if kind is None:
            raise StoreError(f"unsupported MLflow tracking URI scheme {scheme!r} in {redact(uri)}")
        path = local_path(uri)
        if path is not None:
            prefix = "sqlite" if kind.name == "sql" else "file"
            identity = f"{prefix}://{path.expanduser().resolve()}"
        else:
            identity = redact(uri).rstrip("/")
        return cls(uri, kind.name, path, identity, redact(uri))
