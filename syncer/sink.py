"""Everything that writes Aim. Opens (or creates) the Aim run for an MLflow run under a
deterministic hash, writes metric points with MLflow's timestamps, converts artifacts,
archives. Aim's internals are touched only through `aim_adapter`."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .mapping import MappedMetric

log = logging.getLogger(__name__)


class SinkError(Exception):
    """The Aim repo cannot be used (unwritable, not a repo, locked)."""


def aim_run_hash(run_id: str) -> str:
    """The Aim run hash of an MLflow run: the same on every sync, on every machine."""
    return hashlib.sha256(f"mlflow-run:{run_id}".encode()).hexdigest()[:24]


def repo_root(path: str | os.PathLike) -> Path:
    """`logs/.aim` and `logs` name the same repo."""
    p = Path(path).expanduser()
    return p.parent if p.name == ".aim" else p


def open_repo(path: str | os.PathLike, attempts: int = 20) -> tuple[Any, bool]:
    """The Aim repo at `path`, created when missing. Returns (repo, created).

    Several syncers may start at once on one new repo (one per experiment set): Aim's index is
    a RocksDB that one process at a time may hold while creating it, so a lock is retried."""
    from aim import Repo

    root = repo_root(path).resolve()
    created = not (root / ".aim").is_dir()
    delay = 0.1
    for attempt in range(attempts):
        try:
            root.mkdir(parents=True, exist_ok=True)
            if not os.access(root, os.W_OK) or (not created and not os.access(root / ".aim", os.W_OK)):
                raise PermissionError(13, "Permission denied")
            return Repo.from_path(str(root), init=created or not _schema_ready(root)), created
        except PermissionError:
            raise SinkError(f"the Aim repo {root} is not writable") from None
        except OSError as e:
            raise SinkError(f"cannot open the Aim repo {root}: {e.strerror or e}") from None
        except Exception as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            if "lock" in msg.lower() and attempt < attempts - 1:
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            raise SinkError(f"cannot open the Aim repo {root}: {msg}") from None
    raise AssertionError("unreachable")


MAX_STEP = 2**53  # Aim keys points by a hash of the step as a double: larger steps collide


def _schema_ready(root: Path) -> bool:
    """Whether Aim's run-metadata DB got its schema. A repo whose creation was cut short (a
    SIGKILL while Aim's migration ran) has none; opening it with init=True heals it (Aim's
    init is idempotent, but it runs the migration in a subprocess: seconds, so not always)."""
    db = root / ".aim" / "run_metadata.sqlite"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            return con.execute("SELECT version_num FROM alembic_version").fetchone() is not None
    except sqlite3.Error:
        return False


def winners(steps: list[int], values: list[float], timestamps: list[int]) -> tuple[list[int], list[float], list[int]]:
    """One point per step: the later by timestamp wins (on a tie, the later logged)."""
    best: dict[int, int] = {}
    for i, (s, t) in enumerate(zip(steps, timestamps)):
        j = best.get(s)
        if j is None or t >= timestamps[j]:
            best[s] = i
    if len(best) == len(steps):
        return steps, values, timestamps
    idx = sorted(best.values())
    return [steps[i] for i in idx], [values[i] for i in idx], [timestamps[i] for i in idx]


IMAGE_EXT = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
TEXT_EXT = {".txt", ".log", ".json", ".jsonl", ".yaml", ".yml", ".md", ".csv", ".tsv", ".py",
            ".cfg", ".ini", ".toml", ".sh", ".rst", ".xml", ".sql", ".ipynb"}
AUDIO_EXT = {".wav", ".mp3", ".flac", ".ogg"}


def artifact_kind(path: str) -> str | None:
    ext = os.path.splitext(path)[1].lower()
    if ext in IMAGE_EXT:
        return "image"
    if ext in TEXT_EXT:
        return "text"
    if ext in AUDIO_EXT:
        return "audio"
    return None


def aim_object(kind: str, local_file: str, path: str):
    """An aim.Image / aim.Text / aim.Audio for a local file."""
    import aim

    if kind == "image":
        from PIL import Image as PILImage

        with PILImage.open(local_file) as im:
            im.load()
            return aim.Image(im.copy(), caption=path)
    if kind == "text":
        with open(local_file, "rb") as f:
            return aim.Text(f.read().decode("utf-8", "replace"))
    if kind == "audio":
        with open(local_file, "rb") as f:
            return aim.Audio(f.read(), format=os.path.splitext(path)[1].lstrip(".").lower(), caption=path)
    raise ValueError(kind)


@dataclass
class RunMeta:
    experiment: str
    name: str
    description: str | None
    params: dict[str, Any]  # everything under run[...] keys: hparams, mlflow, tags, datasets, artifacts
    labels: list[str]
    archived: bool
    created_at: float  # seconds
    ended_at: float | None
    active: bool


class RunSink:
    """One Aim run, open for writing."""

    def __init__(self, repo, aim_hash: str, experiment: str):
        from . import aim_adapter  # imported late: `syncer --help` should not load Aim

        self.hash = aim_hash
        self._system_name = aim_adapter.system_metric_name
        try:
            self.writer = aim_adapter.AimRunWriter.open(repo, aim_hash, experiment=experiment)
        except Exception as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            if "lock" in msg.lower():
                raise SinkError(f"Aim run {aim_hash} is locked by another writer: {msg}") from None
            raise

    def set_info(self, meta: RunMeta) -> None:
        self.writer.set_info(
            name=meta.name, description=meta.description, params=meta.params,
            labels=meta.labels, archived=meta.archived,
        )

    def set_times(self, meta: RunMeta) -> None:
        self.writer.set_times(created_at=meta.created_at, ended_at=meta.ended_at, active=meta.active)

    def flush(self) -> None:
        """Make what was written durable before the caller commits its cursors."""
        self.writer.flush()

    def write_points(self, mapped: MappedMetric, steps: list[int], values: list[float],
                     timestamps_ms: list[int]) -> tuple[int, int]:
        """Write points (MLflow timestamps in ms). Returns (distinct steps written, points
        skipped because Aim cannot key their step: beyond +-2**53)."""
        skipped = 0
        if any(not -MAX_STEP <= st <= MAX_STEP for st in steps):
            keep = [i for i, st in enumerate(steps) if -MAX_STEP <= st <= MAX_STEP]
            skipped = len(steps) - len(keep)
            steps, values, timestamps_ms = ([xs[i] for i in keep] for xs in (steps, values, timestamps_ms))
            if not steps:
                return 0, skipped
        steps, values, timestamps_ms = winners(steps, values, timestamps_ms)
        name = self._system_name(mapped.name) if mapped.system else mapped.name
        self.writer.write_points(name, mapped.context, steps, values, [t / 1000.0 for t in timestamps_ms])
        return len(steps), skipped

    def write_artifact(self, kind: str, local_file: str, path: str, timestamp: float) -> None:
        obj = aim_object(kind, local_file, path)
        self.writer.write_objects(path, {"kind": kind}, 0, timestamp, obj)

    def close(self, index: bool = True) -> None:
        """Close the run; with index=False it stays invisible until `index_runs` is called."""
        self.writer.close(index=index)

    # a sink kept open between rounds (the daemon, for a RUNNING run): its points are readable
    # by other processes after each flush; the run index is refreshed by `refresh_index`
    def index_due(self, max_age: float) -> bool:
        return self.writer.index_due(max_age)


def refresh_index(sinks: list[RunSink], max_age: float) -> list[str]:
    """Refresh the run-index entry of the open sinks that need it (a new run, changed metadata or
    a new sequence: now; only new points: at most every `max_age` s), in one pass over the index.
    Returns the hashes that could not be indexed now (the index is busy; retried later)."""
    from . import aim_adapter

    due = [s.writer for s in sinks if s.index_due(max_age)]
    return [w.hash for w in aim_adapter.index_writers(due)] if due else []


def close_sinks(sinks: list[RunSink]) -> list[str]:
    """Close several open sinks, indexing those that need it in one pass (every sink is closed
    even when one fails). Returns the hashes not indexed now (`aim up` or the next start does)."""
    from . import aim_adapter

    return aim_adapter.close_writers([s.writer for s in sinks]) if sinks else []


def heal_index(repo) -> list[str]:
    """Index runs that a killed writer left invisible to Aim's queries and UI (once, at start)."""
    from . import aim_adapter

    return aim_adapter.index_missing(repo)


def index_runs(repo, hashes: list[str]) -> list[str]:
    """Make closed runs visible to Aim's queries and UI at once; returns those not indexed."""
    from . import aim_adapter

    return aim_adapter.index_runs(repo, hashes)


def set_experiment_meta(repo, name: str, description: str | None) -> None:
    if description:
        from . import aim_adapter

        try:
            aim_adapter.set_experiment_description(repo, name, description)
        except (sqlite3.Error, AttributeError) as e:  # not fatal: the runs carry the data
            log.warning("could not set the description of Aim experiment %r: %s", name, e)


def summarize_repo(path: str | os.PathLike) -> list[dict[str, Any]]:
    """What landed, read back through Aim's public SDK: per experiment, its runs and, per metric
    name, the contexts it has (e.g. accuracy by lang)."""
    from aim import Repo

    repo = Repo(str(repo_root(path)))
    exps: dict[str, dict[str, Any]] = {}
    try:
        for run in repo.iter_runs():
            exp = exps.setdefault(run.experiment or "(none)", {"experiment": run.experiment or "(none)",
                                                               "runs": [], "metrics": {}, "points": 0})
            exp["runs"].append(run.name + (" (archived)" if run.archived else ""))
            for name, context, _ in run.iter_metrics_info():  # run.metrics() skips archived runs
                m = run.get_metric(name, context)
                exp["metrics"].setdefault(m.name, set()).add(tuple(sorted(m.context.to_dict().items())))
                steps, _ = m.data.numpy()
                exp["points"] += len(steps)
    finally:
        repo.close()
    return sorted(exps.values(), key=lambda e: e["experiment"])
