"""What one round did: the record the round driver keeps, logs, stores (`syncer status`) and
hands to the metrics endpoint. Worker processes fill one each; the driver folds them in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .sources.base import ReadStats


@dataclass
class RoundStats:
    experiments: int = 0
    runs: int = 0  # runs the source listed
    runs_written: int = 0
    points: int = 0  # points written to Aim
    artifacts: int = 0
    errors: list[str] = field(default_factory=list)  # new this round
    still_failing: list[str] = field(default_factory=list)  # runs unchanged since they failed
    # runs another writer holds (an Aim SDK session, a second syncer): skipped, tried next round;
    # not errors of the syncer's (a daemon stays healthy), but a backfill did not finish them
    locked: list[str] = field(default_factory=list)
    read: ReadStats = field(default_factory=ReadStats)  # what the source read
    seconds: float = 0.0
    # for the lag the metrics endpoint shows (not logged): when the round's listing began (wall
    # clock, s), the Aim hashes of the RUNNING runs it listed, and for each run the round worked
    # on whether it is RUNNING with listed points still not in Aim after the round (held by
    # another writer, an error)
    listed_at: float = 0.0
    running: set[str] = field(default_factory=set)
    behind: dict[str, bool] = field(default_factory=dict)
    backlog: int = 0  # runs never synced left for the next rounds (a daemon catching up)

    def summary(self) -> str:
        line = (
            f"{self.experiments} experiments, {self.runs} runs ({self.runs_written} updated), "
            f"{self.points} points, {self.artifacts} artifacts in {self.seconds:.1f} s"
        )
        if self.errors:
            line += f"; {len(self.errors)} run(s) with errors"
        if self.still_failing:
            line += f"; {len(self.still_failing)} run(s) still failing"
        if self.locked:
            line += f"; {len(self.locked)} run(s) held by another writer"
        if self.backlog:
            line += f"; catching up: {self.backlog} run(s) to go"
        return line

    def add(self, other: RoundStats) -> None:
        """Fold in what a worker process did for some runs of this round."""
        self.runs_written += other.runs_written
        self.points += other.points
        self.artifacts += other.artifacts
        self.errors.extend(other.errors)
        self.locked.extend(other.locked)
        self.read.add(other.read)

    def as_dict(self) -> dict[str, Any]:
        return {
            "experiments": self.experiments,
            "runs": self.runs,
            "runs_written": self.runs_written,
            "points": self.points,
            "artifacts": self.artifacts,
            "errors": self.errors,
            "still_failing": self.still_failing,
            "locked": self.locked,
            "read": self.read.as_dict(),
            "seconds": self.seconds,
            "backlog": self.backlog,
        }
