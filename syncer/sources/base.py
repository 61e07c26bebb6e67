"""What every source hands the pipeline: experiments, runs, metric chunks, artifact files; and
the interface each kind of store implements. Pure data, no MLflow import."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Iterator

CHUNK_POINTS = 10_000  # points handed to the sink at a time (bounded memory)


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
    """A run the store lists but that cannot be read (the error says why)."""

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


def fingerprint(*parts: Any) -> str:
    """A short stable digest of JSON-able parts: what a run's metadata looked like."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class Source(ABC):
    """One MLflow store. Answers: which experiments and runs are there, what changed in a run
    since these cursors, and the new points of a metric after a cursor."""

    uri: str

    def describe(self) -> str:
        from ..redact import redact

        return redact(self.uri)

    @abstractmethod
    def experiments(self) -> list[Experiment]: ...

    @abstractmethod
    def runs(self, experiment: Experiment) -> Iterator[RunRecord | BrokenRun]: ...

    @abstractmethod
    def metric_changed(self, run: RunRecord, key: str, cursor: dict[str, Any] | None) -> bool:
        """Whether `key` of `run` may have points after `cursor` (None: never read)."""

    @abstractmethod
    def read_metric(self, run: RunRecord, key: str,
                    cursor: dict[str, Any] | None) -> Iterator[tuple[MetricChunk, dict[str, Any]]]:
        """Points of `key` logged after `cursor`, in chunks; each with the cursor after it."""

    @abstractmethod
    def list_artifacts(self, run: RunRecord) -> list[ArtifactFile]: ...

    @abstractmethod
    def fetch_artifact(self, run: RunRecord, path: str, dst_dir: str) -> str:
        """A local file with the artifact's content (no copy for local artifact stores)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass
