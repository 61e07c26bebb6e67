"""What every source hands the pipeline: experiments, runs, metric chunks, artifact files; and
the interface each kind of store implements. Pure data, no MLflow import."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cursors import Cursor
    from .listing import Listing

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
    # False: params, datasets (and for file stores tags) are not read yet; `Source.load_details`
    details_loaded: bool = True
    # a digest of the local artifact folder (None: a remote artifact store, compared by listing)
    artifacts_mark: str | None = None
    # what the listing said of the run's MLflow 3 logged models, so that a source (in whichever
    # process reads the run) need not ask when it has none; None: the listing did not say.
    # Its model outputs (model id -> step), and whether the last listing of the store's logged
    # models named the run as their source run
    model_outputs: dict[str, int | None] | None = None
    models_listed: bool | None = None

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


@dataclass
class LoggedModel:
    """An MLflow 3 logged model a run produced (`search_logged_models`)."""

    model_id: str
    name: str
    run_id: str | None
    step: int | None
    status: str | None
    artifact_location: str | None
    creation_time: int | None  # ms
    flavors: list[str] = field(default_factory=list)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    # (key, value, step, timestamp ms, dataset name, dataset digest, run id that logged it) of the model's metrics
    metrics: list[tuple[str, float, int, int, str | None, str | None, str | None]] = field(default_factory=list)
    model_type: str | None = None


class Source(ABC):
    """One MLflow store. Answers: which experiments and runs are there, which runs may have
    changed since the last round, and the new points of a metric after a cursor."""

    uri: str
    kind: str = "?"
    listing: Listing
    stop: Any = None  # a threading.Event: a long listing stops at its next safe point when set

    def check_stop(self) -> None:
        if self.stop is not None and self.stop.is_set():
            from ..errors import Stopped

            raise Stopped()

    def describe(self) -> str:
        from ..redact import redact

        return redact(self.uri)

    @abstractmethod
    def experiments(self) -> list[Experiment]: ...

    @abstractmethod
    def changes(self, experiments: list[Experiment], *, full: bool = False) -> list[RunRecord | BrokenRun]:
        """The runs of these experiments that may have changed since the last call; every run
        when `full` (the round's `self.listing.begin()` decides, as the Planner does; the first
        call is a full one whatever it says). Counts what it read in `self.listing.stats`."""

    def note_paths(self, paths: Iterable[str]) -> None:  # noqa: B027 - only local stores have file events
        """File events named these paths (the daemon's watcher): look there next round."""

    @abstractmethod
    def metric_changed(self, run: RunRecord, key: str, cursor: Cursor | None) -> bool:
        """Whether `key` of `run` may have points after `cursor` (None: never read)."""

    @abstractmethod
    def read_metric(self, run: RunRecord, key: str, cursor: Cursor | None) -> Iterator[tuple[MetricChunk, Cursor]]:
        """Points of `key` logged after `cursor`, in chunks; each with the cursor after it."""

    @abstractmethod
    def list_artifacts(self, run: RunRecord) -> list[ArtifactFile]: ...

    @abstractmethod
    def fetch_artifact(self, run: RunRecord, path: str, dst_dir: str) -> str:
        """A local file with the artifact's content (no copy for local artifact stores)."""

    # how many runs `prefetch` can take at once (1: it does nothing, runs are read one by one)
    prefetch_runs: int = 1

    def prefetch(self, items: list[tuple[RunRecord, list[str], dict[str, Cursor]]]) -> None:  # noqa: B027
        """About to sync these runs, (run, changed keys, cursors) each, in this order: a source
        may fetch their histories together (what `read_metric` then finds fetched)."""

    def prepare(self, run: RunRecord, keys: list[str], cursors: dict[str, Cursor]) -> None:  # noqa: B027
        """About to read these keys of the run: a source may fetch several histories at once."""

    def load_details(self, run: RunRecord) -> None:  # noqa: B027 - sources that list everything at once
        """Fill in what a cheap listing left out (params, datasets), once; see `details_loaded`."""

    def logged_models(self, run: RunRecord) -> list[LoggedModel]:
        """The MLflow 3 logged models this run produced ([] where the store has none)."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


PREFETCH_MAX_POINTS = 200_000  # a run's first read fetches its keys at once below this many points


def history_estimate(run: RunRecord, keys: list[str]) -> int | None:
    """About how many points these keys of a run hold, from their latest steps (one point a step
    from 0); None when a mark gives no step (a file size) or a step is negative."""
    estimate = 0
    for k in keys:
        mark = run.metric_marks.get(k)
        step = mark[1] if isinstance(mark, tuple) and len(mark) > 1 and isinstance(mark[1], int) else None
        if step is None or step < 0:
            return None
        estimate += step + 1
    return estimate


def first_reads(run: RunRecord, keys: list[str], cursors: dict[str, Cursor]) -> list[str]:
    """The keys of a run read for the first time, when there are several and their latest
    steps say the whole lot is small enough to hold at once ([] otherwise)."""
    fresh = [k for k in keys if k not in cursors]
    if len(fresh) < 2:
        return []
    estimate = history_estimate(run, fresh)
    return fresh if estimate is not None and estimate <= PREFETCH_MAX_POINTS else []
