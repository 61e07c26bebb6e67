"""Local MLflow file stores (`mlruns/` folders, `file:` URIs).

Run metadata, params, tags and inputs are read with MLflow's own `FileStore` code (so stores
written by MLflow 1.x/2.x read as MLflow reads them), but metric files are tailed from a byte
offset up to the last complete line: a round never re-reads history."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterator

from ..errors import RunUnreadable, StoreError, StoreUnavailable, one_line
from . import mlflow_compat
from .base import CHUNK_POINTS, ArtifactFile, BrokenRun, Experiment, MetricChunk, RunRecord, Source, fingerprint
from .entities import client_fetch_artifact, client_list_artifacts, datasets_from_inputs, experiment_from
from .uri import is_local_store, local_path

log = logging.getLogger(__name__)

_READ_BYTES = 1 << 20
_RESERVED = {"tags", "datasets", "traces", "models", "meta.yaml", ".trash"}


def parse_metric_line(line: bytes) -> tuple[int, float, int, str | None]:
    """One line of an MLflow metric file: `timestamp value [step [dataset_name dataset_digest]]`
    (MLflow 1.x files may lack the step). Raises ValueError on anything else."""
    parts = line.split()
    n = len(parts)
    if n not in (2, 3, 5):
        raise ValueError(f"{n} fields")
    ts = int(parts[0])
    value = float(parts[1])
    step = int(parts[2]) if n >= 3 else 0
    ds = parts[3].decode("utf-8", "replace") if n == 5 else None
    return ts, value, step, ds


class FileStoreSource(Source):
    """A local MLflow file store (`mlruns/`), with metric files tailed from a byte offset."""

    def __init__(self, uri: str, *, must_exist: bool = True):
        self.uri = uri
        root = local_path(uri)
        assert root is not None
        self.root = root.resolve()
        if not self.root.exists():
            if must_exist:
                raise StoreError(f"no MLflow store at {self.root}: the folder does not exist")
            raise StoreUnavailable(f"waiting for the MLflow store folder {self.root} to appear")
        if not self.root.is_dir():
            raise StoreError(f"{self.root} is a file, not an MLflow store folder (for a database use sqlite:///{self.root})")
        if not self._looks_like_store():
            if not must_exist and not any(self.root.iterdir()):
                raise StoreUnavailable(f"waiting for MLflow to write its first run into {self.root}")
            raise StoreError(f"{self.root} is not an MLflow file store (no <experiment>/meta.yaml inside)")
        # MLflow 3 refuses file stores unless told; reading one is exactly what we are for.
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        mlflow_compat.check_mlflow_compatibility()
        from mlflow.store.tracking.file_store import FileStore

        self.store = FileStore(str(self.root))
        self._client_obj: Any = None

    def _looks_like_store(self) -> bool:
        try:
            for entry in os.scandir(self.root):
                if entry.name == ".trash" and entry.is_dir():
                    return True
                if entry.is_dir() and os.path.exists(os.path.join(entry.path, "meta.yaml")):
                    return True
        except OSError as e:
            raise StoreError(f"cannot read {self.root}: {e.strerror}") from None
        return False

    def _client(self) -> Any:
        if self._client_obj is None:
            from mlflow.tracking import MlflowClient

            self._client_obj = MlflowClient(tracking_uri=self.root.as_uri())
        return self._client_obj

    def experiments(self) -> list[Experiment]:
        from mlflow.entities import ViewType

        try:
            exps = self.store.search_experiments(view_type=ViewType.ALL, max_results=50_000)
        except Exception as e:
            raise StoreError(f"cannot read MLflow file store {self.root}: {one_line(e)}") from None
        return [experiment_from(e) for e in exps]

    def _experiment_dir(self, experiment_id: str) -> Path:
        live = self.root / experiment_id
        return live if live.is_dir() else self.root / ".trash" / experiment_id

    def runs(self, experiment: Experiment) -> Iterator[RunRecord | BrokenRun]:
        exp_dir = self._experiment_dir(experiment.id)
        try:
            entries = sorted(os.scandir(exp_dir), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.name in _RESERVED or not entry.is_dir():
                continue
            run_dir = Path(entry.path)
            if not (run_dir / "meta.yaml").exists():
                continue
            try:
                yield self._read_run(experiment, run_dir)
            except Exception as e:  # corrupt meta.yaml, unreadable files
                yield BrokenRun(entry.name, experiment.id, f"{type(e).__name__}: {one_line(e)}")

    def _read_run(self, experiment: Experiment, run_dir: Path) -> RunRecord:
        stats = []
        for sub in ("params", "tags", "inputs"):
            stats.extend(_tree_stats(run_dir / sub))
        meta = (run_dir / "meta.yaml").stat()
        store = mlflow_compat.FileStoreInternals(self.store)
        info = store.run_info(run_dir)
        if info is None or not getattr(info, "run_id", None):
            raise RunUnreadable("meta.yaml has no run id")
        if info.run_id != run_dir.name:
            raise RunUnreadable(f"meta.yaml names run {info.run_id}, folder is {run_dir.name}")
        params = store.params(info)
        tags = store.tags(info)
        try:
            datasets = datasets_from_inputs(store.inputs(info))
        except Exception as e:  # stores older than MLflow 2.4 have no inputs
            log.debug("no inputs for run %s: %s", info.run_id, e)
            datasets = []
        marks = {rel: size for rel, size, _mtime in _tree_stats(run_dir / "metrics")}
        rec = RunRecord(
            run_id=info.run_id,
            experiment_id=experiment.id,
            name=info.run_name or tags.get("mlflow.runName") or info.run_id,
            status=info.status,
            start_time=info.start_time,
            end_time=info.end_time,
            lifecycle_stage=info.lifecycle_stage,
            user=info.user_id or tags.get("mlflow.user"),
            artifact_uri=info.artifact_uri,
            params=params,
            tags=tags,
            datasets=datasets,
            metric_marks=marks,
        )
        rec.fingerprint = fingerprint(meta.st_mtime_ns, meta.st_size, stats, experiment.name,
                                      experiment.lifecycle_stage)
        return rec

    def metric_changed(self, run: RunRecord, key: str, cursor: dict[str, Any] | None) -> bool:
        return cursor is None or cursor.get("offset", 0) != run.metric_marks.get(key)

    def _artifact_dir(self, run: RunRecord) -> Path | None:
        """The run's local artifact folder. A store copied from another machine (rsync of
        mlruns/) records artifact paths that no longer exist: fall back to <run>/artifacts."""
        recorded = local_path(run.artifact_uri) if run.artifact_uri and is_local_store(run.artifact_uri) else None
        if recorded is not None and recorded.is_dir():
            return recorded
        beside = self._experiment_dir(run.experiment_id) / run.run_id / "artifacts"
        if beside.is_dir() or recorded is not None:
            return beside
        return None  # a remote artifact store (s3:, gs:, ...): ask MLflow

    def list_artifacts(self, run: RunRecord) -> list[ArtifactFile]:
        root = self._artifact_dir(run)
        if root is None:
            return client_list_artifacts(self._client(), run)
        return [ArtifactFile(rel, size) for rel, size, _ in _tree_stats(root)]

    def fetch_artifact(self, run: RunRecord, path: str, dst_dir: str) -> str:
        root = self._artifact_dir(run)
        if root is None:
            return client_fetch_artifact(self._client(), run, path, dst_dir)
        return str(root / path)

    def read_metric(self, run: RunRecord, key: str,
                    cursor: dict[str, Any] | None) -> Iterator[tuple[MetricChunk, dict[str, Any]]]:
        path = self._experiment_dir(run.experiment_id) / run.run_id / "metrics" / key
        offset = (cursor or {}).get("offset", 0)
        bad = []
        try:
            f = open(path, "rb")
        except OSError as e:
            raise RunUnreadable(f"metric {key!r}: {e.strerror}") from None
        with f:
            size = os.fstat(f.fileno()).st_size
            if size < offset:  # truncated or replaced: start again, writes are idempotent
                log.warning("run %s metric %r shrank; re-reading it", run.run_id, key)
                offset = 0
            f.seek(offset)
            chunk = MetricChunk(key, [], [], [])
            names: list[str | None] = []
            tail = b""
            pos = offset
            while True:
                block = f.read(_READ_BYTES)
                if not block:
                    break
                data = tail + block
                cut = data.rfind(b"\n")
                if cut < 0:
                    tail = data
                    continue
                tail = data[cut + 1:]
                for line in data[:cut].split(b"\n"):
                    pos += len(line) + 1
                    if not line.strip():
                        continue
                    try:
                        ts, value, step, ds = parse_metric_line(line)
                    except ValueError:
                        bad.append(line[:60].decode("utf-8", "replace"))
                        continue
                    chunk.timestamps.append(ts)
                    chunk.values.append(value)
                    chunk.steps.append(step)
                    names.append(ds)
                    if len(chunk) >= CHUNK_POINTS:
                        chunk.dataset_names = names if any(names) else None
                        yield chunk, {"offset": pos}
                        chunk, names = MetricChunk(key, [], [], []), []
            chunk.dataset_names = names if any(names) else None
            # the bytes after the last newline are a line MLflow is still writing: leave them
            yield chunk, {"offset": pos}
        if bad:
            raise RunUnreadable(f"metric {key!r}: skipped {len(bad)} malformed line(s), first: {bad[0]!r}")


def _tree_stats(root: Path) -> list[tuple[str, int, int]]:
    """(relative posix path, size, mtime_ns) of every file under root; [] if root is missing.
    Metric and tag names may contain '/', which the file store keeps as sub-folders."""
    out = []
    try:
        stack = [root]
        while stack:
            d = stack.pop()
            for e in os.scandir(d):
                if e.is_dir(follow_symlinks=False):
                    stack.append(Path(e.path))
                else:
                    st = e.stat()
                    out.append((Path(e.path).relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    except FileNotFoundError:
        return []
    out.sort()
    return out
