"""MLflow 3 logged models of one run, for each kind of store, as `base.LoggedModel` records:
the models it logged as outputs (`log_model(..., step=S)`: Trainer checkpoints; every
`log_model` in a run) and, on SQL stores and servers, also those that only name it as their
source run (`initialize_logged_model(source_run_id=...)` without an output), with their step,
status, params, tags, linked metrics (and their dataset), and flavors (from the model's `MLmodel`
file, read once per model).

- file stores: `FileStoreModels(internals).of(run, run_dir)`: the run's `outputs/` folder gives
  its models and steps (a file store keeps no index from runs to the models naming them),
  MLflow's `FileStore.get_logged_model` reads each, again only when the model's folder moved;
- SQL stores: `sql_logged_models(engine, run)`: MLflow's own tables (`SqlLoggedModel*`,
  `SqlInput` for the outputs), read-only, four queries (none in a database of MLflow < 3.0);
- servers: `client_logged_models(client, run)`: `search_logged_models` for the run's experiment
  filtered on `source_run_id`, and the run's outputs.
"""

from __future__ import annotations

import logging
import os
import tempfile
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from .file_stat import model_stats
from .local_artifacts import read_regular
from .records import LoggedModel, ModelMetric, RunRecord
from .sql_schema import COLUMNS
from .uri import is_local_store, local_path

log = logging.getLogger(__name__)

MLMODEL_MAX_BYTES = 1 << 20
_RUN_OUTPUT, _MODEL_OUTPUT = "RUN_OUTPUT", "MODEL_OUTPUT"


def from_entity(m: Any, step: int | None, flavors: list[str]) -> LoggedModel:
    """An `mlflow.entities.LoggedModel` as our record."""
    status = getattr(m.status, "value", m.status)
    return LoggedModel(
        model_id=m.model_id,
        name=m.name,
        run_id=m.source_run_id,
        step=step,
        status=None if status is None else str(status),
        artifact_location=m.artifact_location,
        creation_time=m.creation_timestamp,
        flavors=flavors,
        params=dict(m.params or {}),
        tags=dict(m.tags or {}),
        metrics=[
            ModelMetric(x.key, x.value, x.step, x.timestamp, x.dataset_name, x.dataset_digest, x.run_id)
            for x in (m.metrics or [])
        ],
        model_type=m.model_type,
    )


class Flavors:
    """Flavor names of logged models, from their `MLmodel` file, remembered once the model is
    finalized (its files no longer change). `executor`: where a server's artifact repository
    downloads (one that carries the caller's MLflow workspace; see `http_calls`)."""

    def __init__(self, tracking_uri: str | None = None, executor: Executor | None = None):
        self.tracking_uri = tracking_uri
        self.executor = executor
        self._known: dict[str, list[str]] = {}

    def of(self, model_id: str, artifact_location: str | None, status: str | None) -> list[str]:
        if model_id in self._known:
            return self._known[model_id]
        try:
            flavors = self._read(artifact_location)
        except Exception as e:  # a missing or unreadable MLmodel: no flavors listed
            log.debug("no MLmodel for logged model %s: %s", model_id, e)
            flavors = []
        if status in ("READY", "FAILED"):
            self._known[model_id] = flavors
        return flavors

    def _read(self, location: str | None) -> list[str]:
        import yaml

        if not location:
            return []
        if is_local_store(location):
            path = local_path(location)
            if path is None:
                return []
            data = read_regular(path / "MLmodel", MLMODEL_MAX_BYTES)
        elif self.executor is not None:
            from .mlflow_compat import artifact_repository

            repo = artifact_repository(location.rstrip("/"), self.tracking_uri, self.executor)
            with tempfile.TemporaryDirectory(prefix="syncer-mlmodel-") as tmp:
                data = read_regular(repo.download_artifacts("MLmodel", tmp), MLMODEL_MAX_BYTES)
        else:
            import mlflow.artifacts

            with tempfile.TemporaryDirectory(prefix="syncer-mlmodel-") as tmp:
                got = mlflow.artifacts.download_artifacts(
                    artifact_uri=location.rstrip("/") + "/MLmodel", dst_path=tmp, tracking_uri=self.tracking_uri
                )
                data = read_regular(got, MLMODEL_MAX_BYTES)
        doc = yaml.safe_load(data) or {}
        return sorted(doc.get("flavors") or {}) if isinstance(doc, dict) else []


# -- file stores ---------------------------------------------------------------------------------
class FileStoreModels:
    """The logged models of file-store runs; a model's folder is read again only when it moved."""

    def __init__(self, internals: Any):
        self.internals = internals  # file_meta.FileStoreInternals (its MLflow FileStore made when first asked)
        self.flavors = Flavors()
        self._seen: dict[str, tuple[Any, LoggedModel]] = {}  # model id -> (stat digest, record)

    def of(self, run: RunRecord, run_dir: Path) -> list[LoggedModel]:
        """`run_dir`: the run's folder (`<store>/<experiment>/<run id>`)."""
        out = []
        for model_id, step in sorted(_outputs(run_dir / "outputs").items()):
            model_dir = run_dir.parent / "models" / model_id
            digest = model_stats(model_dir)
            seen = self._seen.get(model_id)
            if seen is not None and seen[0] == digest and seen[1].step == step:
                out.append(seen[1])
                continue
            try:
                m = self.internals.store.get_logged_model(model_id)
            except Exception as e:  # a model folder deleted or half-written: next round
                log.debug("logged model %s of run %s cannot be read: %s", model_id, run.run_id, e)
                continue
            status = str(getattr(m.status, "value", m.status))
            rec = from_entity(m, step, self.flavors.of(model_id, m.artifact_location, status))
            self._seen[model_id] = (digest, rec)
            out.append(rec)
        return out


def _outputs(folder: Path) -> dict[str, int | None]:
    """model id -> step, from a run's `outputs/<model id>/meta.yaml` (MLflow's `log_outputs`)."""
    import yaml

    out: dict[str, int | None] = {}
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return out
    for e in entries:
        try:
            doc = yaml.safe_load(read_regular(Path(e.path) / "meta.yaml", MLMODEL_MAX_BYTES)) or {}
        except (OSError, yaml.YAMLError):
            continue
        step = doc.get("step") if isinstance(doc, dict) else None
        out[e.name] = int(step) if isinstance(step, int) else None
    return out


# -- SQL stores ----------------------------------------------------------------------------------
def model_marks_query(t: Any, ids: list[str]) -> Any:
    """(run id, then what the logged models it produced look like: how many, when one was last
    updated, how many metrics and the latest) for these runs: a score another run logs to one
    later is in the model's rows, not this run's. One query (databases of MLflow >= 3.0)."""
    from sqlalchemy import func, select

    lm, lmm = t.logged_models, t.logged_model_metrics
    return (
        select(
            lm.c.source_run_id,
            func.count(func.distinct(lm.c.model_id)),
            func.max(lm.c.last_updated_timestamp_ms),  # a status or tag set moves it
            func.count(lmm.c.model_id),
            func.max(lmm.c.metric_timestamp_ms),
        )
        .select_from(lm.outerjoin(lmm, lmm.c.model_id == lm.c.model_id))
        .where(lm.c.source_run_id.in_(ids))
        .group_by(lm.c.source_run_id)
    )


def sql_logged_models(engine: Any, t: Any, run: RunRecord, flavors: Flavors | None = None) -> list[LoggedModel]:
    """The run's logged models from MLflow's own tables (`t`: `sql_schema.SqlTables`), through a
    (read-only) SQLAlchemy engine; [] for a database of MLflow < 3.0 (no such tables). Only the
    columns `sql_schema.COLUMNS` names are read (a newer MLflow's database may have more)."""
    from sqlalchemy import or_, select

    if not t.has_logged_models:
        return []
    lm, lp, lt, lmm = t.logged_models, t.logged_model_params, t.logged_model_tags, t.logged_model_metrics
    inp = t.inputs
    flavors = flavors or Flavors()
    model_cols = [lm.c[c] for c in COLUMNS["logged_models"]]
    metric_cols = [lmm.c[c] for c in COLUMNS["logged_model_metrics"]]
    with engine.connect() as con:
        steps: dict[str, int | None] = {}
        if t.has_input_steps:
            steps = {
                mid: step
                for mid, step in con.execute(
                    select(inp.c.destination_id, inp.c.step).where(
                        inp.c.source_type == _RUN_OUTPUT,
                        inp.c.source_id == run.run_id,
                        inp.c.destination_type == _MODEL_OUTPUT,
                    )
                )
            }
        rows = list(
            con.execute(
                select(*model_cols)
                .where(
                    or_(lm.c.source_run_id == run.run_id, lm.c.model_id.in_(list(steps))),
                    lm.c.lifecycle_stage != "deleted",
                )
                .order_by(lm.c.creation_timestamp_ms, lm.c.model_id)
            )
        )
        ids = [r.model_id for r in rows]
        params: dict[str, dict[str, str]] = {i: {} for i in ids}
        tags: dict[str, dict[str, str]] = {i: {} for i in ids}
        metrics: dict[str, list[ModelMetric]] = {i: [] for i in ids}
        if ids:
            for mid, k, v in con.execute(
                select(lp.c.model_id, lp.c.param_key, lp.c.param_value).where(lp.c.model_id.in_(ids))
            ):
                params[mid][k] = v
            for mid, k, v in con.execute(
                select(lt.c.model_id, lt.c.tag_key, lt.c.tag_value).where(lt.c.model_id.in_(ids))
            ):
                tags[mid][k] = v
            for r in con.execute(
                select(*metric_cols)
                .where(lmm.c.model_id.in_(ids))
                .order_by(lmm.c.metric_timestamp_ms, lmm.c.metric_step)
            ):
                metrics[r.model_id].append(
                    ModelMetric(
                        r.metric_name,
                        r.metric_value,
                        r.metric_step,
                        r.metric_timestamp_ms,
                        r.dataset_name,
                        r.dataset_digest,
                        r.run_id,
                    )
                )
    out = []
    if rows:  # (MLflow's import: only for a run that has logged models)
        from mlflow.entities import LoggedModelStatus
    for r in rows:
        status = str(LoggedModelStatus.from_int(r.status))
        out.append(
            LoggedModel(
                model_id=r.model_id,
                name=r.name,
                run_id=r.source_run_id,
                step=steps.get(r.model_id),
                status=status,
                artifact_location=r.artifact_location,
                creation_time=r.creation_timestamp_ms,
                flavors=flavors.of(r.model_id, r.artifact_location, status),
                params=params[r.model_id],
                tags=tags[r.model_id],
                metrics=metrics[r.model_id],
                model_type=r.model_type,
            )
        )
    return out


# -- servers -------------------------------------------------------------------------------------
def client_logged_models(
    client: Any, run: RunRecord, flavors: Flavors | None = None, outputs: dict[str, int | None] | None = None
) -> list[LoggedModel]:
    """The run's logged models through `MlflowClient` (an http(s) server, or any store);
    `outputs`: its model outputs (model id -> step) when a listing gave them already."""
    flavors = flavors or Flavors(getattr(client, "tracking_uri", None))
    found: dict[str, Any] = {}
    token = None
    while True:
        page = client.search_logged_models(
            experiment_ids=[run.experiment_id],
            max_results=100,
            page_token=token,
            filter_string=f"source_run_id = '{run.run_id}'",
        )
        found.update((m.model_id, m) for m in page)
        token = page.token
        if not token:
            break
    if outputs is None:
        got = getattr(client.get_run(run.run_id), "outputs", None)
        outputs = {o.model_id: o.step for o in (getattr(got, "model_outputs", None) or [])}
    steps = outputs
    for model_id in steps:
        if model_id not in found:
            try:
                found[model_id] = client.get_logged_model(model_id)
            except Exception as e:  # an output whose model was deleted
                log.debug("logged model %s of run %s cannot be read: %s", model_id, run.run_id, e)
    out = []
    for m in sorted(found.values(), key=lambda m: (m.creation_timestamp or 0, m.model_id)):
        status = str(getattr(m.status, "value", m.status))
        out.append(from_entity(m, steps.get(m.model_id), flavors.of(m.model_id, m.artifact_location, status)))
    return out
