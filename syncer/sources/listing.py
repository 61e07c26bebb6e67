"""What every source remembers between rounds to list only what can have changed: when the last
full listing was, which RUNNING runs have gone quiet, the names of the runs it has seen; and
the counters of what a round read (`ReadStats`), so tests and `syncer status` can tell."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from .base import BrokenRun, Experiment, RunRecord

# a RUNNING run whose metadata and metrics have not moved for this long is looked at only by the
# full listings (MLflow leaves crashed runs RUNNING for good: they must cost nothing); any change
# seen there, or a file event naming it, wakes it up
DORMANT_AFTER_S = 120.0
# full listings take at most this share of the time: one that took long (a server listing 5,000
# runs with their params takes tens of seconds) puts the next one further off than full_every_s
MAX_FULL_SHARE = 0.1


@dataclass
class ReadStats:
    """What one round read from the store."""

    full: bool = False  # a full listing (every run looked at), not only what can have changed
    runs_listed: int = 0  # runs whose cheap facts (a stat, a row, a listing entry) were looked at
    runs_read: int = 0  # runs whose metadata (params, tags, meta.yaml) was read
    histories: int = 0  # metric histories read (tailed, queried, fetched)
    points: int = 0  # MLflow points read
    requests: int = 0  # queries, HTTP requests or files opened
    rows: int = 0  # rows or listing entries that came back

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Seen:
    mark: Any
    changed_at: float  # the listing that first saw this mark
    running: bool
    listed_at: float  # the latest listing that saw the run


@dataclass
class Listing:
    full_every_s: float = 60.0  # 0: every round is a full listing
    dormant_after_s: float = DORMANT_AFTER_S
    clock: Callable[[], float] = time.monotonic
    stats: ReadStats = field(default_factory=ReadStats)
    names: dict[str, str] = field(default_factory=dict)  # run id -> run name, every run seen
    _seen: dict[str, _Seen] = field(default_factory=dict)
    _running: set[str] = field(
        default_factory=set
    )  # runs last seen RUNNING (not deleted): few, whatever the store's size
    _last_full: float | None = None  # when the last full listing began
    _full_took: float = 0.0  # how long it took
    _began: float = 0.0
    _experiments: dict[str, tuple[str, str]] | None = None  # id -> (name, lifecycle stage) last round

    def moved_experiments(self, experiments: Iterable[Experiment]) -> set[str]:
        """The experiments new since the last round, or renamed, deleted or restored: their runs
        carry the experiment's name and stage, so a quick round lists them all (rare; a few)."""
        now = {e.id: (e.name, e.lifecycle_stage) for e in experiments}
        before, self._experiments = self._experiments, now
        return set() if before is None else {i for i, m in now.items() if before.get(i) != m}

    def begin(self, full: bool = False) -> bool:
        """Start a round's listing; returns whether it is a full one (asked for, the first one,
        or the last one began `full_every_s` ago, or ten times as long as it took if longer)."""
        now = self._began = self.clock()
        spacing = max(self.full_every_s, self._full_took / MAX_FULL_SHARE) if self.full_every_s > 0 else 0.0
        full = full or self._last_full is None or now - self._last_full >= spacing
        if full:
            self._last_full = now
        self.stats = ReadStats(full=full)
        return full

    def end(self) -> None:
        """The round's listing is done (its runs compared with the state)."""
        if self.stats.full:
            self._full_took = self.clock() - self._began

    def dormant(self, run_id: str) -> bool:
        """A RUNNING run that listings looking at it over `dormant_after_s` found unchanged. Measured
        between listings, not up to now: a run not looked at for a while (a first round that
        wrote for ten minutes) has not been seen quiet, and is looked at again."""
        seen = self._seen.get(run_id)
        return seen is not None and seen.running and seen.listed_at - seen.changed_at > self.dormant_after_s

    def wake(self, run_ids: Iterable[str]) -> None:
        """These runs changed (a file event named them): not dormant any more."""
        now = self.clock()
        for r in run_ids:
            if r in self._seen:
                self._seen[r].changed_at = now

    def note(self, records: list[RunRecord | BrokenRun]) -> list[RunRecord | BrokenRun]:
        """Remember what was listed (names; when each run last moved); returns `records`."""
        now = self.clock()
        for rec in records:
            if isinstance(rec, BrokenRun):
                continue
            self.names[rec.run_id] = rec.name
            mark = (rec.fingerprint, sorted(rec.metric_marks.items()))
            running = rec.running and not rec.deleted
            seen = self._seen.get(rec.run_id)
            if seen is None or seen.mark != mark:
                self._seen[rec.run_id] = _Seen(mark, now, running, now)
            else:
                seen.running, seen.listed_at = running, now
            if running:
                self._running.add(rec.run_id)
            else:
                self._running.discard(rec.run_id)
        return records

    def running_ids(self) -> set[str]:
        """The runs last seen RUNNING (dormant ones included): a quick round's candidates."""
        return set(self._running)

    def forget_running(self, run_id: str) -> None:
        """A run last seen RUNNING that cannot be read any more (deleted for good): the next full
        listing says what became of it."""
        self._running.discard(run_id)

    def dormant_ids(self) -> list[str]:
        return sorted(r for r in self._running if self.dormant(r))
