"""The pools the round driver hands the pipeline its Aim writers from: backfill's open-and-close
(indexed at once, or by a worker's parent), and the daemon's keep-open one, bounded and closing
what went idle or ended. A real Aim repo in a temporary folder."""

from __future__ import annotations

import pytest
from syncer.aim import open_repo, run_hashes
from syncer.sink_pool import KeepOpen, OpenAndClose


@pytest.fixture
def repo(tmp_path):
    repo, _ = open_repo(tmp_path / "aim")
    yield repo
    repo.close()


def test_keep_open_keeps_at_most_max_open_and_closes_the_idle_and_the_ended(repo):
    pool = KeepOpen(repo, max_open=2, idle_s=3600.0, index_max_age=3600.0)
    hashes = [f"{i:024x}" for i in range(3)]
    for h in hashes:
        pool.release(pool.open(h, "exp"), keep=True)
    assert len(pool) == 2 and hashes[0] not in pool  # the least recently written closed, mid-round
    reopened = pool.open(hashes[1], "exp")  # taken out while the pipeline writes it
    assert hashes[1] not in pool
    pool.release(reopened, keep=False)  # not kept (ended, or written with errors): closed
    assert hashes[1] not in pool and len(pool) == 1
    pool.settle(active={hashes[2]})
    assert hashes[2] in pool
    pool.settle(active=set())  # not listed RUNNING any more: closed
    assert len(pool) == 0
    pool.release(pool.open(hashes[0], "exp"), keep=True)
    pool.idle_s = 0.0
    pool.settle(active={hashes[0]})  # idle too long: closed (reopened when it gets new points)
    assert len(pool) == 0
    assert set(hashes) <= run_hashes(repo)


def test_open_and_close_indexes_or_leaves_it_to_the_parent(repo):
    now = OpenAndClose(repo)
    now.release(now.open("a" * 24, "exp"), keep=True)  # never kept
    assert now.take_unindexed() == []
    later = OpenAndClose(repo, index=False)
    later.release(later.open("b" * 24, "exp"), keep=False)
    assert later.take_unindexed() == ["b" * 24] and later.take_unindexed() == []
