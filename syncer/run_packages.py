"""The packages a run ran with, from the files it logged, for Aim's `__system_params.packages`:

1. a `requirements.txt` at the root of the run's artifacts (pip format: what `training/` logs);
2. the environment files of the models the run logged: `requirements.txt`, `python_env.yaml`,
   `conda.yaml` beside an `MLmodel` in the run's artifacts (MLflow 2), or in an MLflow 3 logged
   model's own folder.

The first file naming a package gives its version. Files are fetched through the source (its
`fetch_artifact`, a model's folder given as the artifact root), small ones only
(`MAX_ENV_FILE_BYTES`); what was read is remembered: a run's file by its size, a finished model's
files for good."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import replace
from typing import Any

from .errors import one_line
from .mapping.system_params import MAX_ENV_FILE_BYTES, MODEL_FILE, REQUIREMENTS_FILES, merge_packages, parse_env_file
from .sources import RunRecord, Source
from .sources.local_artifacts import read_regular
from .sources.records import LoggedModel
from .sources.uri import is_local_store, local_path

log = logging.getLogger(__name__)

RUN_REQUIREMENTS = "requirements.txt"
_FINAL = ("READY", "FAILED")  # a logged model in these states no longer changes


class RunPackages:
    def __init__(self, source: Source):
        self.source = source
        self._files: dict[tuple[str, str, int | None], dict[str, str]] = {}  # (run, path, size) -> pins
        self._models: dict[str, list[tuple[str, dict[str, str]]]] = {}  # finished model id -> its files' pins

    def of(
        self, run: RunRecord, listed: list[dict[str, Any]], models: list[LoggedModel] | None, errors: list[str]
    ) -> tuple[dict[str, str], list[str]]:
        """({name: version}, the files that named any) from the run's listed artifacts and its
        MLflow 3 logged models; ({}, []) when it logged none of those files."""
        found: list[tuple[str, dict[str, str]]] = []
        sizes = {a["path"]: a.get("size") for a in listed}
        for path in self._run_files(sizes):
            pins = self._run_file(run, path, sizes[path], errors)
            if pins is not None:
                found.append((path, pins))
        for model in models or []:
            found.extend(self._model_files(run, model, errors))
        return merge_packages(found)

    @staticmethod
    def _run_files(sizes: dict[str, int | None]) -> list[str]:
        """The run's requirements file, then its MLflow 2 models' environment files (by folder)."""
        out = [RUN_REQUIREMENTS] if RUN_REQUIREMENTS in sizes else []
        folders = sorted(p[: -len(MODEL_FILE)] for p in sizes if p == MODEL_FILE or p.endswith("/" + MODEL_FILE))
        for folder in folders:
            out.extend(p for p in (folder + name for name in REQUIREMENTS_FILES) if p in sizes and p not in out)
        return [p for p in out if (sizes[p] or 0) <= MAX_ENV_FILE_BYTES]

    def _run_file(self, run: RunRecord, path: str, size: int | None, errors: list[str]) -> dict[str, str] | None:
        key = (run.run_id, path, size)
        if key not in self._files:
            text = self._fetch(run, path, errors)
            if text is None:
                return None
            self._files[key] = parse_env_file(path, text)
        return self._files[key]

    def _model_files(self, run: RunRecord, model: LoggedModel, errors: list[str]) -> list[tuple[str, dict[str, str]]]:
        if model.model_id in self._models:
            return self._models[model.model_id]
        location = model.artifact_location
        if not location:
            return []
        if is_local_store(location):
            folder = local_path(location)
            if folder is None or not folder.is_dir():  # a store copied from elsewhere: not here
                return []
        at = replace(run, artifact_uri=location)
        out = []
        for name in REQUIREMENTS_FILES:
            text = self._fetch(at, name, errors, missing_ok=True)
            if text is not None:
                out.append((f"models/{model.name or model.model_id}/{name}", parse_env_file(name, text)))
        if model.status in _FINAL:
            self._models[model.model_id] = out
        return out

    def _fetch(self, run: RunRecord, path: str, errors: list[str], *, missing_ok: bool = False) -> str | None:
        try:
            with tempfile.TemporaryDirectory(prefix="syncer-env-") as tmp:
                data = read_regular(self.source.fetch_artifact(run, path, tmp), MAX_ENV_FILE_BYTES)
        except Exception as e:  # any store's failure: no packages from this file
            if missing_ok:  # a model's file it may not have (each store says "missing" its own way)
                log.debug("run %s: no %s for its packages: %s", run.run_id, path, one_line(e))
            else:
                errors.append(f"artifact {path!r} cannot be read for the run's packages: {one_line(e)}")
            return None
        return data.decode("utf-8", errors="replace")
