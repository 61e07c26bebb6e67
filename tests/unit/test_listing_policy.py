"""The listing policy (the planner's memory of listings): when a listing is a full one, which
RUNNING runs have gone quiet, what a round asks a source for. A fake clock, no store."""

from __future__ import annotations

from syncer.listing import ListingPolicy
from syncer.sources import Changes, Experiment, KeyMark, RunRecord

T0 = 1_700_000_000_000


def test_quick_rounds_look_only_at_the_runs_last_seen_running():
    """A quick round's candidates are the runs last seen RUNNING, kept as a set as runs are
    listed: not a walk over every run ever seen (that cost grew with the store's size)."""

    def rec(run_id, status="FINISHED", stage="active", mark=0):
        return RunRecord(
            run_id, "0", run_id, status, T0, None, stage, None, None, {}, {}, [], {"loss": KeyMark(size=mark)}
        )

    now = [0.0]
    listing = ListingPolicy(dormant_after_s=3600.0, clock=lambda: now[0])
    listing.note(
        Changes([rec(f"done{i}") for i in range(1000)] + [rec("live", "RUNNING"), rec("gone", "RUNNING", "deleted")])
    )
    assert listing.running_ids() == {"live"} and listing.dormant_ids() == []
    listing.dormant_after_s = 0.0
    assert listing.dormant_ids() == []  # quiet only once a later listing found it unchanged
    now[0] = 1.0
    listing.note(Changes([rec("live", "RUNNING")]))
    assert listing.dormant_ids() == ["live"]
    listing.note(Changes([rec("live", "FINISHED", mark=1), rec("done3", "RUNNING", mark=1)]))  # one ends, one restarts
    assert listing.running_ids() == {"done3"} and len(listing.names) == 1002


def test_full_listings_take_at_most_a_tenth_of_the_time():
    """A full listing every `full_every_s`, unless the last one took long (a server listing 5,000
    runs with their params takes tens of seconds): then ten times as long as it took."""
    now = [0.0]
    listing = ListingPolicy(full_every_s=60.0, clock=lambda: now[0])

    def round_taking(seconds: float) -> bool:
        full = listing.ask().full
        now[0] += seconds
        listing.end()
        return full

    assert round_taking(2.0) is True  # the first listing is full
    now[0] = 59.0
    assert round_taking(0.01) is False
    now[0] = 60.0
    assert round_taking(40.0) is True  # took 40 s: the next one 400 s after it began
    now[0] = 200.0
    assert round_taking(0.01) is False
    now[0] = 460.0
    assert round_taking(1.0) is True  # quick again: back to every 60 s
    now[0] = 520.0
    assert round_taking(0.01) is True
    every_round = ListingPolicy(full_every_s=0.0, clock=lambda: now[0])
    for _ in range(3):  # 0: every round is a full one, however long the last took
        assert every_round.ask().full is True
        now[0] += 100.0
        every_round.end()


def test_a_running_run_is_quiet_only_when_listings_saw_it_unchanged_for_long():
    """Quiet ("dormant": looked at by full listings only) means unchanged between listings that
    span DORMANT_AFTER_S, not "last seen changed long ago": a daemon's first round that writes a
    large store for ten minutes must not make every RUNNING run look quiet."""

    def rec(mark):
        return RunRecord(
            "live", "0", "live", "RUNNING", T0, None, "active", None, None, {}, {}, [], {"loss": KeyMark(size=mark)}
        )

    now = [0.0]
    listing = ListingPolicy(dormant_after_s=120.0, clock=lambda: now[0])
    listing.note(Changes([rec(1)]))
    now[0] = 600.0  # a long first round: nobody looked at the run meanwhile
    assert not listing.dormant("live") and listing.dormant_ids() == []
    listing.note(Changes([rec(2)]))  # it logged meanwhile
    now[0] = 700.0
    listing.note(Changes([rec(2)]))
    assert not listing.dormant("live")  # unchanged for 100 s of listings
    now[0] = 721.0
    listing.note(Changes([rec(2)]))
    assert listing.dormant("live") and listing.dormant_ids() == ["live"]  # 121 s
    listing.note(Changes([], named={"live"}))  # a file event named it
    assert not listing.dormant("live")


def test_a_round_asks_for_the_lively_runs_and_names_the_quiet_ones():
    """What a source is given: the runs last seen RUNNING split into lively and quiet, when the
    previous listing began, the experiments it listed and those that moved since."""

    def rec(run_id, status="RUNNING", mark=0):
        return RunRecord(
            run_id, "0", run_id, status, T0, None, "active", None, None, {}, {}, [], {"loss": KeyMark(size=mark)}
        )

    now, wall = [0.0], [1_000]
    listing = ListingPolicy(full_every_s=60.0, dormant_after_s=10.0, clock=lambda: now[0], wall_ms=lambda: wall[0])
    first = listing.ask()
    assert first.full and first.since_ms is None and first.last_experiments == ()
    assert listing.moved_experiments([Experiment("0", "a"), Experiment("1", "b")]) == frozenset()
    listing.note(Changes([rec("busy"), rec("idle"), rec("done", "FINISHED")]))
    listing.end()
    now[0], wall[0] = 11.0, 12_000
    listing.note(Changes([rec("busy", mark=1), rec("idle")]))  # idle: unchanged over 11 s of listings
    ask = listing.ask(paths=["/store/0/busy/metrics/loss"])
    assert not ask.full and ask.since_ms == 1_000
    assert ask.lively == {"busy"} and ask.quiet == ("idle",) and ask.paths == {"/store/0/busy/metrics/loss"}
    assert ask.last_experiments == ("0", "1")
    assert listing.moved_experiments([Experiment("0", "renamed"), Experiment("2", "new")]) == {"0", "2"}
    assert listing.ask(full=True).full  # asked for: a full listing whatever the cadence


def test_runs_a_source_could_not_read_any_more_are_not_running():
    listing = ListingPolicy()
    run = RunRecord("r", "0", "r", "RUNNING", T0, None, "active", None, None, {}, {}, [], {})
    listing.note(Changes([run]))
    assert listing.running_ids() == {"r"}
    listing.note(Changes([], gone={"r"}))  # deleted for good: the next full listing says what became of it
    assert listing.running_ids() == set()
