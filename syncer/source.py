"""Everything that reads MLflow. Answers one question: what changed since these cursors?

Two backends behind one interface:

- `ClientSource`: `MlflowClient` for any tracking URI (sqlite and other SQLAlchemy URIs,
  http(s) servers with MLflow's usual auth variables, and file stores as a fallback).
  Changed metric keys are found from the latest-metric values `search_runs` returns; only
  those keys' histories are fetched.
- `FileStoreSource`: local file stores (`mlruns/` folders, `file:` URIs). Run metadata, params,
  tags and inputs are read with MLflow's own `FileStore` code (so stores written by MLflow
  1.x/2.x read as MLflow reads them), but metric files are tailed from a byte offset up to the
  last complete line: a round never re-reads history.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse, urlunparse

log = logging.getLogger(__name__)

CHUNK_POINTS = 10_000  # points handed to the sink at a time (bounded memory)
_READ_BYTES = 1 << 20


class SourceError(Exception):
    """The store cannot be read at all (wrong URI, unreachable server, not a store)."""


class SourceUnavailable(SourceError):
    """A transient failure (server down, connection refused): worth retrying."""


class RunReadError(Exception):
    """One run (or one of its files) cannot be read; the rest of the store can."""


@dataclass
class Experiment:
    id: str
    name: str
    lifecycle_stage: str = "active"
    description: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class RunRecord:
    run_id: str
    experiment_id: str
    name: str
    status: str
    start_time: int | None  # ms since epoch
    end_time: int | None
    lifecycle_stage: str
    user: str | None
    artifact_uri: str | None
    params: dict[str, str]
    tags: dict[str, str]
    datasets: list[dict[str, Any]]
    # key -> an opaque mark that changes when the key has new points (file size, latest value)
    metric_marks: dict[str, Any]
    fingerprint: str = ""

    @property
    def deleted(self) -> bool:
        return self.lifecycle_stage == "deleted"

    @property
    def running(self) -> bool:
        return self.status in ("RUNNING", "SCHEDULED")


@dataclass
class BrokenRun:
    run_id: str
    experiment_id: str
    error: str


@dataclass
class MetricChunk:
    """Points of one metric key, in log order. `dataset_names` is None when no point has one."""

    key: str
    steps: list[int]
    values: list[float]
    timestamps: list[int]  # ms since epoch, MLflow's own
    dataset_names: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.steps)


@dataclass
class ArtifactFile:
    path: str  # relative to the run's artifact root, posix separators
    size: int | None


def redact(uri: str) -> str:
    """A URI safe to log: no password or token."""
    try:
        p = urlparse(uri)
    except ValueError:
        return uri
    if p.password or (p.username and p.scheme in ("http", "https")):
        host = p.hostname or ""
        if p.port:
            host += f":{p.port}"
        user = f"{p.username}:***@" if p.password else "***@"
        return urlunparse(p._replace(netloc=user + host))
    return uri


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _datasets_from_inputs(inputs: Any) -> list[dict[str, Any]]:
    out = []
    for di in getattr(inputs, "dataset_inputs", None) or []:
        ds = di.dataset
        item = {
            "name": ds.name,
            "digest": ds.digest,
            "source_type": ds.source_type,
            "source": ds.source,
        }
        if getattr(ds, "profile", None):
            item["profile"] = ds.profile
        for tag in di.tags or []:
            if tag.key == "mlflow.data.context":
                item["context"] = tag.value
        out.append(item)
    return out


def is_local_store(uri: str) -> bool:
    scheme = urlparse(uri).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")


def local_path(uri: str) -> Path | None:
    """The file or folder a local store lives in (a file store folder or a sqlite file)."""
    p = urlparse(uri)
    if p.scheme in ("", "file"):
        from mlflow.utils.file_utils import local_file_uri_to_path

        return Path(local_file_uri_to_path(uri) if p.scheme == "file" else uri).expanduser()
    if p.scheme == "sqlite":
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        return Path(path) if path and path != ":memory:" else None
    return None


def open_source(uri: str, *, must_exist: bool = True) -> "Source":
    """The right backend for a tracking URI. Raises SourceError with a one-line reason."""
    if not uri:
        raise SourceError("no MLflow tracking URI: pass --mlflow-tracking-uri or set MLFLOW_TRACKING_URI")
    if is_local_store(uri):
        return FileStoreSource(uri, must_exist=must_exist)
    if uri.startswith("sqlite:"):
        path = local_path(uri)
        if path is not None and not path.exists():
            if must_exist:
                raise SourceError(f"no MLflow database at {path} (from {uri})")
            raise SourceUnavailable(f"waiting for the MLflow database {path} to appear")
    scheme = urlparse(uri).scheme
    if scheme not in ("http", "https", "databricks") and "+" not in scheme and scheme not in (
        "sqlite", "postgresql", "mysql", "mssql"
    ):
        raise SourceError(f"unsupported MLflow tracking URI scheme {scheme!r} in {redact(uri)}")
    return ClientSource(uri)


class Source:
    uri: str

    def describe(self) -> str:
        return redact(self.uri)

    def experiments(self) -> list[Experiment]:
        raise NotImplementedError

    def runs(self, experiment: Experiment) -> Iterator[RunRecord | BrokenRun]:
        raise NotImplementedError

    def read_metric(self, run: RunRecord, key: str, cursor: dict | None) -> Iterator[tuple[MetricChunk, dict]]:
        """Points of `key` logged after `cursor`, in chunks; each with the cursor after it."""
        raise NotImplementedError

    def list_artifacts(self, run: RunRecord) -> list[ArtifactFile]:
        from mlflow.tracking import MlflowClient

        client: MlflowClient = self._client()
        out: list[ArtifactFile] = []
        stack = [None]
        while stack:
            for info in client.list_artifacts(run.run_id, stack.pop()):
                if info.is_dir:
                    stack.append(info.path)
                else:
                    out.append(ArtifactFile(info.path, info.file_size))
        return sorted(out, key=lambda a: a.path)

    def fetch_artifact(self, run: RunRecord, path: str, dst_dir: str) -> str:
        """A local file with the artifact's content (no copy for local artifact stores)."""
        if run.artifact_uri and is_local_store(run.artifact_uri):
            local = local_path(run.artifact_uri)
            if local is not None:
                return str(local / path)
        return self._client().download_artifacts(run.run_id, path, dst_dir)

    def _client(self):
        raise NotImplementedError

    def close(self) -> None:
        pass


def _mlflow_error(uri: str, e: Exception) -> SourceError:
    """A one-line, credential-free error for a failed MLflow call."""
    from .config import scrub

    text = scrub(str(e).strip())
    first = text.splitlines()[0] if text else type(e).__name__
    unreachable = ("Connection refused", "Max retries exceeded", "Failed to establish", "Name or service not known",
                   "timed out", "Temporary failure in name resolution", "RemoteDisconnected", "Connection aborted")
    for marker in unreachable:
        if marker in text or marker in type(e).__name__:
            reason = "connection refused" if "refused" in text else marker.lower()
            return SourceUnavailable(f"MLflow at {redact(uri)} is unreachable ({reason})")
    if len(first) > 300:
        first = first[:300] + "…"
    return SourceError(f"cannot read MLflow at {redact(uri)}: {first}")


class ClientSource(Source):
    """Any tracking URI, through MlflowClient."""

    PAGE = 1000

    def __init__(self, uri: str):
        from mlflow.tracking import MlflowClient

        self.uri = uri
        # keep MLflow's HTTP retries short: the daemon has its own back-off
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        try:
            self.client = MlflowClient(tracking_uri=uri)
        except Exception as e:  # bad URI, out-of-date database schema, missing driver
            raise _mlflow_error(uri, e) from None

    def _client(self):
        return self.client

    def experiments(self) -> list[Experiment]:
        from mlflow.entities import ViewType

        try:
            exps, token = [], None
            while True:
                page = self.client.search_experiments(view_type=ViewType.ALL, max_results=self.PAGE, page_token=token)
                exps.extend(page)
                token = page.token
                if not token:
                    break
        except Exception as e:
            raise _mlflow_error(self.uri, e) from None
        return [
            Experiment(e.experiment_id, e.name, e.lifecycle_stage, e.tags.get("mlflow.note.content"), dict(e.tags))
            for e in exps
        ]

    def runs(self, experiment: Experiment) -> Iterator[RunRecord | BrokenRun]:
        from mlflow.entities import ViewType

        token = None
        while True:
            try:
                page = self.client.search_runs(
                    [experiment.id], run_view_type=ViewType.ALL, max_results=self.PAGE, page_token=token
                )
            except Exception as e:
                raise _mlflow_error(self.uri, e) from None
            for r in page:
                info, data = r.info, r.data
                marks = {m.key: [m.timestamp, m.step, _num(m.value)] for m in data._metric_objs}
                rec = RunRecord(
                    run_id=info.run_id,
                    experiment_id=info.experiment_id,
                    name=info.run_name or data.tags.get("mlflow.runName") or info.run_id,
                    status=info.status,
                    start_time=info.start_time,
                    end_time=info.end_time,
                    lifecycle_stage=info.lifecycle_stage,
                    user=info.user_id or data.tags.get("mlflow.user"),
                    artifact_uri=info.artifact_uri,
                    params=dict(data.params),
                    tags=dict(data.tags),
                    datasets=_datasets_from_inputs(r.inputs),
                    metric_marks=marks,
                )
                rec.fingerprint = _fingerprint(
                    rec.name, rec.status, rec.start_time, rec.end_time, rec.lifecycle_stage,
                    rec.params, rec.tags, rec.datasets, experiment.name, experiment.lifecycle_stage,
                )
                yield rec
            token = page.token
            if not token:
                return

    def read_metric(self, run, key, cursor):
        """MlflowClient can only return a key's whole history: fetch it, hand on the points at
        or after the cursor's timestamp. Re-sent boundary points land on the same step, so
        they overwrite rather than double."""
        try:
            history = self.client.get_metric_history(run.run_id, key)
        except Exception as e:
            raise _mlflow_error(self.uri, e) from None
        since = (cursor or {}).get("ts", -1)
        pts = sorted((m for m in history if m.timestamp >= since), key=lambda m: (m.timestamp, m.step))
        new_cursor = {"ts": max([since] + [m.timestamp for m in pts]), "mark": run.metric_marks.get(key)}
        if not pts:
            yield MetricChunk(key, [], [], []), new_cursor
            return
        for i in range(0, len(pts), CHUNK_POINTS):
            part = pts[i:i + CHUNK_POINTS]
            names = [getattr(m, "dataset_name", None) for m in part]
            chunk = MetricChunk(
                key, [m.step for m in part], [m.value for m in part], [m.timestamp for m in part],
                names if any(names) else None,
            )
            last = i + CHUNK_POINTS >= len(pts)
            yield chunk, (new_cursor if last else {"ts": part[-1].timestamp})

    @staticmethod
    def metric_changed(run: RunRecord, key: str, cursor: dict | None) -> bool:
        return cursor is None or cursor.get("mark") != run.metric_marks.get(key)


def _num(v: float) -> Any:
    """JSON-safe stand-in for a float mark (NaN != NaN would always look changed)."""
    return repr(v) if isinstance(v, float) and not math.isfinite(v) else v


# ---------------------------------------------------------------------------------------------
# file stores

_EXP_DIR = re.compile(r"^\d+$|^[0-9a-f-]{6,}$")
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
                raise SourceError(f"no MLflow store at {self.root}: the folder does not exist")
            raise SourceUnavailable(f"waiting for the MLflow store folder {self.root} to appear")
        if not self.root.is_dir():
            raise SourceError(f"{self.root} is a file, not an MLflow store folder (for a database use sqlite:///{self.root})")
        if not self._looks_like_store():
            if not must_exist and not any(self.root.iterdir()):
                raise SourceUnavailable(f"waiting for MLflow to write its first run into {self.root}")
            raise SourceError(
                f"{self.root} is not an MLflow file store (no <experiment>/meta.yaml inside)"
            )
        # MLflow 3 refuses file stores unless told; reading one is exactly what we are for.
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        from mlflow.store.tracking.file_store import FileStore

        self.store = FileStore(str(self.root))
        self._client_obj = None

    def _looks_like_store(self) -> bool:
        try:
            for entry in os.scandir(self.root):
                if entry.name == ".trash" and entry.is_dir():
                    return True
                if entry.is_dir() and os.path.exists(os.path.join(entry.path, "meta.yaml")):
                    return True
        except OSError as e:
            raise SourceError(f"cannot read {self.root}: {e.strerror}") from None
        return False

    def _client(self):
        if self._client_obj is None:
            from mlflow.tracking import MlflowClient

            self._client_obj = MlflowClient(tracking_uri=self.root.as_uri())
        return self._client_obj

    def experiments(self) -> list[Experiment]:
        from mlflow.entities import ViewType

        try:
            exps = self.store.search_experiments(view_type=ViewType.ALL, max_results=50_000)
        except Exception as e:
            raise SourceError(f"cannot read MLflow file store {self.root}: {str(e).splitlines()[0]}") from None
        return [
            Experiment(e.experiment_id, e.name, e.lifecycle_stage, e.tags.get("mlflow.note.content"), dict(e.tags))
            for e in exps
        ]

    def _experiment_dir(self, exp: Experiment) -> Path:
        live = self.root / exp.id
        return live if live.is_dir() else self.root / ".trash" / exp.id

    def runs(self, experiment: Experiment) -> Iterator[RunRecord | BrokenRun]:
        exp_dir = self._experiment_dir(experiment)
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
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                yield BrokenRun(entry.name, experiment.id, f"{type(e).__name__}: {msg}")

    def _read_run(self, experiment: Experiment, run_dir: Path) -> RunRecord:
        stats = []
        for sub in ("params", "tags", "inputs"):
            stats.extend(_tree_stats(run_dir / sub))
        meta = (run_dir / "meta.yaml").stat()
        info = self.store._get_run_info_from_dir(str(run_dir))
        if info is None or not getattr(info, "run_id", None):
            raise RunReadError("meta.yaml has no run id")
        if info.run_id != run_dir.name:
            raise RunReadError(f"meta.yaml names run {info.run_id}, folder is {run_dir.name}")
        params = {p.key: p.value for p in self.store._get_all_params(info)}
        tags = {t.key: t.value for t in self.store._get_all_tags(info)}
        try:
            datasets = _datasets_from_inputs(self.store._get_all_inputs(info))
        except Exception as e:  # stores older than MLflow 2.4 have no inputs
            log.debug("no inputs for run %s: %s", info.run_id, e)
            datasets = []
        marks = {}
        for rel, size, _mtime in _tree_stats(run_dir / "metrics"):
            marks[rel] = size
        name = info.run_name or tags.get("mlflow.runName") or info.run_id
        rec = RunRecord(
            run_id=info.run_id,
            experiment_id=experiment.id,
            name=name,
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
        rec.fingerprint = _fingerprint(
            meta.st_mtime_ns, meta.st_size, stats, experiment.name, experiment.lifecycle_stage
        )
        return rec

    @staticmethod
    def metric_changed(run: RunRecord, key: str, cursor: dict | None) -> bool:
        return cursor is None or cursor.get("offset", 0) != run.metric_marks.get(key)

    def _artifact_dir(self, run: RunRecord) -> Path | None:
        """The run's local artifact folder. A store copied from another machine (rsync of
        mlruns/) records artifact paths that no longer exist: fall back to <run>/artifacts."""
        recorded = local_path(run.artifact_uri) if run.artifact_uri and is_local_store(run.artifact_uri) else None
        if recorded is not None and recorded.is_dir():
            return recorded
        beside = self._experiment_dir(Experiment(run.experiment_id, "")) / run.run_id / "artifacts"
        if beside.is_dir() or recorded is not None:
            return beside
        return None  # a remote artifact store (s3:, gs:, ...): ask MLflow

    def list_artifacts(self, run: RunRecord) -> list[ArtifactFile]:
        root = self._artifact_dir(run)
        if root is None:
            return super().list_artifacts(run)
        return [ArtifactFile(rel, size) for rel, size, _ in _tree_stats(root)]

    def fetch_artifact(self, run: RunRecord, path: str, dst_dir: str) -> str:
        root = self._artifact_dir(run)
        if root is None:
            return super().fetch_artifact(run, path, dst_dir)
        return str(root / path)

    def read_metric(self, run, key, cursor):
        path = self._experiment_dir(Experiment(run.experiment_id, "")) / run.run_id / "metrics" / key
        offset = (cursor or {}).get("offset", 0)
        bad = []
        try:
            f = open(path, "rb")
        except OSError as e:
            raise RunReadError(f"metric {key!r}: {e.strerror}") from None
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
            raise RunReadError(f"metric {key!r}: skipped {len(bad)} malformed line(s), first: {bad[0]!r}")


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
