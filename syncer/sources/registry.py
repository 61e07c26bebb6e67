"""The kinds of MLflow store the syncer reads: one module each, one line here. Adding a kind of
store is a new module implementing `base.Source` and a line in `KINDS`."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class StoreKind:
    name: str
    schemes: tuple[str, ...]  # URI schemes ("": a bare folder path)
    module: str  # imported only when a store of this kind is opened
    cls: str


KINDS: tuple[StoreKind, ...] = (
    StoreKind("file", ("", "file"), "syncer.sources.files", "FileStoreSource"),
    StoreKind("sql", ("sqlite", "postgresql", "mysql", "mssql"), "syncer.sources.sql", "SqlSource"),
    StoreKind("http", ("http", "https", "databricks"), "syncer.sources.http", "HttpSource"),
)


def kind_of(scheme: str) -> StoreKind | None:
    if len(scheme) == 1 and os.name == "nt":  # a drive letter: a folder
        scheme = ""
    base = scheme.split("+")[0]  # postgresql+psycopg
    return next((k for k in KINDS if base in k.schemes), None)
