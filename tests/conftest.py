"""Shared fixtures: real MLflow stores (file, sqlite, a real `mlflow server` on 127.0.0.1), a
standard population of runs, the syncer CLI as a subprocess, and Aim read back through its SDK."""

from __future__ import annotations

import ast
import math
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

# MLflow 2.x in venvs of their own, and a workspace-mode server (tests/legacy_mlflow.py)
from legacy_mlflow import legacy_mlflow_factory, mlflow2, mlflow2_server, mlflow_workspace_server  # noqa: F401

os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # MLflow 3 refuses file stores without it
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
# The MLflow 3 servers the tests start run no job consumers (MLflow's huey workers: 8 more
# processes and ~1.4 GB a server, measured; the syncer never uses server jobs). Without this, two
# suites side by side on a 24 GiB machine ran out of memory.
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000_000  # 2023-11-14, ms: runs "trained long ago"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status < 500:
                    return
        except Exception:
            time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop_group(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM a process started with start_new_session=True and its children; SIGKILL them
    if they are still there after `timeout` seconds."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class MlflowServer:
    def __init__(self, workdir: Path, port: int | None = None):
        self.workdir = workdir
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> MlflowServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "server.log", "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--backend-store-uri",
                f"sqlite:///{self.workdir / 'mlflow.db'}",
                "--artifacts-destination",
                str(self.workdir / "artifacts"),
                "--workers",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
        )
        wait_http(self.uri + "/health", timeout=90, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc:
            stop_group(self.proc, 10)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session (skipped, with the reason, where none is installed)."""
    from postgres import Postgres, find_bin

    if find_bin() is None:
        pytest.skip("PostgreSQL is not installed here (`make test` installs Debian's postgresql as root)")
    pg = Postgres(free_port()).start()
    yield pg
    pg.stop()


def store_uri(kind: str, tmp_path: Path, server: MlflowServer | None = None, pg=None) -> str:
    if kind == "file":
        return str(tmp_path / "mlruns")
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'mlflow.db'}"
    if kind == "server":
        assert server is not None
        return server.uri
    if kind == "postgres":
        assert pg is not None
        return pg.new_database()
    raise ValueError(kind)


STORE_KINDS = ["file", "sqlite", "postgres", "server"]


@pytest.fixture(params=STORE_KINDS)
def any_store(request, tmp_path):
    """A tracking URI for each kind of store, empty (the server is shared: use unique names)."""
    server = request.getfixturevalue("mlflow_server") if request.param == "server" else None
    pg = request.getfixturevalue("postgres") if request.param == "postgres" else None
    return request.param, store_uri(request.param, tmp_path, server, pg)


def client_for(uri: str):
    from mlflow.tracking import MlflowClient

    if "://" not in uri:  # a bare folder: make it a store MLflow will write
        Path(uri).mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def log_points(client, run_id: str, key: str, points: list[tuple[int, float, int]]) -> None:
    """points: (step, value, timestamp_ms); logged in batches as MLflow clients do."""
    from mlflow.entities import Metric

    for i in range(0, len(points), 1000):
        client.log_batch(run_id, metrics=[Metric(key, v, ts, s) for s, v, ts in points[i : i + 1000]])


def populate(uri: str, tmp_path: Path, suffix: str = "") -> dict:
    """A small store exercising everything the syncer must carry. Returns what was logged."""
    from mlflow.entities import Param, RunTag

    client = client_for(uri)
    exp_name = f"xnli_fine-tune ✓ Übersetzung{suffix}"
    # a sqlite store would otherwise put artifacts in ./mlruns of the working directory
    location = (tmp_path / f"mlartifacts{suffix}").as_uri() if uri.startswith("sqlite:") else None
    exp_id = client.create_experiment(
        exp_name, artifact_location=location, tags={"mlflow.note.content": "zero-shot transfer", "team": "nlp"}
    )
    runs = {}

    # 1. a finished HF-like run with per-language eval metrics, params, tags, artifacts, dataset input
    r = client.create_run(
        exp_id,
        run_name="bert-base-multilingual-cased",
        start_time=T0,
        tags={"mlflow.note.content": "baseline", "team": "nlp", "mlflow.user": "ann"},
    )
    rid = r.info.run_id
    client.log_batch(
        rid,
        params=[
            Param("learning_rate", "5e-05"),
            Param("per_device_train_batch_size", "8"),
            Param("fp16", "False"),
            Param("_name_or_path", "bert-base-multilingual-cased"),
            Param("label_names", "None"),
            Param("id2label", "{0: 'a', 1: 'b'}"),
            Param("layers", "[0, 1]"),
            Param("long", "x" * 6000),
        ],
    )
    loss = [(s, 1.0 / (s + 1), T0 + 1000 * s + 7) for s in range(50)]
    log_points(client, rid, "loss", loss)
    evals = {}
    for lang in ("en", "de", "zh"):
        acc = [(s, 0.3 + s / 100 + (0.01 if lang == "en" else 0), T0 + 1000 * s + 500) for s in range(0, 50, 10)]
        el = [(s, 2.0 - s / 100, T0 + 1000 * s + 501) for s in range(0, 50, 10)]
        log_points(client, rid, f"eval_{lang}_accuracy", acc)
        log_points(client, rid, f"eval_{lang}_loss", el)
        evals[lang] = acc
    special = [(0, float("nan"), T0 + 1), (1, float("inf"), T0 + 2), (2, -float("inf"), T0 + 3), (10**12, 1.5, T0 + 4)]
    log_points(client, rid, "weird", special)
    # two points at one step: the later (by timestamp) wins
    log_points(client, rid, "dup", [(5, 1.0, T0 + 100), (5, 2.0, T0 + 200), (6, 3.0, T0 + 300)])
    art = tmp_path / f"artifacts{suffix}"
    art.mkdir(parents=True, exist_ok=True)
    _png(art / "confusion_de.png")
    (art / "predictions.txt").write_text("premise\thypothesis\tpred\nDer Hund\tEin Tier\tentailment\n")
    (art / "model.bin").write_bytes(os.urandom(2048))
    client.log_artifact(rid, str(art / "confusion_de.png"), "plots")
    client.log_artifact(rid, str(art / "predictions.txt"))
    client.log_artifact(rid, str(art / "model.bin"), "checkpoints")
    _log_dataset(client, rid)
    client.set_terminated(rid, "FINISHED", end_time=T0 + 3_600_000)
    runs["finished"] = dict(
        run_id=rid,
        name="bert-base-multilingual-cased",
        start=T0,
        end=T0 + 3_600_000,
        status="FINISHED",
        loss=loss,
        evals=evals,
        special=special,
    )

    # 2. a failed run, with a nested child
    r2 = client.create_run(exp_id, run_name="xlm-roberta-base", start_time=T0 + 10_000_000)
    client.log_batch(r2.info.run_id, params=[Param("learning_rate", "2e-05")])
    log_points(client, r2.info.run_id, "train_loss", [(1, 0.5, T0 + 10_000_100)])
    child = client.create_run(
        exp_id, run_name="fold-1", start_time=T0 + 10_000_200, tags={"mlflow.parentRunId": r2.info.run_id}
    )
    log_points(client, child.info.run_id, "val/acc", [(1, 0.7, T0 + 10_000_300)])
    client.set_terminated(child.info.run_id, "FINISHED", end_time=T0 + 10_000_400)
    client.set_terminated(r2.info.run_id, "FAILED", end_time=T0 + 10_500_000)
    runs["failed"] = dict(
        run_id=r2.info.run_id, name="xlm-roberta-base", status="FAILED", start=T0 + 10_000_000, end=T0 + 10_500_000
    )
    runs["child"] = dict(run_id=child.info.run_id, name="fold-1", parent="xlm-roberta-base")

    # 3. a deleted run and 4. a still-running run
    r3 = client.create_run(exp_id, run_name="deleted-run", start_time=T0 + 20_000_000)
    log_points(client, r3.info.run_id, "loss", [(0, 1.0, T0 + 20_000_001)])
    client.set_terminated(r3.info.run_id, "KILLED", end_time=T0 + 20_000_002)
    client.delete_run(r3.info.run_id)
    runs["deleted"] = dict(run_id=r3.info.run_id, name="deleted-run")
    r4 = client.create_run(exp_id, run_name="still-running", start_time=T0 + 30_000_000)
    log_points(client, r4.info.run_id, "loss", [(0, 1.0, T0 + 30_000_001)])
    runs["running"] = dict(run_id=r4.info.run_id, name="still-running", start=T0 + 30_000_000)

    client.log_batch(rid, tags=[RunTag("stage", "final")])
    return {"experiment": exp_name, "experiment_id": exp_id, "runs": runs}


def _png(path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 30, 30)).save(path)


def _log_dataset(client, run_id: str) -> None:
    from mlflow.entities import Dataset, DatasetInput, InputTag

    ds = Dataset(name="xnli-en-train", digest="abc123", source_type="local", source='{"uri": "data/en.jsonl"}')
    client.log_inputs(run_id, [DatasetInput(ds, [InputTag("mlflow.data.context", "training")])])


# ---------------------------------------------------------------------------------------------
# running the CLI and reading Aim back


def syncer_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "syncer", *args]


def run_syncer(
    *args: str, env: dict | None = None, timeout: float = 300, check: bool = False
) -> subprocess.CompletedProcess:
    e = {**os.environ, **(env or {})}
    p = subprocess.run(syncer_cmd(*args), capture_output=True, text=True, env=e, timeout=timeout, cwd=ROOT)
    if check and p.returncode != 0:
        raise AssertionError(f"syncer {' '.join(args)} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def imported_by_backfill(uri: str, aim_repo: Path, package: str = "mlflow") -> list[str]:
    """The modules of `package` a `syncer backfill` of this store imported (in-process, so that
    sys.modules tells), after checking it succeeded."""
    code = (
        "import sys\n"
        "from syncer.cli import cli\n"
        "try:\n"
        f"    cli(['backfill', '--mlflow-tracking-uri', {uri!r}, '--aim-repo', {str(aim_repo)!r}])\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] == {package!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert " 0 runs" not in out.stdout + out.stderr, out.stderr
    return list(ast.literal_eval(out.stdout.strip().splitlines()[-1]))


def read_aim(repo_path: Path | str) -> dict[str, dict]:
    """Every run in the Aim repo, through Aim's SDK, keyed by MLflow run id."""
    from syncer.aim import fresh_repo

    repo = fresh_repo(repo_path)  # Aim caches a repo's run list per path for 0.5 s
    out = {}
    for h in repo.list_all_runs():
        run = repo.get_run(h)
        mlflow_info = run.get("mlflow") or {}
        metrics = {}
        # not run.metrics(): Aim's queries leave out archived runs unless asked for them
        for name, context, _ in run.iter_metrics_info():
            m = run.get_metric(name, context)
            ctx = m.context.to_dict()
            steps, (values, _epochs, timestamps) = m.data.numpy()
            metrics[(m.name, tuple(sorted(ctx.items())))] = {
                "steps": steps.tolist(),
                "values": values.tolist(),
                "timestamps": timestamps.tolist(),
            }
        out[mlflow_info.get("run_id", h)] = {
            "hash": h,
            "name": run.name,
            "experiment": run.experiment,
            "description": run.description,
            # the artifacts listing lives under `mlflow` (`run.mlflow.artifacts`), not among the params' top keys
            "params": {
                **{k: run.get(k) for k in ("hparams", "mlflow", "tags", "datasets")},
                "artifacts": mlflow_info.get("artifacts"),
            },
            "metrics": metrics,
            "archived": run.archived,
            "active": run.active,
            "created_at": run.creation_time,
            "end_time": run.end_time,
            "objects": sorted(
                n for n, _c, _r in run.iter_sequence_info_by_type(("aim.image", "aim.text", "aim.audio"))
            ),
            "labels": sorted(t.name if hasattr(t, "name") else str(t) for t in (run.props.tags or [])),
        }
    repo.close()  # open read-only handles would hide what a writer adds later
    return out


def aim_stream_records(data: bytes) -> list[tuple[bytes, bytes]]:
    """(encoded key, encoded value) records of a streamed `aim up` web-API response
    (aim/web/api/runs/utils.py collect_streamable_data: (length, key, length, value)*)."""
    records, i = [], 0
    while i < len(data):
        (kl,) = struct.unpack_from("I", data, i)
        key = data[i + 4 : i + 4 + kl]
        i += 4 + kl
        (vl,) = struct.unpack_from("I", data, i)
        records.append((key, data[i + 4 : i + 4 + vl]))
        i += 4 + vl
    return records


def decode_aim_stream(data: bytes) -> dict:
    """A streamed `aim up` response as one tree, decoded with Aim's own decoder."""
    from aim.storage.treeutils import decode_tree

    records = aim_stream_records(data)
    return decode_tree(iter(records)) if records else {}


def same_float(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.fixture
def aim_repo(tmp_path) -> Path:
    return tmp_path / "aim"


def copy_store(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
