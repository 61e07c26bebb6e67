"""Runs written as a batch (`syncer.aim.WriterBatch`): what Aim's SDK reads back, what the run index
holds (the same as Aim's own indexer makes), and the order of what becomes durable."""

from __future__ import annotations

import os
import shutil

import pytest
from aim.storage.context import Context
from aim.storage.rockscontainer import RocksContainer
from syncer.aim import WriterBatch, fresh_repo, open_repo
from syncer.aim.index import chunk_stamp, indexer

T0 = 1_700_000_000.0


@pytest.fixture
def repo(tmp_path):
    repo, _ = open_repo(tmp_path / "aim")
    yield repo
    repo.close()


def _write(batch: WriterBatch, hashes: list[str], then=None) -> None:
    batch.prepare([(h, True) for h in hashes])
    for i, h in enumerate(hashes):
        w = batch.open(h, "exp")
        w.set_info(
            name=f"run {i}", description="d", params={"x": i, "y": {"z": [1, 2]}}, labels=["k=v"], archived=False
        )
        for name, ctx in (("loss", {"subset": "train"}), ("acc", {})):
            w.write_points(name, ctx, [0, 1, 2], [1.0, 0.5, 0.25 + i], [T0, T0 + 1, T0 + 2])
        w.write_points("loss", {"subset": "train"}, [2, 3], [9.0, 0.125], [T0 + 5, T0 + 6])  # a re-sent step
        w.set_times(created_at=T0 + i, ended_at=T0 + 10, active=False)
        batch.add(w, None if then is None else (lambda h=h: then(h)))


def _loss(tmp_path, run_hash: str) -> tuple[list, list]:
    """(steps, values) of the run's `loss` (empty context), read back through Aim's SDK."""
    r = fresh_repo(tmp_path / "aim")
    try:
        steps, (values, _e, _t) = r.get_run(run_hash).get_metric("loss", Context({})).data.numpy()
        return steps.tolist(), values.tolist()
    finally:
        r.close()


def _index(path) -> dict:
    c = RocksContainer(str(path / ".aim" / "meta" / "index"), read_only=True, skip_read_optimization=True)
    try:
        return dict(c.items())
    finally:
        c.close()


def test_a_batch_reads_back_and_indexes_as_aim_itself_would(repo, tmp_path):
    hashes = [f"{i:024x}" for i in range(3)]
    batch = WriterBatch(repo)
    _write(batch, hashes)
    assert batch.commit(lambda thens: None) == []
    batch.close()
    r = fresh_repo(tmp_path / "aim")
    for i, h in enumerate(hashes):
        run = r.get_run(h)
        assert run.name == f"run {i}" and run.experiment == "exp" and run["x"] == i and not run.active
        steps, (values, _e, times) = run.get_metric("loss", Context({"subset": "train"})).data.numpy()
        assert steps.tolist() == [0, 1, 2, 3] and values.tolist() == [1.0, 0.5, 9.0, 0.125]
        assert times.tolist() == [T0, T0 + 1, T0 + 5, T0 + 6]
    r.close()

    # the same chunks indexed by Aim's own indexing code, in a copy of the repo
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "aim", copy)
    shutil.rmtree(copy / ".aim" / "meta" / "index")
    RocksContainer(str(copy / ".aim" / "meta" / "index"), read_only=False).close()
    other, _ = open_repo(copy)
    container = other._get_index_container("meta", timeout=0)
    for h in hashes:
        indexer(other).index(h)
    container.close()
    ours, aims = _index(tmp_path / "aim"), _index(copy)
    stamps = {k for k in ours if k.startswith(b"index_cache")}
    assert {k: v for k, v in ours.items() if k not in stamps} == {k: v for k, v in aims.items() if k not in stamps}
    assert stamps == {k for k in aims if k.startswith(b"index_cache")}
    for h in hashes:  # a stamp covers the chunk's paths: each repo's own
        assert ours[b"index_cache\xfe" + h.encode() + b"\xfe"][1:].decode() == chunk_stamp(repo, h)
    other.close()


def test_the_callbacks_come_after_the_runs_are_durable_and_never_for_a_failed_one(repo, tmp_path):
    hashes = [f"{i:024x}" for i in range(3)]
    batch = WriterBatch(repo)
    seen: list[str] = []

    def durable_at_callback(h: str) -> None:
        # durable: the chunks closed (no writer lock on the database) and the row committed
        assert os.path.exists(os.path.join(repo.path, "meta", "chunks", h))
        assert not os.path.exists(os.path.join(repo.path, "meta", "progress", h))
        seen.append(h)

    _write(batch, hashes, then=durable_at_callback)
    assert seen == []  # nothing before commit
    batch.commit(lambda thens: [t() for t in thens])
    assert seen == hashes

    # a run whose chunks cannot be closed (a full disk): its callback is not called, the error is
    # raised once the others are committed
    seen.clear()
    more = [f"{i:024x}" for i in range(3, 5)]
    batch.prepare([(h, True) for h in more])
    for h in more:
        w = batch.open(h, "exp")
        w.write_points("m", {}, [0], [1.0], [T0])
        if h == more[0]:
            close = w.close_storage

            def fail(close=close) -> None:
                close()
                raise OSError(28, "No space left on device")

            w.close_storage = fail  # type: ignore[method-assign]
        batch.add(w, lambda h=h: durable_at_callback(h))
    with pytest.raises(OSError):
        batch.commit(lambda thens: [t() for t in thens])
    assert seen == [more[1]]  # the durable one only
    batch.close()


def test_runs_opened_ahead_and_never_written_leave_nothing_behind(repo, tmp_path):
    batch = WriterBatch(repo)
    ahead = [f"{i:024x}" for i in range(10, 14)]
    batch.prepare([(h, True) for h in ahead])
    w = batch.open(ahead[0], "exp")
    w.write_points("m", {}, [0], [1.0], [T0])
    batch.add(w)
    batch.commit(lambda thens: None)
    batch.close()  # the three others were opened ahead for nothing
    chunks = os.listdir(os.path.join(repo.path, "meta", "chunks"))
    assert chunks == [ahead[0]]
    assert not os.listdir(os.path.join(repo.path, "locks")) or all(
        not f.startswith(tuple(ahead)) for f in os.listdir(os.path.join(repo.path, "locks"))
    )


def test_points_buffered_when_the_disk_runs_short_are_kept_and_the_run_gets_no_callback(repo, tmp_path, monkeypatch):
    """A writer buffers small chunks and writes them together (settle). When that write finds the
    repo's filesystem short of space (`space`: the same check as a real full disk, with the
    reserve raised above what is free), the buffered points must not be dropped: the run is not
    durable, so its cursors' callback is not called; once there is room they are written."""
    from syncer.aim import space
    from syncer.errors import RepoFull

    h = f"{7:024x}"
    batch = WriterBatch(repo)
    w = batch.open(h, "exp")
    w.set_info(name="r", description="", params={}, labels=[], archived=False)
    w.write_points("loss", {}, [0, 1], [1.0, 0.5], [T0, T0 + 1])  # buffered, not written yet
    monkeypatch.setattr(space, "RESERVE_BYTES", space.free_bytes(tmp_path) + (1 << 40))
    with pytest.raises(RepoFull):
        w.settle()
    called: list[str] = []
    batch.add(w, lambda: called.append(h))
    with pytest.raises(RepoFull):
        batch.commit(lambda thens: [t() for t in thens])
    assert called == []  # no cursor may get ahead of points Aim does not have
    monkeypatch.undo()
    batch.close()

    batch = WriterBatch(repo)  # room again: the run written once more has every point
    w = batch.open(h, "exp")
    w.set_info(name="r", description="", params={}, labels=[], archived=False)
    w.write_points("loss", {}, [0, 1], [1.0, 0.5], [T0, T0 + 1])
    w.write_points("loss", {}, [2], [0.25], [T0 + 2])
    w.set_times(created_at=T0, ended_at=T0 + 10, active=False)
    batch.add(w, lambda: called.append(h))
    batch.commit(lambda thens: [t() for t in thens])
    batch.close()
    assert called == [h]
    assert _loss(tmp_path, h) == ([0, 1, 2], [1.0, 0.5, 0.25])


def test_settle_keeps_what_it_could_not_write(repo, tmp_path, monkeypatch):
    """The writer's buffer survives a failed settle (full disk) and is written by the next one."""
    from syncer.aim import space
    from syncer.errors import RepoFull

    h = f"{8:024x}"
    batch = WriterBatch(repo)
    w = batch.open(h, "exp")
    w.set_info(name="r", description="", params={}, labels=[], archived=False)
    w.write_points("loss", {}, [0, 1], [1.0, 0.5], [T0, T0 + 1])
    monkeypatch.setattr(space, "RESERVE_BYTES", space.free_bytes(tmp_path) + (1 << 40))
    with pytest.raises(RepoFull):
        w.settle()
    monkeypatch.undo()
    w.settle()  # room again: what was buffered is written now
    w.set_times(created_at=T0, ended_at=T0 + 10, active=False)
    called: list[str] = []
    batch.add(w, lambda: called.append(h))
    batch.commit(lambda thens: [t() for t in thens])
    batch.close()
    assert called == [h]
    assert _loss(tmp_path, h) == ([0, 1], [1.0, 0.5])


def test_a_batch_reaches_the_index_in_one_flush(repo, tmp_path):
    """A batch's index entries go to one level-0 file of the index (with Aim's 1 MB write buffer
    they made several, and every 8 of them compacted the whole index again)."""
    hashes = [f"{i:024x}" for i in range(24)]
    batch = WriterBatch(repo)
    batch.prepare([(h, False) for h in hashes])
    for i, h in enumerate(hashes):
        w = batch.open(h, "exp")
        params = {f"param_{k:03d}": f"value {k} of run {i}, long enough" for k in range(400)}
        w.set_info(name=f"run {i}", description=None, params=params, labels=[], archived=False)
        w.set_times(created_at=T0 + i, ended_at=T0 + 10, active=False)
        batch.add(w)
    assert batch.commit(lambda thens: None) == []
    batch.close()
    index = tmp_path / "aim" / ".aim" / "meta" / "index"
    assert len(list(index.glob("*.sst"))) == 1
    entries = _index(tmp_path / "aim")
    assert sum(1 for k in entries if b"param_" in k) >= 24 * 400  # all of them, in that one file
    r = fresh_repo(tmp_path / "aim")
    assert sorted(run.hash for run in r.iter_runs()) == hashes
    r.close()


def _table_properties(chunk) -> dict[str, int]:
    """Counts RocksDB keeps of a chunk's SST files: `# entries`, `# deletions`, `# range deletions`."""
    import aimrocks

    db = aimrocks.DB(str(chunk), aimrocks.Options(), read_only=True)
    text = db.get_property(b"rocksdb.aggregated-table-properties").decode()
    del db  # closed as the last reference goes (aimrocks' own close() crashes the process later)
    fields = (part.split("=", 1) for part in text.split("; ") if "=" in part)
    return {k.strip(): int(v) for k, v in fields if v.strip().isdigit()}


def test_a_runs_chunks_hold_no_tombstones_per_series_and_no_info_log(repo, tmp_path):
    """A new series' bookkeeping goes to the meta chunk as puts: no range tombstone (a subtree
    cleared) nor point tombstone (a blob twin deleted) per series, which every later read of the
    chunk would skip (these 24 series left 110 range and 304 point tombstones before). RocksDB keeps no
    info log in the chunks it writes. Aim's SDK reads every series back."""
    h = "0" * 23 + "a"
    batch = WriterBatch(repo)
    batch.prepare([(h, True)])
    w = batch.open(h, "exp")
    w.set_info(name="r", description=None, params={"x": 1}, labels=[], archived=False)
    names = [f"metric_{k}" for k in range(12)]
    for name in names:
        for ctx in ({"subset": "train"}, {"subset": "eval", "lang": "de"}):
            w.write_points(name, ctx, [0, 1, 2], [1.0, 0.5, 0.25], [T0, T0 + 1, T0 + 2])
    w.set_times(created_at=T0, ended_at=T0 + 10, active=False)
    batch.add(w)
    batch.commit(lambda thens: None)
    batch.close()
    aim = tmp_path / "aim" / ".aim"
    props = _table_properties(aim / "meta" / "chunks" / h)
    assert props["# entries"] > 24 * 8  # the series' bookkeeping is there
    # what the run's own fields take (attrs, end time), whatever its series; a set per context
    # would add 4 range tombstones, one per series' flag 2, a blob-twin delete per key 8
    assert props["# range deletions"] <= 6 and props["# deletions"] <= 8
    for sub in ("meta", "seqs"):
        assert not list((aim / sub / "chunks" / h).glob("LOG*"))
    r = fresh_repo(tmp_path / "aim")
    try:
        run = r.get_run(h)
        got = {(m.name, tuple(sorted(m.context.to_dict().items()))) for m in run.metrics()}
        assert len(got) == 24 and {n for n, _ in got} == set(names)
        steps, (values, _e, _t) = run.get_metric("metric_3", Context({"subset": "eval", "lang": "de"})).data.numpy()
        assert steps.tolist() == [0, 1, 2] and values.tolist() == [1.0, 0.5, 0.25]
    finally:
        r.close()


def test_a_run_with_a_media_object_is_indexed_as_its_chunk_stays(repo, tmp_path):
    """A Text's first and last values are blobs in the meta chunk, read lazily through it by
    Aim. Read after the chunk was closed, they opened it again for writing, which changed its
    files after the index had stamped them: the next start indexed the run again."""
    from syncer.aim.index import index_missing, index_stamps

    import aim

    h = "00000000000000000000a1b2"
    batch = WriterBatch(repo)
    batch.prepare([(h, True)])
    w = batch.open(h, "exp")
    w.set_info(name="r", description=None, params={}, labels=[], archived=False)
    w.write_points("loss", {}, [0, 1], [1.0, 0.5], [T0, T0 + 1])
    w.write_objects("notes", {}, 0, T0, aim.Text("a note from an artifact"))
    w.set_times(created_at=T0, ended_at=T0 + 1, active=False)
    batch.add(w)
    assert batch.commit(lambda thens: None) == []
    batch.close()
    chunk = tmp_path / "aim" / ".aim" / "meta" / "chunks" / h
    assert len(list(chunk.glob("OPTIONS-*"))) == 1, "the chunk was opened once (each open writes an OPTIONS file)"
    assert index_stamps(repo, [h]) == {h: chunk_stamp(repo, h)}
    assert index_missing(repo) == []
    r = fresh_repo(tmp_path / "aim")
    try:
        steps, (vals, _, _) = r.get_run(h).get_text_sequence("notes", Context({})).data.numpy()
        assert steps.tolist() == [0] and vals[0].data == "a note from an artifact"
    finally:
        r.close()
