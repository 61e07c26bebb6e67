"""The interface every kind of store implements, and what a source is asked and answers.

Sources are capabilities: they are given what to look at (`ListingAsk`: a full listing or only
what can have changed, the runs last seen RUNNING, the paths file events named, ...) and return
records (`Changes`) while counting what they read (`ReadStats`, the planner's counter handed to
them when they are made). They hold no policy: when to list everything, which runs have gone
quiet, what to read of each run is decided by the planner (`syncer.plan`, `syncer.listing`)."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import Stopped, StoreError, StoreReadFailed, StoreUnavailable
from .cursors import Cursor, FileCursor, OrderCursor
from .records import RUNNING_STATUSES, AnyRun, ArtifactFile, Experiment, LoggedModel, MetricChunk, RunRecord

if TYPE_CHECKING:
    from .location import StoreLocation


@dataclass
class ReadStats:
    """What a round read from the store. Made by the planner, handed to the source it reads
    with; sources add to it, the planner starts it again each round (`reset`)."""

    full: bool = False  # a full listing (every run looked at), not only what can have changed
    runs_listed: int = 0  # runs whose cheap facts (a stat, a row, a listing entry) were looked at
    runs_read: int = 0  # runs whose metadata (params, tags, meta.yaml) was read
    histories: int = 0  # metric histories read (tailed, queried, fetched)
    points: int = 0  # MLflow points read
    requests: int = 0  # queries, HTTP requests or files opened
    rows: int = 0  # rows or listing entries that came back

    COUNTERS: ClassVar[tuple[str, ...]] = ("runs_listed", "runs_read", "histories", "points", "requests", "rows")

    def __getitem__(self, name: str) -> int | bool:
        """`stats.read["points"]`: a counter by name, as the round record (JSON) names it."""
        if name != "full" and name not in self.COUNTERS:
            raise KeyError(name)
        value: int | bool = getattr(self, name)
        return value

    def count(self, **amounts: int) -> None:
        """Add to counters from threads that read side by side (`+=` on an attribute is not atomic)."""
        with _COUNTING:
            for name, n in amounts.items():
                setattr(self, name, getattr(self, name) + n)

    def reset(self, *, full: bool) -> None:
        """A new round's reads count from zero."""
        with _COUNTING:
            self.full = full
            for name in self.COUNTERS:
                setattr(self, name, 0)

    def add(self, other: ReadStats) -> None:
        """Fold in what another reader (a worker process) read in the same round."""
        self.count(**{name: getattr(other, name) for name in self.COUNTERS})

    def snapshot(self) -> ReadStats:
        with _COUNTING:
            return replace(self)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self.snapshot())


_COUNTING = threading.Lock()  # some reads are made side by side (a server's searches, histories)


@dataclass(frozen=True)
class ListingAsk:
    """What the planner asks a source to list in one round."""

    full: bool  # every run of the experiments; else only what can have changed
    since_ms: int | None = None  # when the previous listing began (wall clock, ms); None: never
    lively: frozenset[str] = frozenset()  # runs last seen RUNNING that have not gone quiet
    quiet: tuple[str, ...] = ()  # runs last seen RUNNING that have gone quiet (sorted): full listings only
    paths: frozenset[str] = frozenset()  # paths file events named since the last round
    last_experiments: tuple[str, ...] = ()  # ids of the experiments the previous round listed
    moved: frozenset[str] = frozenset()  # experiments new, renamed, deleted or restored since then


@dataclass
class Changes:
    """A source's answer to a `ListingAsk`."""

    records: list[AnyRun]
    gone: set[str] = field(default_factory=set)  # lively runs asked about that cannot be read any more
    named: set[str] = field(default_factory=set)  # runs the file events named (they changed)


class Source(ABC):
    """One MLflow store. Answers: which experiments and runs are there, which runs may have
    changed (`changes`), and the new points of a metric after a cursor (`read_metric`)."""

    kind: ClassVar[str] = "?"
    cursor_type: ClassVar[type[FileCursor] | type[OrderCursor]] = OrderCursor
    prefetch_runs: ClassVar[int] = 1  # how many runs `prefetch` takes at once (1: it does nothing)
    # a store whose listing gives no point counts (a server): `recheck`
    recheck_on_status: ClassVar[bool] = False

    def __init__(
        self,
        location: StoreLocation,
        reads: ReadStats,
        stop: threading.Event | None = None,
        workspaces: tuple[str, ...] = (),
    ):
        self.location = location
        self.uri = location.uri
        self.reads = reads
        self.stop = stop  # set: a long listing stops at its next safe point
        self.workspaces = workspaces  # the MLflow workspaces to list (empty: every one)
        self.answered = False  # the store answered once: later failures are glitches, not bad input

    def check_stop(self) -> None:
        if self.stop is not None and self.stop.is_set():
            raise Stopped()

    def describe(self) -> str:
        return self.location.display

    def failure(self, e: BaseException) -> StoreError | StoreUnavailable | StoreReadFailed:
        """A failed MLflow call as one of our errors (see `mlflow_errors.mlflow_error`)."""
        from .mlflow_errors import mlflow_error

        return mlflow_error(self.uri, e, answered=self.answered)

    # -- listing -------------------------------------------------------------------------------
    def start_listing(self, ask: ListingAsk) -> None:  # noqa: B027 - most sources have nothing to start
        """Called before `experiments()`: a source may send this round's quick listing now, side
        by side with listing the experiments (a server's searches need only `ask.last_experiments`)."""

    def experiments(self) -> list[Experiment]:
        exps = self.list_experiments()
        self.answered = True
        return exps

    @abstractmethod
    def list_experiments(self) -> list[Experiment]: ...

    @abstractmethod
    def changes(self, experiments: list[Experiment], ask: ListingAsk) -> Changes:
        """The runs of these experiments that may have changed since the previous listing
        (`ask.since_ms`); every run when `ask.full`. Counts what it read in `self.reads`."""

    # -- reading a run ---------------------------------------------------------------------------
    def metric_changed(self, run: RunRecord, key: str, cursor: Cursor | None) -> bool:
        """Whether `key` of `run` may have points `cursor` has not read (None: never read)."""
        mark = run.metric_marks.get(key)
        if not isinstance(cursor, self.cursor_type) or mark is None:
            return True
        if isinstance(cursor, OrderCursor):
            return cursor.stale(mark.latest, mark.count)
        return cursor.mark != mark.token

    def recheck(self, run: RunRecord, prev_status: str | None, cursor: Cursor | None) -> bool:
        """Whether a key already read must be read again from where MLflow's order says although
        its mark did not move: on a store whose listing counts no points, a run resumed (ended,
        now RUNNING again: `start_run(run_id=...)`), and one such run ending (its keys read while
        it was resumed). A resumed run logs its steps again below the last one read, which
        moves no latest point; see `RunRecord.recheck`."""
        if not self.recheck_on_status or not isinstance(cursor, OrderCursor) or prev_status in (None, run.status):
            return False
        if run.running:
            return prev_status not in RUNNING_STATUSES
        return cursor.resumed

    @abstractmethod
    def read_metric(self, run: RunRecord, key: str, cursor: Cursor | None) -> Iterator[tuple[MetricChunk, Cursor]]:
        """Points of `key` logged after `cursor`, in chunks; each with the cursor after it."""

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

    @abstractmethod
    def list_artifacts(self, run: RunRecord) -> list[ArtifactFile]: ...

    @abstractmethod
    def fetch_artifact(self, run: RunRecord, path: str, dst_dir: str) -> str:
        """A local file with the artifact's content (no copy for local artifact stores)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


PREFETCH_MAX_POINTS = 200_000  # a run's first read fetches its keys at once below this many points


def history_estimate(run: RunRecord, keys: list[str]) -> int | None:
    """About how many points these keys of a run hold, from their latest steps (one point a step
    from 0); None when a mark gives no step (a file size) or a step is negative."""
    estimate = 0
    for k in keys:
        mark = run.metric_marks.get(k)
        step = mark.last_step if mark is not None else None
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
