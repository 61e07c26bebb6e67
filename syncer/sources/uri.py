"""What a tracking URI names: a local folder or database file, or something remote."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from ..redact import redact


def is_local_store(uri: str) -> bool:
    """A folder path or `file:` URI (a file store, or a local artifact root)."""
    scheme = urlparse(uri).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")


def local_path(uri: str) -> Path | None:
    """The file or folder a local store lives in (a file store folder or a sqlite file)."""
    p = urlparse(uri)
    if p.scheme in ("", "file"):
        from mlflow.utils.file_utils import local_file_uri_to_path

        return Path(local_file_uri_to_path(uri) if p.scheme == "file" else uri).expanduser()
    if p.scheme == "sqlite":
        path = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else ""
        return Path(path) if path and path != ":memory:" else None
    return None


def source_identity(uri: str) -> str:
    """The key cursors are stored under: stable across spellings of the same local store."""
    path = local_path(uri)
    if path is not None:
        scheme = "sqlite" if uri.startswith("sqlite:") else "file"
        return f"{scheme}://{path.expanduser().resolve()}"
    return redact(uri).rstrip("/")
