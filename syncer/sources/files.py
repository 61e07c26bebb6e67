"""Local MLflow file stores (`mlruns/` folders, `file:` URIs).

What changed is decided from `stat` first (`file_stat`): a round looks at the experiment
folders (a new run folder changes its experiment folder), the RUNNING runs that have not gone
quiet, and the run folders that file events named (`ListingAsk.paths`); a full listing stats
every run folder, the safety net for changes no event reported. `meta.yaml` is read only
for a run whose stat digest moved, its params, tags and inputs only when the pipeline needs
them (`load_details`), with MLflow's own `FileStore` code, so stores written by MLflow 1.x/2.x
read as MLflow reads them. Metric files are tailed from a byte offset up to the last complete
line: a round never re-reads history.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RunUnreadable, StoreError, StoreUnavailable, one_line
from . import file_meta
from .base import Changes, ListingAsk, ReadStats, Source
from .cursors import Cursor, FileCursor
from .entities import artifact_repo_fetch, artifact_repo_list, datasets_from_inputs, experiment_from
from .file_metrics import read_metric_file
from .file_stat import META_PARTS, WRITE_ONCE_PARTS, RunFacts, experiments_mark, mtime_ns, tree_stats
from .location import StoreLocation
from .records import AnyRun, ArtifactFile, BrokenRun, Experiment, LoggedModel, MetricChunk, RunRecord, fingerprint
from .uri import is_local_store, local_path

log = logging.getLogger(__name__)

_RESERVED = {"tags", "datasets", "traces", "models", "meta.yaml", ".trash"}


@dataclass
class _Known:
    """What the last look at a run folder found."""

    run_dir: Path
    facts: RunFacts
    record: AnyRun
    # broken by a metric or artifact file name that is not UTF-8: the stat digest does not cover
    # those names, so such a run is checked again at each look (it is not looked at every round)
    bad_names: bool = False


def not_utf8(names: Iterable[str]) -> list[str]:
    """The names (file names as Python reads them) that are not UTF-8, shown with their odd
    bytes escaped (`bad\\xff`): Aim, the state and the logs store names as UTF-8."""
    bad = []
    for name in names:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            bad.append(os.fsencode(name).decode("utf-8", "backslashreplace"))
    return bad


def _names_error(bad: list[str]) -> str:
    shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    return f"file names that are not UTF-8 (Aim keeps names as UTF-8): {shown}; rename them"


class FileStoreSource(Source):
    """A local MLflow file store (`mlruns/`), with metric files tailed from a byte offset."""

    kind = "file"
    cursor_type = FileCursor

    def __init__(
        self,
        location: StoreLocation,
        reads: ReadStats,
        *,
        must_exist: bool = True,
        stop: threading.Event | None = None,
        workspaces: tuple[str, ...] = (),
    ):
        super().__init__(location, reads, stop, workspaces)
        assert location.path is not None
        self.root = location.path.resolve()
        if not self.root.exists():
            if must_exist:
                raise StoreError(f"no MLflow store at {self.root}: the folder does not exist")
            raise StoreUnavailable(f"waiting for the MLflow store folder {self.root} to appear")
        if not self.root.is_dir():
            raise StoreError(
                f"{self.root} is a file, not an MLflow store folder (for a database use sqlite:///{self.root})"
            )
        if not self._looks_like_store():
            if not must_exist and not any(self.root.iterdir()):
                raise StoreUnavailable(f"waiting for MLflow to write its first run into {self.root}")
            raise StoreError(f"{self.root} is not an MLflow file store (no <experiment>/meta.yaml inside)")
        # MLflow's own FileStore (and MLflow's import) only where this reader meets something unusual
        self.internals = file_meta.FileStoreInternals(self.root)
        self._known: dict[str, _Known] = {}  # run id -> the last look at its folder
        self._infos: dict[str, file_meta.RunMeta] = {}  # run id -> its meta.yaml as last read
        self._exp_mtime: dict[str, int | None] = {}  # experiment id -> its folder's mtime then
        self._exps: tuple[str, list[Experiment]] | None = None  # (experiments_mark, what MLflow said)
        self._models: Any = None  # the logged models' reader (it keeps a cache), made when first asked

    def _looks_like_store(self) -> bool:
        try:
            for entry in os.scandir(self.root):
                if entry.name == ".trash" and entry.is_dir():
                    return True
                if entry.is_dir() and os.path.exists(os.path.join(entry.path, "meta.yaml")):
                    return True
        except OSError as e:
            raise StoreError(f"cannot read {self.root}: {e.strerror}") from None
        return False

    # -- file events -------------------------------------------------------------------------
    def _named(self, paths: Iterable[str]) -> tuple[set[str], set[str]]:
        """The run folders and experiment folders these paths (of file events) lie in."""
        runs: set[str] = set()
        exps: set[str] = set()
        for p in paths:
            try:
                parts = Path(p).resolve().relative_to(self.root).parts
            except ValueError:
                continue
            if parts and parts[0] == ".trash":
                parts = parts[1:]
            if len(parts) >= 3 or (len(parts) == 2 and parts[1] not in _RESERVED):
                runs.add(parts[1])
                exps.add(parts[0])
            elif parts:
                exps.add(parts[0])
        return runs, exps

    # -- experiments and runs ----------------------------------------------------------------
    def list_experiments(self) -> list[Experiment]:
        """MLflow's experiments, read again only when their folders' stats moved (MLflow's
        reader lists every run folder of every experiment: a cost that grows with the store)."""
        mark = experiments_mark(self.root)  # taken before reading: a change meanwhile shows next round
        if self._exps is not None and self._exps[0] == mark:
            return list(self._exps[1])
        self.reads.count(requests=1)
        try:
            exps = self.internals.experiments()
        except Exception as e:  # whatever MLflow's reader raises, as one line
            raise StoreError(f"cannot read MLflow file store {self.root}: {one_line(e)}") from None
        self._exps = (mark, [experiment_from(e) for e in exps])
        return list(self._exps[1])

    def _experiment_dir(self, experiment_id: str) -> Path:
        live = self.root / experiment_id
        return live if live.is_dir() else self.root / ".trash" / experiment_id

    def changes(self, experiments: list[Experiment], ask: ListingAsk) -> Changes:
        """The runs of these experiments that may have changed since the last round (all of
        them on a full listing), each stat'ed, `meta.yaml` read only where the stat moved."""
        runs, exps = self._named(ask.paths)
        out: list[AnyRun] = []
        # a quick round's candidates: the runs file events named and those last seen RUNNING and
        # not quiet (few, whatever the store's size); each kept below only if in this experiment's folder
        candidates = runs | ask.lively
        for exp in experiments:
            exp_dir = self._experiment_dir(exp.id)
            mtime = mtime_ns(exp_dir)
            relist = ask.full or exp.id in ask.moved
            if relist or exp.id in exps or self._exp_mtime.get(exp.id, -1) != mtime:
                self._exp_mtime[exp.id] = mtime
                dirs = self._run_dirs(exp_dir)
            else:
                dirs = [
                    self._known[rid].run_dir
                    for rid in sorted(candidates)
                    if rid in self._known
                    and self._known[rid].run_dir.parent == exp_dir
                    and (rid in runs or self._is_live(rid, ask))
                ]
            for run_dir in dirs:
                self.check_stop()
                if relist or run_dir.name in runs or self._is_live(run_dir.name, ask):
                    rec = self._look(exp, run_dir)
                    if rec is not None:
                        out.append(rec)
        return Changes(out, named=runs)

    def _is_live(self, run_id: str, ask: ListingAsk) -> bool:
        """A run worth a stat every round: RUNNING and not gone quiet, or not seen yet, or not
        readable yet."""
        known = self._known.get(run_id)
        if known is None:
            return True
        rec = known.record
        return isinstance(rec, RunRecord) and rec.running and not rec.deleted and run_id not in ask.quiet

    def _run_dirs(self, exp_dir: Path) -> list[Path]:
        self.reads.count(requests=1)
        try:
            entries = sorted(os.scandir(exp_dir), key=lambda e: e.name)
        except OSError:
            return []
        return [Path(e.path) for e in entries if e.name not in _RESERVED and e.is_dir()]

    def _look(self, exp: Experiment, run_dir: Path) -> RunRecord | BrokenRun | None:
        """The run in this folder: from the last look when its stat digest did not move."""
        self.reads.count(runs_listed=1)
        try:
            facts = RunFacts.of(run_dir, experiment=exp)
        except FileNotFoundError:
            return None  # no meta.yaml (yet): not a run folder
        except OSError as e:
            return BrokenRun(run_dir.name, exp.id, f"{type(e).__name__}: {one_line(e)}")
        self.reads.count(requests=facts.stats)
        known = self._known.get(run_dir.name)
        if known is not None and known.facts.meta == facts.meta and not known.bad_names:
            if isinstance(known.record, BrokenRun):
                return known.record  # still the same unreadable folder: not read again
            rec = known.record
            rec.metric_marks = facts.marks
        else:
            try:
                rec = self._read_meta(exp, run_dir, facts)
            except Exception as e:  # a corrupt meta.yaml, an unreadable file: this run only
                broken = BrokenRun(run_dir.name, exp.id, f"{type(e).__name__}: {one_line(e)}")
                self._known[run_dir.name] = _Known(run_dir, facts, broken)
                return broken
        art_dir = self._artifact_dir(rec)
        art_files = tree_stats(art_dir) if art_dir is not None else []
        bad = not_utf8([f"metrics/{k}" for k in facts.marks] + [f"artifacts/{p}" for p, _s, _m in art_files])
        if bad:  # this run only, until they are renamed
            broken = BrokenRun(run_dir.name, exp.id, f"RunUnreadable: {_names_error(bad)}")
            self._known[run_dir.name] = _Known(run_dir, facts, broken, bad_names=True)
            return broken
        # file_stat.artifacts_mark, from the listing made for the names
        rec.artifacts_mark = None if art_dir is None else fingerprint(art_files)
        self._known[run_dir.name] = _Known(run_dir, facts, rec)
        return rec

    def _read_meta(self, exp: Experiment, run_dir: Path, facts: RunFacts) -> RunRecord:
        self.reads.count(runs_read=1, requests=1)
        info = self.internals.run_info(run_dir)
        if info is None or not getattr(info, "run_id", None):
            raise RunUnreadable("meta.yaml has no run id")
        if info.run_id != run_dir.name:
            raise RunUnreadable(f"meta.yaml names run {info.run_id}, folder is {run_dir.name}")
        if str(info.experiment_id) != exp.id:  # a run folder moved between experiments (`mv`)
            raise RunUnreadable(
                f"meta.yaml names experiment {info.experiment_id} but the run folder is in experiment "
                f"{exp.id}'s folder (moved by hand?); MLflow cannot read it there either: move it back "
                f"into {self.root / str(info.experiment_id)}"
            )
        # names of params, tags, inputs and outputs (read when the digest moved, as now)
        parts = META_PARTS + WRITE_ONCE_PARTS
        bad = not_utf8(f"{sub}/{path}" for sub in parts for path, _s, _m in tree_stats(run_dir / sub))
        if bad:
            raise RunUnreadable(_names_error(bad))
        self._infos[info.run_id] = info  # load_details reads the run's params and tags with it
        rec = RunRecord(
            run_id=info.run_id,
            experiment_id=exp.id,
            name=info.run_name or info.run_id,
            status=info.status,
            start_time=info.start_time,
            end_time=info.end_time,
            lifecycle_stage=info.lifecycle_stage,
            user=info.user_id,
            artifact_uri=info.artifact_uri,
            params={},
            tags={},
            datasets=[],
            metric_marks=facts.marks,
            fingerprint=facts.meta,
            details_loaded=False,
        )
        if not info.run_name or not info.user_id:  # stores of MLflow 1.x keep these in tags
            self._load_tags(rec, run_dir)
            rec.name = info.run_name or rec.tags.get("mlflow.runName") or info.run_id
            rec.user = info.user_id or rec.tags.get("mlflow.user")
        return rec

    def _load_tags(self, run: RunRecord, run_dir: Path) -> None:
        run.tags = self.internals.tags(run_dir)
        self.reads.count(requests=len(run.tags))

    def load_details(self, run: RunRecord) -> None:
        """Params, tags and inputs of one run (read only when its metadata changed)."""
        if run.details_loaded:
            return
        run_dir = self._run_dir(run)
        try:
            info = self._infos.pop(run.run_id, None) or self.internals.run_info(run_dir)
            self._load_tags(run, run_dir)
            run.params = self.internals.params(run_dir)
        except Exception as e:  # a tag or param file MLflow cannot read (not UTF-8, gone): this run only
            raise RunUnreadable(f"cannot read its params or tags: {type(e).__name__}: {one_line(e)}") from None
        self.reads.count(requests=len(run.params))
        try:
            run.datasets = datasets_from_inputs(self.internals.inputs(run_dir, info))
        except Exception as e:  # stores older than MLflow 2.4 have no inputs
            log.debug("no inputs for run %s: %s", info.run_id, e)
            run.datasets = []
        run.details_loaded = True

    # -- metrics -----------------------------------------------------------------------------
    def _run_dir(self, run: RunRecord) -> Path:
        known = self._known.get(run.run_id)  # the folder the listing found (a run's keys: no stat each)
        return known.run_dir if known is not None else self._experiment_dir(run.experiment_id) / run.run_id

    def read_metric(self, run: RunRecord, key: str, cursor: Cursor | None) -> Iterator[tuple[MetricChunk, Cursor]]:
        path = Path(os.path.join(self._run_dir(run), "metrics", key))
        start = cursor if isinstance(cursor, FileCursor) else FileCursor()
        self.reads.count(histories=1, requests=1)
        done = start
        for chunk, done in read_metric_file(path, key, start):
            self.reads.count(points=len(chunk))
            yield chunk, done
        if done.tail and not run.running:
            log.warning(
                "run %s metric %r ends in an incomplete line (%d bytes): it is read once completed",
                run.run_id,
                key,
                done.tail,
            )

    # -- artifacts ---------------------------------------------------------------------------
    def _artifact_dir(self, run: RunRecord) -> Path | None:
        """The run's local artifact folder. A store copied from another machine (rsync of
        mlruns/) records artifact paths that no longer exist: fall back to <run>/artifacts."""
        recorded = local_path(run.artifact_uri) if run.artifact_uri and is_local_store(run.artifact_uri) else None
        if recorded is not None and recorded.is_dir():
            return recorded
        beside = self._experiment_dir(run.experiment_id) / run.run_id / "artifacts"
        if beside.is_dir() or recorded is not None:
            return beside
        return None  # a remote artifact store (s3:, gs:, ...): ask MLflow

    def list_artifacts(self, run: RunRecord) -> list[ArtifactFile]:
        root = self._artifact_dir(run)
        self.reads.count(requests=1)
        if root is None:
            return artifact_repo_list(run, tracking_uri=self.root.as_uri())
        from .local_artifacts import list_local_artifacts

        files, warnings = list_local_artifacts(root)
        for w in warnings:
            log.warning("run %s: %s", run.run_id, w)
        return files

    def logged_models(self, run: RunRecord) -> list[LoggedModel]:
        from .logged_models import FileStoreModels

        if self._models is None:
            self._models = FileStoreModels(self.internals)
        models: list[LoggedModel] = self._models.of(run, self._run_dir(run))
        return models

    def fetch_artifact(self, run: RunRecord, path: str, dst_dir: str) -> str:
        root = self._artifact_dir(run)
        if root is None:
            return artifact_repo_fetch(run, path, dst_dir, tracking_uri=self.root.as_uri())
        return str(root / path)
