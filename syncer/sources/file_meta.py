"""MLflow's file store layout (`mlruns/`), read as MLflow's own `FileStore` reads it, without
importing MLflow: a second of every backfill's start, and of each worker's.

`meta.yaml` files as MLflow writes them, experiment folders, params and tags. Whatever is not
plain (a field missing or of another type, a name MLflow refuses, an odd folder, a run with
dataset inputs) is read by MLflow's own FileStore through `mlflow_compat` (its private readers),
so the answer, or the error, is MLflow's. tests/test_file_store_reading.py compares every reader
here with MLflow's on stores of MLflow 1.30, 2.9 and the installed version, and on hand-edited
ones: the guard of this module.
"""

from __future__ import annotations

import codecs
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import mlflow_compat

# MLflow's file store layout, as its FileStore reads it (`_read_persisted_run_info_dict`,
# `_get_experiment`, `_validate_param_name`/`_validate_tag_name`); tests/test_file_store_reading.py
# compares every reader below with MLflow's own on stores of MLflow 1.x, 2.x and this version
RUN_STATUSES = {1: "RUNNING", 2: "SCHEDULED", 3: "FINISHED", 4: "FAILED", 5: "KILLED"}  # meta.yaml's ints
_NAME_CHARS = re.compile(r"^[/\w.\- :]*$")  # a param, tag or metric name (not on Windows: no colon)
_EXPERIMENT_ID = re.compile(r"^[a-zA-Z0-9][\w\-]{0,63}$")
_TRASH, _REGISTRY = ".trash", "models"  # not experiments: deleted ones' folder, the model registry's


@dataclass(frozen=True)
class RunMeta:
    """A run's `meta.yaml`: the fields of `mlflow.entities.RunInfo` the syncer reads."""

    run_id: str
    experiment_id: str
    user_id: str
    status: str
    start_time: int
    end_time: int | None
    lifecycle_stage: str
    artifact_uri: str | None
    run_name: str | None


@dataclass(frozen=True)
class ExperimentMeta:
    """An experiment's `meta.yaml` and tags: the fields of `mlflow.entities.Experiment` the syncer reads."""

    experiment_id: str
    name: str
    lifecycle_stage: str
    creation_time: int | None
    tags: dict[str, str]


class StoreGone(Exception):
    """The file store's folder is not there (moved, deleted, a mount gone)."""


class _NotPlain(Exception):
    """Something this reader does not read as MLflow would: MLflow's own reader is asked."""


def read_whole(path: str) -> bytes:
    """A whole (small) file's bytes, read to its end: four system calls where
    `open(path, "rb").read()` makes eight (it also asks fstat twice, isatty and lseek). A
    backfill reads hundreds of thousands of param and tag files. The end is an empty read, as
    for `open().read()`: a filesystem that answers part of a read (FUSE, some network mounts)
    gives the whole value all the same; the reads after the first ask for no more than it did
    (a 1 MB buffer a file costs more than the read)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, _FIRST_READ)
        if not data:
            return data
        parts = [data]
        while more := os.read(fd, _FIRST_READ):
            parts.append(more)
        return parts[0] if len(parts) == 1 else b"".join(parts)
    finally:
        os.close(fd)


_FIRST_READ = 1 << 16


def _yaml(path: str) -> Any:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # what MLflow's read_yaml uses
    return yaml.load(codecs.utf_8_decode(read_whole(path), "strict", True)[0], Loader=loader)


def _plain_name(name: str) -> bool:
    """Whether MLflow's `_validate_param_name` / `_validate_tag_name` accept the name."""
    norm = posixpath.normpath(name)
    unique = norm == name and norm != "." and not norm.startswith("..") and not norm.startswith("/")
    return os.name != "nt" and unique and _NAME_CHARS.match(name) is not None


def _is(value: Any, *types: type) -> bool:
    return type(value) in types  # exact: a YAML bool is not an int here


def _run_meta(meta: Any) -> RunMeta:
    """`_read_persisted_run_info_dict` for the meta.yaml MLflow writes; _NotPlain for anything else."""
    if not isinstance(meta, dict):
        raise _NotPlain
    meta = dict[str, Any](meta)
    status = meta.get("status", 1)
    exp_id, stage = meta.get("experiment_id"), meta.get("lifecycle_stage", "active")
    start, end = meta.get("start_time"), meta.get("end_time")
    artifact_uri, run_name = meta.get("artifact_uri"), meta.get("run_name")
    if not (
        _is(meta.get("run_id"), str)
        and _is(exp_id, str, int)
        and _is(meta.get("user_id"), str)
        and _is(status, int)
        and status in RUN_STATUSES
        and _is(start, int)
        and "end_time" in meta  # RunInfo's argument without a default, None or not
        and (end is None or _is(end, int))
        and _is(stage, str)
        and (artifact_uri is None or _is(artifact_uri, str))
        and (run_name is None or _is(run_name, str))
    ):
        raise _NotPlain
    return RunMeta(
        meta["run_id"], str(exp_id), meta["user_id"], RUN_STATUSES[status], start, end, stage, artifact_uri, run_name
    )


class FileStoreInternals:
    """A file store's experiments and run folders read as MLflow's `FileStore` reads them, without
    importing MLflow (a second of a backfill's start, in each worker process): `meta.yaml` files
    as MLflow writes them, params and tags without MLflow's per-file costs (a path made relative
    and a codecs reader per file: a quarter of a backfill of short runs with 150 params). Whatever
    is not plain (a field missing or of another type, a name MLflow refuses, an odd folder, a run
    with inputs) is read by MLflow's own FileStore, made when first needed, so its answer (or its
    error) is MLflow's."""

    def __init__(self, root: Path):
        self.root = root
        self._store: Any = None

    @property
    def store(self) -> Any:
        """MLflow's FileStore for the folder (imports MLflow; it creates `.trash` if missing)."""
        if self._store is None:
            self._check_root()  # MLflow's FileStore would make a missing folder (and a Default experiment)
            self._store = mlflow_compat.file_store(self.root)
        return self._store

    def _check_root(self) -> None:
        """What MLflow's `FileStore._check_root_dir` raises when the store's folder is gone."""
        if not os.path.isdir(self.root):
            raise StoreGone(
                f"'{self.root}' does not exist."
                if not os.path.exists(self.root)
                else f"'{self.root}' is not a directory."
            )

    # -- experiments -----------------------------------------------------------------------------
    def experiments(self) -> list[ExperimentMeta]:
        """`FileStore.search_experiments(ViewType.ALL)`: live and deleted experiments, newest first."""
        self._check_root()
        try:
            found = self._plain_experiments()
        except _NotPlain:
            from mlflow.entities import ViewType

            found = [
                ExperimentMeta(e.experiment_id, e.name, e.lifecycle_stage, e.creation_time, dict(e.tags))
                for e in self.store.search_experiments(view_type=ViewType.ALL, max_results=50_000)
            ]
        return found

    def _plain_experiments(self) -> list[ExperimentMeta]:
        out: list[ExperimentMeta] = []
        trash = os.path.join(self.root, _TRASH)
        in_root: set[str] = set()  # every name in the store's folder: MLflow looks there first for an id
        for parent in (str(self.root), trash):
            try:
                entries = list(os.scandir(parent))
            except FileNotFoundError:
                if parent == trash:
                    continue
                raise _NotPlain from None
            except OSError:
                raise _NotPlain from None
            if parent != trash:
                in_root = {e.name for e in entries}
            for entry in (e for e in entries if e.is_dir()):
                if parent != trash and (entry.name.endswith(_TRASH) or entry.name == _REGISTRY):
                    continue
                # a deleted id with anything of that name in the root (MLflow reads that instead), or
                # an id MLflow refuses: MLflow's reader says what it makes of it
                if (parent == trash and entry.name in in_root) or not _EXPERIMENT_ID.match(entry.name):
                    raise _NotPlain
                out.append(self._experiment(entry.path, entry.name))
        # MLflow's order: creation time, newest first (none: last), then id
        out.sort(key=lambda e: (e.creation_time is None, -(e.creation_time or 0), e.experiment_id))
        return out

    def _experiment(self, exp_dir: str, exp_id: str) -> ExperimentMeta:
        try:
            meta = _yaml(os.path.join(exp_dir, "meta.yaml"))
        except Exception:
            raise _NotPlain from None  # missing, unreadable: MLflow skips it with a warning, or fails
        if not isinstance(meta, dict):
            raise _NotPlain
        meta = dict[str, Any](meta)
        found, name, stage = meta.get("experiment_id"), meta.get("name"), meta.get("lifecycle_stage")
        created = meta.get("creation_time")
        if not (
            _is(found, str, int)
            and str(found) == exp_id
            and _is(name, str)
            and "artifact_location" in meta
            and _is(stage, str)
            and (created is None or _is(created, int))
        ):
            raise _NotPlain
        tags = self._files(os.path.join(exp_dir, "tags"))
        return ExperimentMeta(exp_id, meta["name"], meta["lifecycle_stage"], created, tags)

    # -- runs --------------------------------------------------------------------------------------
    def run_info(self, run_dir: Path) -> RunMeta:
        """The run's `meta.yaml` (`FileStore._get_run_info_from_dir`)."""
        try:
            return _run_meta(_yaml(os.path.join(run_dir, "meta.yaml")))
        except Exception:  # not plain, unreadable, not YAML: MLflow's reader answers, or raises its error
            pass
        info = mlflow_compat.run_info_from_dir(self.store, run_dir)
        return RunMeta(
            info.run_id,
            info.experiment_id,
            info.user_id,
            info.status,
            info.start_time,
            info.end_time,
            info.lifecycle_stage,
            info.artifact_uri,
            info.run_name,
        )

    def params(self, run_dir: Path) -> dict[str, str]:
        """`FileStore._get_all_params` as name -> value."""
        return self._files(os.path.join(run_dir, "params"), "param")

    def tags(self, run_dir: Path) -> dict[str, str]:
        """`FileStore._get_all_tags` as name -> value."""
        return self._files(os.path.join(run_dir, "tags"))

    def _files(self, top: str, kind: str = "tag") -> dict[str, str]:
        """name -> content of every file under `top` (nested names with "/"), in os.walk's order,
        each name checked as MLflow's validator checks it (a name it refuses: its error), each
        content decoded as `codecs.open(path, encoding="utf-8").read()` decodes it."""
        out: dict[str, str] = {}
        for root, _dirs, files in os.walk(top):
            rel = os.path.relpath(root, top)
            for name in files:
                key = name if rel == "." else os.path.join(rel, name).replace(os.sep, "/")
                if not _plain_name(key):
                    mlflow_compat.validate_name(kind, key)
                out[key] = codecs.utf_8_decode(read_whole(os.path.join(root, name)), "strict", False)[0]
        return out

    def inputs(self, run_dir: Path, info: RunMeta) -> Any:
        """The run's `mlflow.entities.RunInputs` (MLflow's reader); None when it has none."""
        if not os.path.isdir(os.path.join(run_dir, "inputs")):
            return None
        return mlflow_compat.run_inputs(self.store, info)
