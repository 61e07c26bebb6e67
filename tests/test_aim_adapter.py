"""syncer.aim against real Aim (no mocks): every read-back goes through Aim's public SDK
(a fresh ``aim.Repo``), one test through ``aim up``'s web API."""

from __future__ import annotations

import datetime
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from aim.storage.context import Context
from syncer import aim as A
from syncer.aim import AimRunLocked, AimRunWriter, compat
from syncer.aim import encoding as enc
from syncer.aim.writer import OWN_KEY
from syncer.sink import aim_run_hash

import aim
from aim import Repo
from conftest import aim_stream_records

T0 = 1_700_000_000.0  # a fixed "MLflow" time, far from now


def fresh(path) -> Repo:
    """A new Repo object: no container/handle cached from earlier reads."""
    return Repo(str(path))


def metric(path, run_hash, name, context=None):
    run = fresh(path).get_run(run_hash)
    assert run is not None, f"run {run_hash} not visible"
    m = run.get_metric(name, Context(context or {}))
    assert m is not None, f"metric {name} {context} not visible"
    steps, (values, epochs, times) = m.data.numpy()
    return steps.tolist(), values.tolist(), times.tolist(), epochs.tolist()


def read_metric(repo, run_hash: str, name: str, context: dict | None = None) -> dict | None:
    """Read a metric back through Aim's public SDK (a fresh ``aim.Repo``): a dict of
    ``steps``, ``values``, ``timestamps`` (seconds), ``epochs`` (lists, ordered by step), or
    ``None`` when the run or metric is not visible."""
    path = repo.root_path if hasattr(repo, "root_path") else os.fspath(repo)
    run = Repo(path).get_run(run_hash)
    if run is None:
        return None
    m = run.get_metric(name, Context(dict(context or {})))
    if m is None:
        return None
    steps, (values, epochs, timestamps) = m.data.numpy()
    return {
        "steps": steps.tolist(),
        "values": values.tolist(),
        "timestamps": timestamps.tolist(),
        "epochs": [None if e != e else int(e) for e in epochs.tolist()],
    }


def same_float(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.fixture(scope="module")
def template_repo(tmp_path_factory):
    """Creating an Aim repo runs an alembic migration in a subprocess (seconds): do it once."""
    path = tmp_path_factory.mktemp("template") / "repo"
    Repo.from_path(str(path), init=True)
    return path


@pytest.fixture
def repo_path(tmp_path, template_repo):
    path = tmp_path / "repo"
    shutil.copytree(template_repo, path)
    return path


# ------------------------------------------------------------------------------------------------
# guard: the internals we rely on


def test_guard_aim_version_and_internals():
    """Fails loudly when Aim's internals this adapter relies on change (see the message)."""
    A.check_aim_compatibility()
    lo, hi = compat.SUPPORTED_AIM
    from aim.__version__ import __version__ as aim_version

    ver = tuple(int(x) for x in aim_version.split(".")[:2])
    assert lo <= ver < hi, f"aim {ver} outside {lo}..{hi}: re-check syncer/aim/ against Aim's source"
    # the guard itself must notice a broken internal
    from aim.storage.hashing import hashing

    saved = hashing._HASH_UNIFORM_SALT
    compat._compat_checked = False
    try:
        del hashing._HASH_UNIFORM_SALT
        with pytest.raises(A.AimInternalsChanged, match="_HASH_UNIFORM_SALT"):
            A.check_aim_compatibility()
    finally:
        hashing._HASH_UNIFORM_SALT = saved
        compat._compat_checked = False
        A.check_aim_compatibility()


def test_encoding_step_keys_columns_and_input_checks():
    """The pure encoding functions (the guard checks the same against Aim at start-up)."""
    import numpy as np
    from aim.sdk.tracker import STEP_HASH_FUNCTIONS
    from aim.storage.encoding import encode, encode_key, encode_path

    assert enc.step_key(-7) == encode_key(STEP_HASH_FUNCTIONS[2](-7)) + enc.PATH_SENTINEL
    assert enc.step_keys([0, 1, 0]) == [enc.step_key(0), enc.step_key(1), enc.step_key(0)]
    assert enc.step_key(0) != enc.step_key(1)
    path = ("seqs", "v2", "chunks", "h", 3, "loss")
    assert enc.column_prefix(path, "val") == encode_path((*path, "val"))
    assert enc.encode_column(enc.FLOAT_TAG, np.array([1.0, -2.5])) == [encode(1.0), encode(-2.5)]
    assert enc.encode_column(enc.INT_TAG, np.array([3, -4], dtype=np.int64)) == [encode(3), encode(-4)]
    assert enc.encode_column(enc.FLOAT_TAG, np.array([], dtype=np.float64)) == []
    assert enc.encode_epochs(None, 2) == [encode(None)] * 2
    assert enc.encode_epochs([1, None], 2) == [encode(1), encode(None)]

    assert enc.int_list([3, 1], "steps") == [3, 1]
    assert enc.int_list(np.array([2, 5], dtype=np.uint16), "steps") == [2, 5]
    assert enc.int_list([1.0, 2.0], "steps") == [1, 2]
    assert enc.int_list([2**70, 1], "steps") == [2**70, 1]  # beyond int64: Python ints
    for bad in ([1.5], [math.nan], [[1, 2]], ["1"]):
        with pytest.raises(ValueError, match="steps"):
            enc.int_list(bad, "steps")
    enc.check_steps([0, enc.MAX_ABS_STEP, -enc.MAX_ABS_STEP], "m")
    with pytest.raises(ValueError, match="2\\*\\*53"):
        enc.check_steps([1, -enc.MAX_ABS_STEP - 1], "m")

    assert enc.check_hash("a_b.c-1") == "a_b.c-1"
    for bad in ("", "-x", "a/b", "x" * 129, 5):
        with pytest.raises(ValueError, match="invalid Aim run hash"):
            enc.check_hash(bad)


def _chunk_items(repo_path, sub, run_hash):
    from aim.storage.encoding import decode, decode_path
    from aim.storage.rockscontainer import RocksContainer

    c = RocksContainer(str(repo_path / ".aim" / sub / "chunks" / run_hash), read_only=True)
    try:
        return {tuple(decode_path(k)): decode(v) for k, v in c.items()}
    finally:
        c.close()


def test_guard_storage_layout_equals_aim_run_track(tmp_path, template_repo):
    """What we write is byte-for-byte the layout `aim.Run.track` writes (bar the times)."""
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(template_repo, a)
    shutil.copytree(template_repo, b)
    run = aim.Run(repo=str(a), system_tracking_interval=None, capture_terminal_logs=False)
    h = run.hash
    run["hp"] = {"lr": 0.5}
    ctx = {"subset": "train"}
    for s, v in [(0, 2.0), (1, 1.5), (2, 1.25)]:
        run.track(v, name="loss", step=s, epoch=s // 2, context=ctx)
    run.close()

    w = AimRunWriter.open(b, h)
    w.set_info(name=None, description=None, params={"hp": {"lr": 0.5}}, labels=[], archived=False)
    w.write_points("loss", ctx, [0, 1, 2], [2.0, 1.5, 1.25], [T0, T0 + 1, T0 + 2], epochs=[0, 0, 1])
    w.close()

    def norm(items):
        return {
            k: (None if k[-2:-1] == ("time",) else v)
            for k, v in items.items()
            if "end_time" not in k and OWN_KEY not in k
        }

    seqs_a, seqs_b = _chunk_items(a, "seqs", h), _chunk_items(b, "seqs", h)
    assert norm(seqs_a) == norm(seqs_b)
    times_b = sorted(v for k, v in seqs_b.items() if k[-2:-1] == ("time",))
    assert times_b == [T0, T0 + 1, T0 + 2]
    meta_a, meta_b = norm(_chunk_items(a, "meta", h)), norm(_chunk_items(b, "meta", h))
    assert meta_a == meta_b


# ------------------------------------------------------------------------------------------------
# points


def test_points_round_trip_timestamps_nan_inf_huge_steps(repo_path):
    steps = [10**12, 3, 0, 2, 1, 10**12 - 1]  # not sorted, huge
    values = [0.5, float("nan"), float("inf"), float("-inf"), -1e-300, 1.7976931348623157e308]
    times = [T0 + 0.001, T0 + 3.123, T0, T0 + 2.5, T0 + 1.999, T0 + 4.0]
    epochs = [7, None, 0, 1, None, 7]
    with AimRunWriter.open(repo_path, "r1", experiment="e") as w:
        w.write_points("loss", {"subset": "train"}, steps, values, times, epochs)
    got_steps, got_vals, got_times, got_epochs = metric(repo_path, "r1", "loss", {"subset": "train"})
    order = sorted(range(len(steps)), key=steps.__getitem__)
    assert got_steps == [steps[i] for i in order]
    assert all(same_float(g, values[i]) for g, i in zip(got_vals, order))
    assert all(abs(g - times[i]) < 1e-6 for g, i in zip(got_times, order))  # ms precision and better
    assert [None if e != e else int(e) for e in got_epochs] == [epochs[i] for i in order]
    # the SDK helper agrees
    d = read_metric(repo_path, "r1", "loss", {"subset": "train"})
    assert d["steps"] == got_steps and d["epochs"] == [epochs[i] for i in order]
    # sequence metadata the UI uses (last value, last step, min/max) is right
    run = fresh(repo_path).get_run("r1")
    info = run.collect_sequence_info("metric")["metric"][0]["values"]
    assert info["last_step"] == 10**12 and info["last"] == 0.5 and info["first_step"] == 0
    assert info["max"] == math.inf and info["min"] == -math.inf


def test_rewrite_is_idempotent_and_append_works(repo_path):
    steps = list(range(100))
    with AimRunWriter.open(repo_path, "r2") as w:
        w.write_points("acc", {}, steps, [s / 100 for s in steps], [T0 + s for s in steps])
        w.write_points("acc", {}, steps, [s / 100 for s in steps], [T0 + s for s in steps])  # re-send
    s, v, t, _ = metric(repo_path, "r2", "acc")
    assert s == steps and v == [x / 100 for x in steps]

    with AimRunWriter.open(repo_path, "r2") as w:  # a later sync: re-send the tail, then append
        w.write_points("acc", {}, steps[90:], [x / 100 for x in steps[90:]], [T0 + x for x in steps[90:]])
        more = list(range(100, 150))
        w.write_points("acc", {}, more[::-1], [x / 100 for x in more[::-1]], [T0 + x for x in more[::-1]])
        w.write_points("acc", {}, [5], [42.0], [T0 + 5])  # a changed value overwrites its step
    s, v, t, _ = metric(repo_path, "r2", "acc")
    assert s == list(range(150))
    assert v[5] == 42.0 and v[149] == 1.49
    assert t == [T0 + x for x in range(150)]
    # sampled reads (the UI's) end at the true last step
    m = fresh(repo_path).get_run("r2").get_metric("acc", Context({}))
    sampled_steps, _ = m.data.sample(10).numpy()
    assert sampled_steps[-1] == 149


def test_many_chunks_keep_one_point_per_step(repo_path):
    with AimRunWriter.open(repo_path, "r3") as w:
        for c in range(20):
            steps = list(range(c * 500, (c + 1) * 500))
            w.write_points("m", {"subset": "val"}, steps, [float(x) for x in steps], [T0 + x / 1000 for x in steps])
        w.write_points(
            "m",
            {"subset": "val"},
            list(range(500)),
            [float(x) for x in range(500)],
            [T0 + x / 1000 for x in range(500)],
        )
    s, v, t, _ = metric(repo_path, "r3", "m", {"subset": "val"})
    assert s == list(range(10_000)) and v == [float(x) for x in range(10_000)]


def test_write_points_validates_input(repo_path):
    with AimRunWriter.open(repo_path, "r4") as w:
        with pytest.raises(ValueError, match="lengths differ"):
            w.write_points("m", {}, [1, 2], [1.0], [T0, T0])
        with pytest.raises(ValueError, match="integers"):
            w.write_points("m", {}, [1.5], [1.0], [T0])
        with pytest.raises(ValueError, match="2\\*\\*53"):
            w.write_points("m", {}, [2**60], [1.0], [T0])
        w.write_points("m", {}, [], [], [])  # nothing to do
        w.write_objects("t", {}, 0, T0, aim.Text("x"))
        with pytest.raises(ValueError, match="not metric values"):
            w.write_points("t", {}, [1], [1.0], [T0])


# ------------------------------------------------------------------------------------------------
# run info, times, visibility


def test_times_info_and_visibility_after_close(repo_path):
    with AimRunWriter.open(repo_path, "fin", experiment="exp-a") as w:
        w.set_info(
            name="finished run",
            description="about it",
            params={"lr": 0.1, "opt": {"name": "adam"}},
            labels=["team=nlp", "lang=de"],
            archived=False,
        )
        w.set_times(created_at=T0 + 0.123, ended_at=T0 + 3600.456, active=False)
        w.write_points("x", {}, [0, 1], [1.0, 2.0], [T0 + 1, T0 + 2])
    with AimRunWriter.open(repo_path, "live", experiment="exp-a") as w:
        w.set_info(name="running run", description=None, params={}, labels=[], archived=False)
        w.set_times(created_at=T0 + 60, ended_at=None, active=True)
        w.write_points("x", {}, [0], [3.0], [T0 + 61])

    repo = fresh(repo_path)
    assert {r.hash for r in repo.iter_runs()} == {"fin", "live"}
    found = {(m.run.hash, m.name) for m in repo.query_metrics("metric.name == 'x'", report_mode=0)}
    assert found == {("fin", "x"), ("live", "x")}
    assert [r.run.hash for r in repo.query_runs("run.experiment == 'exp-a'", report_mode=0).iter_runs()] == [
        "live",
        "fin",
    ]  # Aim lists runs by creation time, newest first

    fin = repo.get_run("fin")
    assert abs(fin.creation_time - (T0 + 0.123)) < 1e-3
    assert abs(fin.created_at.replace(tzinfo=datetime.UTC).timestamp() - (T0 + 0.123)) < 1e-3  # naive UTC
    assert abs(fin.end_time - (T0 + 3600.456)) < 1e-3
    assert abs(fin.duration - 3600.333) < 2e-3
    assert fin.active is False and fin.archived is False
    assert fin.name == "finished run" and fin.description == "about it" and fin.experiment == "exp-a"
    assert sorted(fin.props.tags) == ["lang=de", "team=nlp"]
    assert fin[...] == {"lr": 0.1, "opt": {"name": "adam"}}

    live = repo.get_run("live")
    assert abs(live.creation_time - (T0 + 60)) < 1e-3
    assert live.end_time is None and live.active is True
    assert live.description is None


def test_reopen_keeps_created_at_points_and_updates_state(repo_path):
    with AimRunWriter.open(repo_path, "rr", experiment="e1") as w:
        w.set_info(name="n", description="d", params={"a": 1}, labels=["k=v1", "x=y"], archived=False)
        w.set_times(created_at=T0, ended_at=None, active=True)
        w.write_points("m", {}, [0, 1], [0.0, 1.0], [T0, T0 + 1])
    # hand-added tag in Aim survives our label updates
    run = aim.Run("rr", repo=str(repo_path), system_tracking_interval=None, capture_terminal_logs=False)
    run.add_tag("by-hand")
    run.close()

    with AimRunWriter.open(repo_path, "rr", experiment="e1") as w:  # no set_times this time
        w.write_points("m", {}, [2], [2.0], [T0 + 2])
    run = fresh(repo_path).get_run("rr")
    assert abs(run.creation_time - T0) < 1e-3
    assert metric(repo_path, "rr", "m")[0] == [0, 1, 2]
    assert run[...] == {"a": 1}

    # MLflow: run finished, deleted (-> archived), a tag value changed
    with AimRunWriter.open(repo_path, "rr", experiment="e1") as w:
        w.set_info(name="n2", description=None, params={"a": 2}, labels=["k=v2", "x=y"], archived=True)
        w.set_times(created_at=T0, ended_at=T0 + 10, active=False)
    run = fresh(repo_path).get_run("rr")
    assert run.archived is True and run.name == "n2" and run.description is None
    assert sorted(run.props.tags) == ["by-hand", "k=v2", "x=y"]
    assert run.active is False and abs(run.end_time - (T0 + 10)) < 1e-3
    assert abs(run.creation_time - T0) < 1e-3
    assert run[...] == {"a": 2}

    with AimRunWriter.open(repo_path, "rr") as w:  # restored in MLflow -> unarchived
        w.set_info(name="n2", description=None, params={"a": 2}, labels=["k=v2", "x=y"], archived=False)
    assert fresh(repo_path).get_run("rr").archived is False
    assert fresh(repo_path).get_run("rr").experiment == "e1"


def test_second_writer_is_refused_with_a_clear_error(repo_path):
    """Also once the first writer's lock file is older than filelock's 2 s malformed-lock age (a
    first open that took that long on a loaded machine let a second writer of the same process in)."""
    w = AimRunWriter.open(repo_path, "locked")
    try:
        with pytest.raises(AimRunLocked, match="locked"):
            AimRunWriter.open(repo_path, "locked", lock_timeout=0.2)
        lock_file = repo_path / ".aim" / "locks" / "locked.softlock"
        old = time.time() - 10
        os.utime(lock_file, (old, old))  # as after a first open that took 10 s
        with pytest.raises(AimRunLocked, match="locked"):
            AimRunWriter.open(repo_path, "locked", lock_timeout=0.2)
    finally:
        w.close()
    AimRunWriter.open(repo_path, "locked").close()  # free again


def test_flush_survives_a_crash_and_the_stale_lock_is_taken_over(repo_path):
    """A writer process dies after flush() without close(): the next sync reopens the run
    (Aim frees the dead process's lock), finds the points, re-sends a chunk, closes."""
    code = f"""
import os, sys
sys.path.insert(0, {os.getcwd()!r})
from syncer.aim import AimRunWriter
w = AimRunWriter.open({str(repo_path)!r}, "crash", experiment="e")
w.set_info(name="c", description=None, params={{}}, labels=["a=b"], archived=False)
w.set_times(created_at={T0}, ended_at=None, active=True)
w.write_points("m", {{}}, [0, 1, 2], [0.0, 1.0, 2.0], [{T0}, {T0 + 1}, {T0 + 2}])
w.flush()
os._exit(0)  # no close(): as if killed
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    with AimRunWriter.open(repo_path, "crash", experiment="e", lock_timeout=1) as w:
        w.write_points("m", {}, [2, 3], [2.0, 3.0], [T0 + 2, T0 + 3])  # the re-sent chunk + one more
    s, v, t, _ = metric(repo_path, "crash", "m")
    assert s == [0, 1, 2, 3] and t == [T0, T0 + 1, T0 + 2, T0 + 3]
    run = fresh(repo_path).get_run("crash")
    assert abs(run.creation_time - T0) < 1e-3 and run.active and run.props.tags == ["a=b"]


def test_objects_with_chosen_step_and_time(repo_path):
    import numpy as np

    with AimRunWriter.open(repo_path, "obj") as w:
        w.write_objects("notes", {"kind": "text"}, 3, T0 + 5.5, aim.Text("hello"))
        w.write_objects("pics", {"kind": "image"}, 0, T0 + 7.25, aim.Image(np.zeros((4, 4, 3), dtype=np.uint8)))
        w.write_objects("notes", {"kind": "text"}, 3, T0 + 6.5, aim.Text("hello again"))  # same step: overwrite
        w.write_points("loss", {}, [0], [1.0], [T0])
    run = fresh(repo_path).get_run("obj")
    texts = run.get_text_sequence("notes", Context({"kind": "text"}))
    steps, (vals, _, times) = texts.data.numpy()
    assert steps.tolist() == [3] and vals[0].data == "hello again" and times.tolist() == [T0 + 6.5]
    images = run.get_image_sequence("pics", Context({"kind": "image"}))
    steps, (vals, _, times) = images.data.numpy()
    assert steps.tolist() == [0] and times.tolist() == [T0 + 7.25]
    assert [m.name for m in run.metrics()] == ["loss"]


def test_experiment_description_and_system_metric_names(repo_path):
    from syncer.mapping import system_metric, system_metric_name

    with AimRunWriter.open(repo_path, "r", experiment="xnli") as w:
        w.write_points(system_metric_name("system/cpu_utilization_percentage"), {}, [0], [12.5], [T0])
    A.set_experiment_description(repo_path, "xnli", "cross-lingual NLI")
    A.set_experiment_description(repo_path, "new-exp", "made here")
    exps = {e.name: e.description for e in fresh(repo_path).structured_db.experiments()}
    assert exps["xnli"] == "cross-lingual NLI" and exps["new-exp"] == "made here"
    assert [m.name for m in fresh(repo_path).get_run("r").metrics()] == ["__system__cpu"]

    assert system_metric_name("system/cpu_utilization_percentage") == "__system__cpu"
    assert system_metric_name("cpu_utilization_percentage") == "__system__cpu"
    assert system_metric_name("system_memory_usage_percentage") == "__system__memory_percent"
    assert system_metric_name("disk_usage_percentage") == "__system__disk_percent"
    assert system_metric("system/gpu_1_utilization_percentage") == ("__system__gpu", {"gpu": 1})
    assert system_metric("gpu_0_power_usage_watts") == ("__system__gpu_power_watts", {"gpu": 0})
    assert system_metric_name("gpu_memory_usage_percentage") == "__system__gpu_memory_percent"
    # a metric Aim's System tab has no name for keeps a readable one (not a raw `__system__...`)
    assert system_metric_name("system/network_receive_megabytes") == "system/network_receive_megabytes"
    assert system_metric_name("__system__cpu") == "__system__cpu"
    # the run hash the syncer derives from an MLflow run id is one the writer accepts
    assert aim_run_hash("abc") == aim_run_hash("abc") and len(aim_run_hash("abc")) == 24
    assert enc.check_hash(aim_run_hash("abc")) == aim_run_hash("abc")


def test_index_runs_batches_and_close_without_index(repo_path):
    hashes = []
    for i in range(3):
        w = AimRunWriter.open(repo_path, f"b{i}")
        w.write_points("m", {}, [i], [float(i)], [T0 + i])
        w.close(index=False)
        hashes.append(w.hash)
    assert fresh(repo_path).get_run("b0") is None  # not indexed yet: Aim does not list it
    assert A.index_runs(repo_path, hashes) == []
    assert {r.hash for r in fresh(repo_path).iter_runs()} == set(hashes)


def test_archived_run_keeps_its_metrics_like_an_archived_aim_run(repo_path, template_repo, tmp_path):
    """An archived run (MLflow deleted; archived set BEFORE the points, as the syncer does) has
    its metrics.  `Run.metrics()` lists none for it, but that is Aim's own default query
    (`run.archived == False` is added to every query without `run.archived`): a run archived
    through Aim's SDK behaves the same.  The Run page (`collect_sequence_info`) and explicit
    reads show them; see the aim up test for the web API."""
    with AimRunWriter.open(repo_path, "arch", experiment="e") as w:
        w.set_info(name="gone", description=None, params={"x": 1}, labels=[], archived=True)
        w.write_points("loss", {}, [0], [1.0], [T0])
        w.set_times(created_at=T0, ended_at=T0 + 1, active=False)
    run = fresh(repo_path).get_run("arch")
    assert run.archived is True
    assert [(n, c.to_dict()) for n, c, _ in run.iter_metrics_info()] == [("loss", {})]
    assert run.collect_sequence_info("metric")["metric"][0]["name"] == "loss"
    assert metric(repo_path, "arch", "loss")[0] == [0]
    assert [m.name for m in fresh(repo_path).query_metrics("run.archived == True", report_mode=0)] == ["loss"]

    # the same with Aim's own SDK: metrics() is empty for an archived run
    native = tmp_path / "native"
    shutil.copytree(template_repo, native)
    r = aim.Run(repo=str(native), system_tracking_interval=None, capture_terminal_logs=False)
    r.track(1.0, name="loss", step=0)
    r.archived = True
    h = r.hash
    r.close()
    A.index_runs(native, [h])
    native_run = fresh(native).get_run(h)
    assert list(native_run.metrics()) == [] == list(run.metrics())
    assert [n for n, _c, _r in native_run.iter_metrics_info()] == ["loss"]


_KILLED_WRITER = """
import os, sys
sys.path.insert(0, {cwd!r})
from syncer.aim import AimRunWriter
repo = {repo!r}
w = AimRunWriter.open(repo, "closed_not_indexed", experiment="e")
w.set_info(name="c", description=None, params={{"p": 1}}, labels=["a=b"], archived=False)
w.write_points("m", {{}}, [0, 1], [0.0, 1.0], [{t0}, {t0} + 1])
w.set_times(created_at={t0}, ended_at={t0} + 2, active=False)
w.close(index=False)  # killed after the chunk was closed, before the index was updated
w = AimRunWriter.open(repo, "stale", experiment="e")
w.write_points("m", {{}}, [1], [1.0], [{t0} + 1])
w.close(index=False)  # indexed earlier with step 0 only; killed before re-indexing
w = AimRunWriter.open(repo, "open_at_kill", experiment="e")
w.set_info(name="o", description=None, params={{"p": 1}}, labels=[], archived=False)
w.write_points("m", {{}}, [0], [0.0], [{t0}])
w.flush()
os._exit(0)  # killed with the run open
"""


def test_reopening_a_run_a_killed_writer_left_unindexed_indexes_it_without_changes(repo_path):
    """A writer killed between writing and indexing; the next sync has nothing to re-send for
    the run (its cursors were committed after flush), so it writes nothing: close() must still
    index the run (and refresh a stale index entry), or it stays invisible for good."""
    with AimRunWriter.open(repo_path, "stale", experiment="e") as w:
        w.set_info(name="s", description=None, params={"p": 1}, labels=[], archived=False)
        w.write_points("m", {}, [0], [0.0], [T0])
    code = _KILLED_WRITER.format(cwd=os.getcwd(), repo=str(repo_path), t0=T0)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    repo = fresh(repo_path)
    assert repo.get_run("closed_not_indexed") is None and repo.get_run("open_at_kill") is None
    assert repo.get_run("stale").collect_sequence_info("metric")["metric"][0]["values"]["last_step"] == 0

    for h, name in (("closed_not_indexed", "c"), ("stale", "s"), ("open_at_kill", "o")):
        w = AimRunWriter.open(repo_path, h, experiment="e", lock_timeout=1)
        # the next sync re-sends the metadata (unchanged) and has no points left to send
        w.set_info(
            name=name,
            description=None,
            params={"p": 1},
            labels=["a=b"] if h == "closed_not_indexed" else [],
            archived=False,
        )
        assert not w.freshness.dirty  # nothing was written
        w.close()
    repo = fresh(repo_path)
    assert {r.hash for r in repo.iter_runs()} == {"closed_not_indexed", "stale", "open_at_kill"}
    assert repo.get_run("stale").collect_sequence_info("metric")["metric"][0]["values"]["last_step"] == 1
    assert repo.get_run("closed_not_indexed").active is False
    assert metric(repo_path, "open_at_kill", "m")[0] == [0]


def test_index_missing_heals_unindexed_and_stale_runs_and_is_a_no_op_when_all_is_well(repo_path):
    with AimRunWriter.open(repo_path, "ok") as w:
        w.write_points("m", {}, [0], [0.0], [T0])
    with AimRunWriter.open(repo_path, "stale") as w:
        w.write_points("m", {}, [0], [0.0], [T0])
    for h in ("never1", "never2"):  # e.g. worker processes' runs; the parent was killed before index_runs
        w = AimRunWriter.open(repo_path, h)
        w.write_points("m", {}, [0], [0.0], [T0])
        w.close(index=False)
    w = AimRunWriter.open(repo_path, "stale")
    w.write_points("m", {}, [1], [1.0], [T0 + 1])
    w.close(index=False)
    assert {r.hash for r in fresh(repo_path).iter_runs()} == {"ok", "stale"}

    assert sorted(A.index_missing(repo_path)) == ["never1", "never2", "stale"]
    repo = fresh(repo_path)
    assert {r.hash for r in repo.iter_runs()} == {"ok", "stale", "never1", "never2"}
    assert repo.get_run("stale").collect_sequence_info("metric")["metric"][0]["values"]["last_step"] == 1
    # all is well now: nothing to do, and reading the runs back (Aim's readers) changes nothing
    assert A.index_missing(repo_path) == []
    assert metric(repo_path, "never1", "m")[0] == [0]
    assert A.index_missing(Repo.from_path(str(repo_path))) == []


def test_fresh_repo_lists_runs_written_a_moment_ago_in_the_same_process(repo_path):
    """`Repo.list_all_runs()` is cached for 0.5 s per repo *path* (a ttl_cache keyed by the Repo,
    which hashes by path), so even a new `Repo(path)` can list the runs of half a second ago;
    `fresh_repo(path)` drops that cache.  Only in-process readers are affected."""
    with AimRunWriter.open(repo_path, "first") as w:
        w.write_points("m", {}, [0], [0.0], [T0])
    assert A.fresh_repo(repo_path).list_all_runs() == ["first"]
    with AimRunWriter.open(repo_path, "second") as w:
        w.write_points("m", {}, [0], [0.0], [T0])
    repo = A.fresh_repo(repo_path)
    assert sorted(repo.list_all_runs()) == ["first", "second"]
    assert repo.get_run("second") is not None


# ------------------------------------------------------------------------------------------------
# a writer kept open between syncs (the sync daemon, a RUNNING run)

_OTHER_PROCESS_READER = """
import json, sys
from aim import Repo
from aim.storage.context import Context
repo = Repo(sys.argv[1])
run = repo.get_run(sys.argv[2])
out = None
if run is not None:
    m = run.get_metric("m", Context({}))
    info = {t["name"]: t["values"]["last_step"] for t in run.collect_sequence_info("metric")["metric"]}
    out = {"steps": None if m is None else m.data.numpy()[0].tolist(), "last_step": info, "params": run[...],
           "active": run.active}
repo.close()
print(json.dumps(out))
"""


def _read_elsewhere(repo_path, run_hash):
    p = subprocess.run(
        [sys.executable, "-c", _OTHER_PROCESS_READER, str(repo_path), run_hash],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_open_writer_new_points_readable_elsewhere_after_flush_without_reindexing(repo_path):
    """Points of a sequence the index lists: readable by another process right after flush()
    (its read-only open replays the WAL); the index's bookkeeping (last step) and metadata only
    after index_writers(); index_due() says when that is needed."""
    w = AimRunWriter.open(repo_path, "open", experiment="e")
    try:
        assert w.index_due()  # a new run: due at once
        w.set_info(name="o", description=None, params={"p": 1}, labels=[], archived=False)
        w.set_times(created_at=T0, ended_at=None, active=True)
        w.write_points("m", {}, [0, 1], [0.0, 1.0], [T0, T0 + 1])
        assert A.index_writers([w]) == []
        assert not w.index_due(max_age=3600)
        assert _read_elsewhere(repo_path, "open") == {
            "steps": [0, 1],
            "last_step": {"m": 1},
            "params": {"p": 1},
            "active": True,
        }
        for step in (2, 3):
            w.write_points("m", {}, [step], [float(step)], [T0 + step])
            w.flush()
            assert not w.index_due(max_age=3600)  # points only: the index may lag
            got = _read_elsewhere(repo_path, "open")
            assert got["steps"] == list(range(step + 1)) and got["last_step"] == {"m": 1}
        assert w.index_due(max_age=0)  # ... but not longer than max_age
        w.flush()
        w.set_times(created_at=T0, ended_at=None, active=True)  # unchanged: nothing to commit or index
        assert not w.row.pending and not w.chunks.wal_dirty["meta"] and not w.index_due(max_age=3600)
        w.set_info(name="o", description=None, params={"p": 2}, labels=[], archived=False)  # metadata: due now
        assert w.index_due(max_age=3600)
        A.index_writers([w])
        assert _read_elsewhere(repo_path, "open") == {
            "steps": [0, 1, 2, 3],
            "last_step": {"m": 3},
            "params": {"p": 2},
            "active": True,
        }
        w.write_points("n", {}, [0], [0.0], [T0])  # a new sequence: due now
        assert w.index_due(max_age=3600)
    finally:
        assert A.close_writers([w]) == []
    assert A.index_missing(repo_path) == []  # closing re-indexed it as closed
    assert metric(repo_path, "open", "n")[0] == [0]


def test_open_writer_found_stale_in_the_index_is_due_at_once(repo_path):
    """A writer killed with the run open left the index behind its chunk: the next writer's
    index_due() says so at once, even when it writes nothing new."""
    with AimRunWriter.open(repo_path, "k") as w:
        w.write_points("m", {}, [0], [0.0], [T0])
    w = AimRunWriter.open(repo_path, "k")
    w.write_points("m", {}, [1], [1.0], [T0 + 1])
    w.close(index=False)  # as if killed before indexing
    w = AimRunWriter.open(repo_path, "k")
    try:
        assert w.index_due(max_age=3600)
        assert A.index_writers([w]) == []
        assert not w.index_due(max_age=3600)
    finally:
        w.close()
    assert _read_elsewhere(repo_path, "k")["last_step"] == {"m": 1}


def test_writer_closed_on_another_thread_releases_its_lock(repo_path):
    """The daemon opens a run's writer on a scheduler thread and may close it on another (or on
    the main thread at shutdown): the run lock must really be released."""
    import threading

    box = {}
    t = threading.Thread(target=lambda: box.setdefault("w", AimRunWriter.open(repo_path, "t")))
    t.start()
    t.join()
    w = box["w"]
    w.write_points("m", {}, [0], [0.0], [T0])
    w.close()
    assert not (repo_path / ".aim" / "locks" / "t.softlock").exists()
    AimRunWriter.open(repo_path, "t", lock_timeout=0.2).close()


def test_lock_left_by_an_earlier_process_with_our_pid_is_taken_over(repo_path):
    """A container restarted after a SIGKILL often gets the same pid: Aim sees the dead writer's
    lock as held by a live process (us). A lock naming this pid written before this process
    started is stale; one written since is a real conflict."""
    from aim.sdk.lock_manager import LockManager

    with AimRunWriter.open(repo_path, "pid") as w:
        w.write_points("m", {}, [0], [0.0], [T0])
    lock = repo_path / ".aim" / "locks" / "pid.softlock"
    lock.write_text(f"{LockManager.machine_id}-{os.getpid()}-{time.time() - 10**6}")
    os.utime(lock, (time.time() - 10**6, time.time() - 10**6))  # before this process started
    with AimRunWriter.open(repo_path, "pid", lock_timeout=0.2) as w:
        w.write_points("m", {}, [1], [1.0], [T0 + 1])
    assert metric(repo_path, "pid", "m")[0] == [0, 1]

    lock.write_text(f"{LockManager.machine_id}-{os.getpid()}-{time.time()}")  # written since we started
    with pytest.raises(AimRunLocked):
        AimRunWriter.open(repo_path, "pid", lock_timeout=0.2)
    lock.unlink()


def test_a_lock_file_left_empty_by_a_writer_killed_while_taking_it_is_removed(repo_path):
    """A writer creates its lock file, then writes who it is: killed in between, it leaves an empty
    file, on which Aim's own stale-lock check fails with a ValueError every time. An unreadable
    lock older than a moment is stale; a fresh one may be a writer still taking it."""
    with AimRunWriter.open(repo_path, "empty") as w:
        w.write_points("m", {}, [0], [0.0], [T0])
    lock = repo_path / ".aim" / "locks" / "empty.softlock"
    lock.write_text("")
    with pytest.raises(AimRunLocked):  # just created: not taken over
        AimRunWriter.open(repo_path, "empty", lock_timeout=0.2)
    os.utime(lock, (time.time() - 60, time.time() - 60))
    with AimRunWriter.open(repo_path, "empty", lock_timeout=0.2) as w:
        w.write_points("m", {}, [1], [1.0], [T0 + 1])
    assert metric(repo_path, "empty", "m")[0] == [0, 1]


# ------------------------------------------------------------------------------------------------
# aim up's web API


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, data: bytes | None = None) -> bytes:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read()


def _stream_top_keys(data: bytes) -> list:
    """Top-level keys, in order, of Aim's streamed (length-prefixed, encoded tree) responses."""
    from aim.storage.encoding import decode_path

    keys = []
    for k, _value in aim_stream_records(data):
        path = decode_path(k)
        if path and path[0] not in keys:
            keys.append(path[0])
    return keys


@pytest.mark.slow
def test_web_api_of_aim_up_shows_times_active_order_values_and_what_a_live_writer_adds(repo_path):
    with AimRunWriter.open(repo_path, "older", experiment="web") as w:
        w.set_info(name="older", description=None, params={"p": 1}, labels=["a=b"], archived=False)
        w.set_times(created_at=T0, ended_at=T0 + 90.5, active=False)
        w.write_points("loss", {"subset": "train"}, [2, 0, 1], [0.5, float("nan"), 1.5], [T0 + 2, T0, T0 + 1])
    with AimRunWriter.open(repo_path, "newer", experiment="web") as w:
        w.set_info(name="newer", description=None, params={}, labels=[], archived=False)
        w.set_times(created_at=T0 + 1000, ended_at=None, active=True)
        w.write_points("loss", {"subset": "train"}, [0], [9.0], [T0 + 1001])

    port = _free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "aim")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-c", "from aim.cli.cli import cli_entry_point as m; m()"]
    proc = subprocess.Popen(
        cmd + ["up", "--repo", str(repo_path), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.time() + 45
        while True:
            try:
                info = json.loads(_get(f"{base}/runs/older/info/"))
                break
            except Exception:
                if time.time() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.3)
        props = info["props"]
        assert abs(props["creation_time"] - T0) < 1e-3
        assert abs(props["end_time"] - (T0 + 90.5)) < 1e-3
        assert props["active"] is False and props["archived"] is False
        assert props["experiment"]["name"] == "web" and [t["name"] for t in props["tags"]] == ["a=b"]
        assert info["params"] == {"p": 1}

        live = json.loads(_get(f"{base}/runs/newer/info/"))["props"]
        assert abs(live["creation_time"] - (T0 + 1000)) < 1e-3
        assert live["end_time"] is None and live["active"] is True

        # the runs table: newest creation time first
        order = [
            k
            for k in _stream_top_keys(_get(f"{base}/runs/search/run/?q=&report_progress=false"))
            if k in ("older", "newer")
        ]
        assert order == ["newer", "older"]

        batch = json.loads(
            _get(
                f"{base}/runs/older/metric/get-batch/",
                json.dumps([{"name": "loss", "context": {"subset": "train"}}]).encode(),
            )
        )
        assert batch[0]["iters"] == [0, 1, 2] and batch[0]["values"] == [None, 1.5, 0.5]  # NaN -> null

        # a long-lived writer (the sync daemon: one pooled Repo) next to a running `aim up`:
        # what it writes after aim up started shows in aim up's web API, without a restart
        daemon_repo = Repo.from_path(str(repo_path))

        def soon(check, what):
            deadline = time.time() + 15
            while True:
                try:
                    if check():
                        return
                except urllib.error.HTTPError:  # 404 while not visible yet
                    pass
                assert time.time() < deadline, f"aim up does not show {what}"
                time.sleep(0.2)

        def iters(run_hash):
            return json.loads(
                _get(
                    f"{base}/runs/{run_hash}/metric/get-batch/", json.dumps([{"name": "loss", "context": {}}]).encode()
                )
            )[0]["iters"]

        def searched(q=""):
            return _stream_top_keys(_get(f"{base}/runs/search/run/?q={urllib.parse.quote(q)}&report_progress=false"))

        with AimRunWriter.open(daemon_repo, "later", experiment="web") as w:
            w.set_info(name="later", description=None, params={"p": 2}, labels=[], archived=False)
            w.set_times(created_at=T0 + 2000, ended_at=None, active=True)
            w.write_points("loss", {}, [0], [3.0], [T0 + 2001])
        soon(lambda: json.loads(_get(f"{base}/runs/later/info/"))["params"] == {"p": 2}, "a new run's info")
        soon(lambda: "later" in searched(), "a new run in the runs table")
        assert iters("later") == [0]
        with AimRunWriter.open(daemon_repo, "later", experiment="web") as w:  # a later round: new points
            w.write_points("loss", {}, [1, 2], [2.0, 1.0], [T0 + 2002, T0 + 2003])
        soon(lambda: iters("later") == [0, 1, 2], "new points of a run it has shown")

        # an archived run (MLflow deleted): its Run page lists and plots its metrics; the runs
        # table shows it only when asked for archived runs (Aim's default query hides them)
        with AimRunWriter.open(daemon_repo, "archived", experiment="web") as w:
            w.set_info(name="archived", description=None, params={}, labels=[], archived=True)
            w.write_points("loss", {}, [0], [4.0], [T0 + 3001])
            w.set_times(created_at=T0 + 3000, ended_at=T0 + 3002, active=False)
        soon(
            lambda: json.loads(_get(f"{base}/runs/archived/info/?sequence=metric"))["props"]["archived"],
            "an archived run",
        )
        traces = json.loads(_get(f"{base}/runs/archived/info/?sequence=metric"))["traces"]["metric"]
        assert [(t["name"], t["context"]) for t in traces] == [("loss", {})]
        assert iters("archived") == [0]
        assert "archived" not in searched() and "archived" in searched("run.archived == True")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
