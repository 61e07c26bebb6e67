"""A run's artifacts and logged models, for the pipeline, one run at a time: list them, decide
what Aim can show and where (`mapping.media_names`), convert what is new (`media`), write it through
the sink, remember each file listed (`State.save_artifact`).

- step images (`mlflow.log_image(key=..., step=...)`): one Aim image sequence per key, one
  point per step at MLflow's timestamp (several images at one step: a list), the compressed
  twins left out;
- other images, texts, audio, tables (`log_table`), figures (svg, plotly): one sequence each,
  named from the path through the metric-key mapper, at step 0 with the run's time;
- MLflow 3 logged models: the `mlflow.logged_models` param, and their linked metrics that are
  not the run's own as `{model: <name>}` series; listed with the run's metadata and artifacts,
  written when they changed;
- the packages the run ran with, from its `requirements.txt` and its models' environment files
  (`run_packages`), for Aim's `__system_params`.

A file that cannot be converted is listed with `copied_as: None` and its `error`, and tried
again the next time the run's artifacts are listed."""

from __future__ import annotations

import fnmatch
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import Stopped, one_line
from .mapping import ContextMapper
from .mapping.collisions import resolve
from .mapping.media_names import Media, Target, full_size_of, media_of, targets
from .mapping.model_series import model_series, models_digest, models_param
from .run_packages import RunPackages
from .sink import RunSink
from .sources import RunRecord, Source
from .sources.records import LoggedModel
from .state import State


@dataclass
class Found:
    """What `Artifacts.find` found for one run; `Artifacts.write` writes what is new of it."""

    listed: list[dict[str, Any]] | None  # the `mlflow.artifacts` param (None: not listed this time)
    new: list[dict[str, Any]] = field(default_factory=list)  # listed entries not converted yet
    media: dict[str, Media] = field(default_factory=dict)  # path -> what it is
    targets: dict[str, Target] = field(default_factory=dict)  # owner -> its Aim sequence
    models: list[LoggedModel] | None = None  # None: not listed this time
    models_digest: str | None = None  # what they looked like (kept in the state)
    models_changed: bool = False
    revised: bool = False  # `write` changed an entry of `listed` (a file that could not be converted)
    packages: dict[str, str] | None = None  # {name: version} from the files it logged (None: not listed)
    packages_from: list[str] = field(default_factory=list)  # the files that gave them

    @property
    def changed(self) -> bool:
        return bool(self.new) or self.models_changed

    @property
    def models_param(self) -> list[dict[str, Any]] | None:
        return None if self.models is None else models_param(self.models)


class Artifacts:
    def __init__(self, source: Source, state: State, *, exclude: tuple[str, ...], max_bytes: int):
        self.source = source
        self.state = state
        self.exclude = exclude
        self.max_bytes = max_bytes
        self.packages = RunPackages(source)

    # -- finding -------------------------------------------------------------------------------
    def find(self, run: RunRecord, work: Any, errors: list[str], mapper: ContextMapper) -> Found:
        """`work`: the run's `plan.RunWork` (list_artifacts, meta_changed, cursors)."""
        found = self.listing(run, errors, mapper, known=set(work.cursors)) if work.list_artifacts else Found(None)
        found.new = self.new(run, found.listed)
        if work.meta_changed or work.list_artifacts:  # a new model or model metric moves the run's metadata
            found.models = self._models(run, errors)
            found.models_digest = models_digest(found.models)
            seen = work.prev.models_digest if work.prev is not None else None
            found.models_changed = found.models_digest != seen and (bool(found.models) or seen is not None)
        if found.listed is not None:
            found.packages, found.packages_from = self.packages.of(run, found.listed, found.models, errors)
        return found

    def listing(self, run: RunRecord, errors: list[str], mapper: ContextMapper, *, known: Iterable[str] = ()) -> Found:
        """Every artifact of the run not excluded, as the `mlflow.artifacts` param lists it (path, size,
        URI, what it is copied as and where to: `Found.listed`, None when the artifact store
        cannot be listed now), and what each medium is. `known`: the metric keys synced before."""
        try:
            files = self.source.list_artifacts(run)
        except Stopped:
            raise
        except Exception as e:  # any artifact store's failure: the metrics go on
            errors.append(f"cannot list artifacts: {one_line(e)}")
            return Found(None)
        files = [f for f in files if not self._excluded(f.path)]
        self.source.load_details(run)  # the tags say which files are tables
        media, left = media_of([f.path for f in files], run.tags)
        sizes = {f.path: f.size for f in files}
        too_big = {p for p in media if (sizes[p] or 0) > self.max_bytes}
        media = {p: m for p, m in media.items() if p not in too_big}
        done = self.state.artifacts(run.run_id)
        run_mapper = mapper.for_run(run.metric_marks)
        metrics = resolve(run_mapper, run.metric_marks, known=set(known))
        first = {m.owner for p, m in media.items() if p in done}
        where = targets(media.values(), run_mapper, [metrics.of(k) for k in run.metric_marks], first=first)
        recorded = _recorded_kinds(self.state, run.run_id)
        out = []
        for f in files:
            uri = f"{run.artifact_uri.rstrip('/')}/{f.path}" if run.artifact_uri else f.path
            entry: dict[str, Any] = {"path": f.path, "size": f.size, "uri": uri, "copied_as": None}
            m = media.get(f.path)
            if m is not None and m.owner in where:
                t = where[m.owner]
                entry["copied_as"] = recorded.get(f.path, m.kind) if f.path in done else m.kind
                entry.update({"name": t.name, "context": t.context, "step": m.step})
            elif m is not None:
                entry["note"] = "no Aim name left that a metric or another file does not hold"
            elif f.path in too_big:
                entry["note"] = "larger than --max-artifact-size"
            elif f.path in left:
                entry["note"] = left[f.path]
            out.append(entry)
        return Found(out, media=media, targets=where)

    def new(self, run: RunRecord, listed: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
        """The listed artifacts not yet converted (new, or changed size)."""
        if not listed:
            return []
        done = self.state.artifacts(run.run_id)
        return [a for a in listed if a["path"] not in done or done[a["path"]] != a["size"]]

    def _excluded(self, path: str) -> bool:
        """Matched by an --exclude-artifacts glob, by path or name; a step image's compressed
        twin goes with its full-size image (`*.png` leaves a run's step images out, twins too)."""
        name = path.rsplit("/", 1)[-1]
        if any(fnmatch.fnmatch(path, g) or fnmatch.fnmatch(name, g) for g in self.exclude):
            return True
        original = full_size_of(path) if self.exclude else None
        return original is not None and self._excluded(original)

    def _models(self, run: RunRecord, errors: list[str]) -> list[LoggedModel] | None:
        try:
            return self.source.logged_models(run)
        except Stopped:
            raise
        except Exception as e:  # any store's failure: the rest of the run goes on
            errors.append(f"cannot list logged models: {one_line(e)}")
            return None

    # -- writing -------------------------------------------------------------------------------
    def write(self, run: RunRecord, sink: RunSink, found: Found, errors: list[str], mapper: ContextMapper) -> int:
        """Convert and write the new media, then the models' metrics when they changed; remember
        every new file listed. Returns how many Aim objects were written."""
        n = self._write_media(run, sink, found, errors) if found.new else 0
        if found.models is not None and found.models_changed:
            names = mapper.for_run(run.metric_marks)
            for target, points in model_series(
                found.models, run_id=run.run_id, run_keys=set(run.metric_marks), name_of=names.map
            ):
                sink.write_points(target, [p[0] for p in points], [p[1] for p in points], [p[2] for p in points])
        return n

    def _write_media(self, run: RunRecord, sink: RunSink, found: Found, errors: list[str]) -> int:
        from .media import NotShown, aim_object, aim_objects

        run_ts = (run.end_time or run.start_time or time.time() * 1000) / 1000.0
        entries = {a["path"]: a for a in found.listed or []}
        groups: dict[tuple[str, int], list[str]] = defaultdict(list)  # (owner, step) -> paths at it
        for path, m in found.media.items():
            groups[(m.owner, m.step)].append(path)
        due = {
            (found.media[a["path"]].owner, found.media[a["path"]].step)
            for a in found.new
            if a["copied_as"] is not None and a["path"] in found.media
        }
        written = 0
        with tempfile.TemporaryDirectory(prefix="syncer-artifacts-") as tmp:
            for owner, step in sorted(due):
                target = found.targets[owner]
                objs, stamps = [], []
                for path in sorted(groups[(owner, step)], key=lambda p: (found.media[p].timestamp or 0, p)):
                    m, entry = found.media[path], entries[path]
                    try:
                        local = self.source.fetch_artifact(run, path, tmp)
                        obj, kind = aim_object(
                            m.kind, local, path, caption=m.key if m.step_image else path, max_bytes=self.max_bytes
                        )
                    except NotShown as e:
                        found.revised |= _revise(entry, None, note=str(e))
                        continue
                    except Stopped:
                        raise
                    except Exception as e:  # any decoder error of a user's file: listed only
                        errors.append(f"artifact {path!r} cannot be converted: {one_line(e)}")
                        found.revised |= _revise(entry, None, error=one_line(e))
                        continue
                    found.revised |= _revise(entry, kind)
                    objs.append(obj)
                    stamps.append(m.timestamp / 1000.0 if m.timestamp is not None else run_ts)
                if objs:
                    steps = found.media[groups[(owner, step)][0]].step_image
                    sink.write_media(target.name, target.context, step, max(stamps), aim_objects(objs, steps=steps))
                    written += 1
        for a in found.new:
            if a.get("error") is None:  # one that failed is tried again next time
                self.state.save_artifact(run.run_id, a["path"], a["size"], a["copied_as"])
        return written


def _revise(entry: dict[str, Any], kind: str | None, *, note: str | None = None, error: str | None = None) -> bool:
    """Set what a file was copied as (None, with a note or an error); whether that changed it."""
    before = dict(entry)
    entry["copied_as"] = kind
    for key, value in (("note", note), ("error", error)):
        if value is None:
            entry.pop(key, None)
        else:
            entry[key] = value
    if kind is None:
        for key in ("name", "context", "step"):
            entry.pop(key, None)
    return entry != before


def _recorded_kinds(state: State, run_id: str) -> dict[str, str | None]:
    """What each file already converted was copied as (a JSON file may have become a figure)."""
    kinds = getattr(state, "artifact_kinds", None)
    return kinds(run_id) if callable(kinds) else {}
