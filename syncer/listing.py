"""The planner's memory of listings, to ask sources only for what can have changed: when the
last full listing was and how long it took, which RUNNING runs have gone quiet, the names of
the runs seen, the experiments of the last round. Sources are asked with what this says
(`sources.base.ListingAsk`); they remember nothing of it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .sources.base import Changes, ListingAsk
from .sources.records import Experiment, KeyMark, RunRecord

# a RUNNING run whose metadata and metrics have not moved for this long is looked at only by the
# full listings (MLflow leaves crashed runs RUNNING for good: they must cost nothing); any change
# seen there, or a file event naming it, wakes it up
DORMANT_AFTER_S = 120.0
# full listings take at most this share of the time: one that took long (a server listing 5,000
# runs with their params takes tens of seconds) puts the next one further off than full_every_s
MAX_FULL_SHARE = 0.1


@dataclass
class _Seen:
    mark: tuple[str, list[tuple[str, KeyMark]]]
    changed_at: float  # the listing that first saw this mark
    running: bool
    listed_at: float  # the latest listing that saw the run


@dataclass
class ListingPolicy:
    full_every_s: float = 60.0  # 0: every round is a full listing
    dormant_after_s: float = DORMANT_AFTER_S
    clock: Callable[[], float] = time.monotonic
    wall_ms: Callable[[], int] = field(default=lambda: int(time.time() * 1000))
    names: dict[str, str] = field(default_factory=dict)  # run id -> run name, every run seen
    _seen: dict[str, _Seen] = field(default_factory=dict)
    _running: set[str] = field(default_factory=set)  # last seen RUNNING (not deleted): few, whatever the store's size
    _last_full: float | None = None  # when the last full listing began
    _full_took: float = 0.0  # how long it took
    _began: float = 0.0
    _full: bool = False
    _since_ms: int | None = None  # when the previous listing began (wall clock)
    _experiments: dict[str, tuple[str, str]] | None = None  # id -> (name, lifecycle stage) last round
    _last_ids: tuple[str, ...] = ()

    def ask(self, full: bool = False, paths: Iterable[str] = ()) -> ListingAsk:
        """Begin a round's listing: a full one when asked, for the first one, or when the last
        began `full_every_s` ago (ten times as long as it took, if longer)."""
        now = self._began = self.clock()
        spacing = max(self.full_every_s, self._full_took / MAX_FULL_SHARE) if self.full_every_s > 0 else 0.0
        full = full or self._last_full is None or now - self._last_full >= spacing
        if full:
            self._last_full = now
        self._full = full
        since, self._since_ms = self._since_ms, self.wall_ms()
        quiet = self.dormant_ids()
        return ListingAsk(
            full=full,
            since_ms=since,
            lively=frozenset(self._running - set(quiet)),
            quiet=tuple(quiet),
            paths=frozenset(paths),
            last_experiments=self._last_ids,
        )

    def moved_experiments(self, experiments: Iterable[Experiment]) -> frozenset[str]:
        """The experiments new since the last round, or renamed, deleted, restored or moved to
        another workspace: their runs carry the experiment's Aim name and stage, so a quick round
        lists them all (rare; a few)."""
        now = {e.id: (e.aim_name, e.lifecycle_stage) for e in experiments}
        before, self._experiments = self._experiments, now
        self._last_ids = tuple(now)
        return frozenset() if before is None else frozenset(i for i, m in now.items() if before.get(i) != m)

    def note(self, changes: Changes) -> None:
        """Remember what a listing found: names, when each run last moved, which run RUNNING."""
        now = self.clock()
        for r in changes.named:  # file events named them: they changed
            if r in self._seen:
                self._seen[r].changed_at = now
        for r in changes.gone:  # deleted for good: the next full listing says what became of it
            self._running.discard(r)
        for rec in changes.records:
            if not isinstance(rec, RunRecord):
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

    def end(self) -> None:
        """The round's listing is done (its runs compared with the state)."""
        if self._full:
            self._full_took = self.clock() - self._began

    def failed(self) -> None:
        """The round failed before writing all it listed: the next listing is a full one, so that
        what this one noted (runs seen, marks, experiments, the time it began) cannot hide from
        the quick rounds after it the runs it did not write."""
        self._last_full = None

    def dormant(self, run_id: str) -> bool:
        """A RUNNING run that listings looking at it over `dormant_after_s` found unchanged. Measured
        between listings, not up to now: a run not looked at for a while (a first round that
        wrote for ten minutes) has not been seen quiet, and is looked at again."""
        seen = self._seen.get(run_id)
        return seen is not None and seen.running and seen.listed_at - seen.changed_at > self.dormant_after_s

    def running_ids(self) -> set[str]:
        """The runs last seen RUNNING (quiet ones included)."""
        return set(self._running)

    def dormant_ids(self) -> list[str]:
        return sorted(r for r in self._running if self.dormant(r))
