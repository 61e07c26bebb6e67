"""What a URI names on this machine: a local folder or database file, or something remote
(tracking URIs, artifact URIs)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse


def is_local_store(uri: str) -> bool:
    """A folder path or `file:` URI (a file store, or a local artifact root)."""
    scheme = urlparse(uri).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")


def local_path(uri: str) -> Path | None:
    """The file or folder a local store lives in (a file store folder or a sqlite file)."""
    p = urlparse(uri)
    if p.scheme in ("", "file"):
        # as MLflow's `local_file_uri_to_path` (POSIX: url2pathname is unquote; Windows: MLflow's, for UNC paths)
        if p.scheme == "file" and os.name == "nt":
            from mlflow.utils.file_utils import local_file_uri_to_path

            return Path(local_file_uri_to_path(uri))
        return Path(unquote(p.path) if p.scheme == "file" else uri).expanduser()
    if p.scheme == "sqlite":
        path = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else ""
        return Path(path) if path and path != ":memory:" else None
    return None
