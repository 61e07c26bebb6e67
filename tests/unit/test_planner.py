"""The planner's decisions, with a fake source (answers from memory, no store) and a real state
database: what it asks, and what it decides to do for each run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from syncer.errors import BadInput
from syncer.listing import ListingPolicy
from syncer.plan import RELIST_REMOTE_PER_FULL, Planner
from syncer.sink import aim_run_hash
from syncer.sources import (
    ArtifactFile,
    BrokenRun,
    Changes,
    Experiment,
    KeyMark,
    ListingAsk,
    MetricChunk,
    ReadStats,
    RunRecord,
    Source,
    StoreLocation,
)
from syncer.sources.cursors import Cursor, FileCursor
from syncer.state import State

T0 = 1_700_000_000_000


class FakeSource(Source):
    """Lists what it was given; remembers what it was asked."""

    kind = "file"
    cursor_type = FileCursor

    def __init__(self, exps: list[Experiment], runs: list[RunRecord | BrokenRun]):
        super().__init__(StoreLocation.parse("/nowhere/mlruns"), ReadStats())
        self.exps, self.runs, self.asks = exps, runs, []

    def list_experiments(self) -> list[Experiment]:
        return list(self.exps)

    def changes(self, experiments: list[Experiment], ask: ListingAsk) -> Changes:
        self.asks.append(ask)
        ids = {e.id for e in experiments}
        return Changes([r for r in self.runs if r.experiment_id in ids])

    def read_metric(self, run: RunRecord, key: str, cursor: Cursor | None) -> Iterator[tuple[MetricChunk, Cursor]]:
        raise AssertionError("the planner reads no history")

    def list_artifacts(self, run: RunRecord) -> list[ArtifactFile]:
        raise AssertionError("the planner lists no artifacts")

    def fetch_artifact(self, run: RunRecord, path: str, dst_dir: str) -> str:
        raise AssertionError("the planner fetches nothing")


def run(run_id, status="FINISHED", marks=None, fingerprint="f1", artifacts="a1", exp="0"):
    marks = {"loss": 10, "acc": 20} if marks is None else marks
    return RunRecord(
        run_id,
        exp,
        run_id,
        status,
        T0,
        None,
        "active",
        None,
        None,
        {},
        {},
        [],
        {k: KeyMark(size=v) for k, v in marks.items()},
        fingerprint=fingerprint,
        artifacts_mark=artifacts,
    )


@pytest.fixture
def state(tmp_path):
    st = State(tmp_path / "state.sqlite", "file:///nowhere")
    yield st
    st.close()


def planner(source, state, *, experiments=(), strict=True, artifacts=True, aim_runs=None):
    return Planner(
        source,
        state,
        listing=ListingPolicy(full_every_s=60.0),
        reads=source.reads,
        experiments=experiments,
        strict=strict,
        artifacts=artifacts,
        aim_runs=aim_runs,
    )


def synced(state, rec, marks=None):
    """The state as if `rec` was synced with these file sizes read (default: all of them)."""
    state.save_run(
        rec.run_id, aim_run_hash(rec.run_id), "e", rec.fingerprint, rec.status, artifacts_mark=rec.artifacts_mark
    )
    marks = {k: m.size for k, m in rec.metric_marks.items()} if marks is None else marks
    state.save_cursors(rec.run_id, [(k, FileCursor(offset=n, points=1, mark=n)) for k, n in marks.items()])


def test_a_new_run_is_written_whole(state):
    src = FakeSource([Experiment("0", "e")], [run("r1")])
    p = planner(src, state).plan()
    (work,) = p.todo
    assert work.meta_changed and work.changed_keys == ["acc", "loss"] and work.list_artifacts and work.prev is None
    assert src.asks[0].full  # the first listing is a full one
    assert p.names == {"r1": "r1"} and p.runs == 1 and p.active == set()


@pytest.mark.parametrize(
    ("change", "meta", "keys", "artifacts"),
    [
        ({}, None, None, None),  # nothing moved: nothing to do
        ({"marks": {"loss": 11, "acc": 20}}, False, ["loss"], False),  # one key grew
        ({"marks": {"loss": 10, "acc": 20, "f1": 5}}, False, ["f1"], False),  # a new key
        ({"fingerprint": "f2"}, True, [], True),  # metadata moved: artifacts looked at too
        ({"artifacts": "a2"}, False, [], True),  # a local artifact folder moved
    ],
)
def test_only_what_moved_is_planned(state, change, meta, keys, artifacts):
    before = run("r1")
    synced(state, before)
    src = FakeSource([Experiment("0", "e")], [run("r1", **change)])
    todo = planner(src, state).plan().todo
    if meta is None:
        assert todo == []
    else:
        (work,) = todo
        assert (work.meta_changed, work.changed_keys, work.list_artifacts) == (meta, keys, artifacts)


def test_a_broken_run_is_reported_once_then_said_to_be_still_failing(state):
    broken = BrokenRun("r9", "0", "meta.yaml names run x, folder is r9")
    src = FakeSource([Experiment("0", "e")], [broken])
    (work,) = planner(src, state).plan().todo
    assert work.run is broken
    state.save_error("r9", aim_run_hash("r9"), "e", broken.error)
    p = planner(src, state).plan()
    assert p.todo == [] and p.still_failing == [f"run r9 (experiment 'e'): {broken.error}"]
    src.runs = [BrokenRun("r9", "0", "another error")]
    assert [w.run.run_id for w in planner(src, state).plan().todo] == ["r9"]  # a new error: reported


def test_running_runs_are_active_and_big_runs_weigh_more(state):
    src = FakeSource([Experiment("0", "e")], [run("small", "RUNNING", {"a": 5}), run("big", marks={"a": 500})])
    p = planner(src, state).plan()
    assert p.active == {aim_run_hash("small")}
    assert {w.run.run_id: w.size for w in p.todo} == {"small": 5, "big": 500}


def test_remote_artifacts_of_finished_runs_are_listed_again_in_turns_on_full_listings(state):
    n = RELIST_REMOTE_PER_FULL + 5
    runs = [run(f"r{i:02d}", artifacts=None) for i in range(n)] + [run("live", "RUNNING", artifacts=None)]
    for r in runs:
        synced(state, r)
    src = FakeSource([Experiment("0", "e")], runs)
    pl = planner(src, state)
    first = pl.plan(full=True)
    relisted = {w.run.run_id for w in first.todo if w.list_artifacts}
    assert len(relisted) == RELIST_REMOTE_PER_FULL + 1 and "live" in relisted  # RUNNING: every full listing
    assert pl.plan(full=False).todo == []  # quick rounds never list remote artifacts


def test_experiments_are_chosen_by_name_or_id(state):
    exps = [Experiment("0", "a"), Experiment("1", "b")]
    src = FakeSource(exps, [run("r0", exp="0"), run("r1", exp="1")])
    assert [w.run.run_id for w in planner(src, state, experiments=("b",)).plan().todo] == ["r1"]
    assert len(planner(src, state, experiments=("0", "b")).plan().todo) == 2
    with pytest.raises(BadInput, match="unknown MLflow experiment.*'zz'"):
        planner(src, state, experiments=("zz",)).plan()
    assert planner(src, state, experiments=("zz",), strict=False).plan().todo == []  # sync: it may appear later


def test_a_run_removed_from_the_aim_repo_is_sent_again_on_a_full_listing(state):
    rec = run("r1")
    synced(state, rec)
    src = FakeSource([Experiment("0", "e")], [rec])
    in_aim = {aim_run_hash("r1")}
    pl = planner(src, state, aim_runs=lambda: in_aim)
    assert pl.plan().todo == [] and src.asks[-1].full  # the first listing: full, Aim has the run
    in_aim.clear()  # someone deleted it from the Aim repo
    assert pl.plan().todo == [] and not src.asks[-1].full  # quick rounds do not ask Aim
    (work,) = pl.plan(full=True).todo
    assert work.prev is None and work.changed_keys == ["acc", "loss"]
