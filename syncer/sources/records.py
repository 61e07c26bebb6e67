"""What every source hands the rest of the syncer: experiments, runs, metric chunks, artifact
files, logged models. Pure data, no MLflow import."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

from .cursors import OrderKey

CHUNK_POINTS = 10_000  # points handed to the sink at a time (bounded memory)
RUNNING_STATUSES = ("RUNNING", "SCHEDULED")  # a run still going
DEFAULT_WORKSPACE = "default"  # MLflow's workspace of every experiment made without one


@dataclass
class Experiment:
    id: str
    name: str
    lifecycle_stage: str = "active"
    description: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    workspace: str | None = None  # its MLflow workspace (MLflow >= 3.10); None: the store has none

    @property
    def aim_name(self) -> str:
        """The Aim experiment it becomes: the workspace is part of its identity, so same-named
        experiments of two workspaces never merge (`team-a/xnli`); the default workspace and
        stores without workspaces keep the bare name."""
        if self.workspace in (None, DEFAULT_WORKSPACE):
            return self.name
        return f"{self.workspace}/{self.name}"


@dataclass(frozen=True)
class KeyMark:
    """What a cheap listing says of one metric key of a run; it moves when the key has new
    points. File stores: the metric file's size. SQL stores and servers: the key's latest point
    in MLflow's order (`latest_metrics`, a search result's metrics), which holds the greatest
    (step, timestamp, value) and so does not move for a point logged below the last step; SQL
    stores add the key's point count, which does."""

    size: int | None = None
    latest: OrderKey | None = None
    count: int | None = None  # how many points the key has (SQL stores; None: not given)

    @property
    def token(self) -> int | OrderKey | None:
        """What a cursor remembers of the mark it was read at (stored with the cursor)."""
        return self.size if self.size is not None else self.latest

    @property
    def last_step(self) -> int | None:
        """The key's largest step where the listing says it (SQL stores, servers)."""
        return self.latest[1] if self.latest is not None else None


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
    metric_marks: dict[str, KeyMark]  # key -> what the listing says of it
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
    # set by the planner: keys already read are read from where MLflow's order of their history
    # says, not only from their last step (a store without point counts: `Source.recheck`)
    recheck: bool = False

    @property
    def deleted(self) -> bool:
        return self.lifecycle_stage == "deleted"

    @property
    def running(self) -> bool:
        return self.status in RUNNING_STATUSES


@dataclass
class BrokenRun:
    """A run the store lists but that cannot be read (the error says why)."""

    run_id: str
    experiment_id: str
    error: str


AnyRun = RunRecord | BrokenRun  # what a listing returns for each run


# a column of a chunk: a list, or a 1-D numpy array (a file store's lines parsed in bulk)
Ints = Union[list[int], "npt.NDArray[np.int64]"]
Floats = Union[list[float], "npt.NDArray[np.float64]"]


@dataclass
class MetricChunk:
    """Points of one metric key, in log order. `dataset_names` is None when no point has one."""

    key: str
    steps: Ints
    values: Floats
    timestamps: Ints  # ms since epoch, MLflow's own
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


@dataclass(frozen=True)
class ModelMetric:
    """One metric linked to an MLflow 3 logged model."""

    key: str
    value: float
    step: int
    timestamp: int  # ms
    dataset_name: str | None = None
    dataset_digest: str | None = None
    run_id: str | None = None  # the run that logged it


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
    metrics: list[ModelMetric] = field(default_factory=list)
    model_type: str | None = None
