"""MLflow's SQL schema as the SQL source reads it, behind a guard.

The tables are declared here (`COLUMNS`, typed as MLflow's own SQLAlchemy models in
`mlflow.store.tracking.dbmodels.models` type them: reading a database imports no MLflow), so a
query names columns the way MLflow defines them. `COLUMNS` lists every column the source reads
and `INDEXES` the indexes its queries count on; tests/test_sql_source.py fails loudly when an
installed MLflow changes either, a column's type, or its newest schema revision is not
`KNOWN_HEAD` (then re-read the new migrations and update this file).

A database of any schema revision is read from the tables and columns it actually has
(reflected when it is opened, a few catalog queries), not from a table of revisions: that reads
MLflow 2.0's databases as well as one a newer MLflow wrote (its revision unknown here), and
needs no entry per release. What an older MLflow did not have (`OPTIONAL`: dataset inputs before
2.4, logged models and input steps before 3.0, workspaces before 3.10) is read as absent; what
every MLflow database has had since before 2.0 (`REQUIRED`) must be there. A revision the
installed MLflow does not know is read with one warning naming it.

A database is opened read-only (sqlite: `mode=ro` and `query_only`; PostgreSQL and MySQL: a
read-only session), and refused with one line when it is not an MLflow database or lacks a
column every MLflow since 2.0 has.
"""

from __future__ import annotations

import logging
import multiprocessing
import sqlite3
from dataclasses import dataclass, replace
from typing import Any

from ..errors import BadInput, StoreError
from ..redact import redact
from . import mlflow_compat
from .records import DEFAULT_WORKSPACE
from .uri import local_path

log = logging.getLogger(__name__)

# the newest schema revision of the MLflow this was written against (mlflow 3.17)
KNOWN_HEAD = "dc11669786a5"

COLUMNS: dict[str, tuple[str, ...]] = {
    "experiments": ("experiment_id", "name", "lifecycle_stage", "workspace"),
    "experiment_tags": ("experiment_id", "key", "value"),
    "runs": (
        "run_uuid",
        "experiment_id",
        "name",
        "status",
        "start_time",
        "end_time",
        "deleted_time",
        "lifecycle_stage",
        "user_id",
        "artifact_uri",
    ),
    "metrics": ("run_uuid", "key", "timestamp", "step", "value", "is_nan"),
    "latest_metrics": ("run_uuid", "key", "timestamp", "step", "value", "is_nan"),
    "params": ("run_uuid", "key", "value"),
    "tags": ("run_uuid", "key", "value"),
    "inputs": ("input_uuid", "source_type", "source_id", "destination_type", "destination_id", "step"),
    "datasets": ("dataset_uuid", "name", "digest", "dataset_source_type", "dataset_source", "dataset_profile"),
    "input_tags": ("input_uuid", "name", "value"),
    "workspaces": ("name",),  # MLflow >= 3.10: the catalog (a workspace may have no experiment yet)
    # MLflow 3 logged models (sources/models.py)
    "logged_models": (
        "model_id",
        "name",
        "source_run_id",
        "status",
        "artifact_location",
        "creation_timestamp_ms",
        "last_updated_timestamp_ms",
        "lifecycle_stage",
        "model_type",
    ),
    "logged_model_params": ("model_id", "param_key", "param_value"),
    "logged_model_tags": ("model_id", "tag_key", "tag_value"),
    "logged_model_metrics": (
        "model_id",
        "metric_name",
        "metric_value",
        "metric_step",
        "metric_timestamp_ms",
        "dataset_name",
        "dataset_digest",
        "run_id",
    ),
}
# (table, columns in order): new points are found through these
INDEXES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("metrics", ("key", "timestamp", "step", "run_uuid", "value", "is_nan")),  # the primary key
    ("metrics", ("run_uuid", "key", "step")),  # MLflow >= 3.x (a5b4c3d2e1f0); 2.x: (run_uuid) alone
    ("latest_metrics", ("run_uuid",)),
    ("tags", ("run_uuid",)),
    ("params", ("run_uuid",)),
)
# every MLflow database has these tables, with their COLUMNS, since before 2.0
REQUIRED = ("experiments", "experiment_tags", "runs", "metrics", "latest_metrics", "params", "tags")
# what a database has only from some MLflow on: feature -> (what it is, the first MLflow with it,
# the parts of COLUMNS it needs); a database without them reads as having none
OPTIONAL: dict[str, tuple[str, str, dict[str, tuple[str, ...]]]] = {
    "datasets": ("dataset inputs", "2.4", {"inputs": COLUMNS["inputs"][:-1], "datasets": (), "input_tags": ()}),
    "logged_models": (
        "logged models",
        "3.0",
        {"logged_models": (), "logged_model_params": (), "logged_model_tags": (), "logged_model_metrics": ()},
    ),
    "input_steps": ("logged models' steps", "3.0", {"inputs": ("step",)}),
    "workspaces": ("workspaces", "3.10", {"experiments": ("workspace",), "workspaces": ()}),
}


@dataclass(frozen=True)
class SqlTables:
    """MLflow's Table objects for what the source reads, and what the database at hand has: a
    table of a feature it lacks is None (never queried)."""

    experiments: Any
    experiment_tags: Any
    runs: Any
    metrics: Any
    latest_metrics: Any
    params: Any
    tags: Any
    inputs: Any
    datasets: Any
    input_tags: Any
    workspaces: Any
    logged_models: Any
    logged_model_params: Any
    logged_model_tags: Any
    logged_model_metrics: Any
    revision: str | None = None  # the database's alembic revision (None: the installed MLflow's tables)
    has_workspaces: bool = True  # experiments.workspace (MLflow >= 3.10)
    has_datasets: bool = True  # inputs, datasets, input_tags (MLflow >= 2.4)
    has_input_steps: bool = True  # inputs.step (MLflow >= 3.0)
    has_logged_models: bool = True  # logged_model* (MLflow >= 3.0)
    # metrics(run_uuid, key, step) (MLflow 3.x, a5b4c3d2e1f0): without it the same queries find
    # the same points through the primary key (key, ...) or metrics(run_uuid), reading more rows
    has_run_key_step_index: bool = True

    def absent(self) -> list[str]:
        """The OPTIONAL features this database lacks."""
        return [f for f in OPTIONAL if not getattr(self, f"has_{f}")]


# the columns of COLUMNS that are not text, with their SQLAlchemy type (the rest are strings), as
# MLflow's models type them (tests/test_sql_source.py compares)
_TYPED: dict[str, dict[str, str]] = {
    **dict.fromkeys(("experiments", "experiment_tags"), {"experiment_id": "Integer"}),
    "runs": {"experiment_id": "Integer", **dict.fromkeys(("start_time", "end_time", "deleted_time"), "BigInteger")},
    "metrics": {"timestamp": "BigInteger", "step": "BigInteger", "value": "Float", "is_nan": "Boolean"},
    "inputs": {"step": "BigInteger"},
    "logged_models": {
        "status": "Integer",
        **dict.fromkeys(("creation_timestamp_ms", "last_updated_timestamp_ms"), "BigInteger"),
    },
    "logged_model_metrics": {"metric_step": "BigInteger", "metric_timestamp_ms": "BigInteger", "metric_value": "Float"},
}
_TYPED["latest_metrics"] = _TYPED["metrics"]
_TABLES: SqlTables | None = None


def tables() -> SqlTables:
    """The tables the source reads, declared here from COLUMNS and their types (SQLAlchemy Core,
    made once): MLflow's own models would import MLflow, a second of every start."""
    global _TABLES
    if _TABLES is None:
        import sqlalchemy as sa

        meta = sa.MetaData()

        def column(table: str, name: str) -> Any:
            kind = _TYPED.get(table, {}).get(name)
            return sa.Column(name, sa.Float(precision=53) if kind == "Float" else getattr(sa, kind or "Text")())

        declared: dict[str, Any] = {n: sa.Table(n, meta, *(column(n, c) for c in cols)) for n, cols in COLUMNS.items()}
        _TABLES = SqlTables(**declared)
    return _TABLES


def mlflow_tables() -> SqlTables:
    """MLflow's own Table objects for what the source reads (the installed MLflow's schema): what
    `tables()` must agree with."""
    from mlflow.store.tracking.dbmodels import models as m
    from mlflow.store.workspace.dbmodels.models import SqlWorkspace

    return SqlTables(
        experiments=m.SqlExperiment.__table__,
        experiment_tags=m.SqlExperimentTag.__table__,
        runs=m.SqlRun.__table__,
        metrics=m.SqlMetric.__table__,
        latest_metrics=m.SqlLatestMetric.__table__,
        params=m.SqlParam.__table__,
        tags=m.SqlTag.__table__,
        inputs=m.SqlInput.__table__,
        datasets=m.SqlDataset.__table__,
        input_tags=m.SqlInputTag.__table__,
        workspaces=SqlWorkspace.__table__,
        logged_models=m.SqlLoggedModel.__table__,
        logged_model_params=m.SqlLoggedModelParam.__table__,
        logged_model_tags=m.SqlLoggedModelTag.__table__,
        logged_model_metrics=m.SqlLoggedModelMetric.__table__,
    )


def schema_problems() -> list[str]:
    """What differs between the installed MLflow's models and what this file expects and declares."""
    t, ours = mlflow_tables(), tables()
    problems = []
    for name, cols in COLUMNS.items():
        table = getattr(t, name)
        missing = [c for c in cols if c not in table.c]
        if table.name != name or missing:
            problems.append(f"table {name}: missing {missing or table.name}")
        for c in cols:
            if c in table.c and table.c[c].type.python_type is not getattr(ours, name).c[c].type.python_type:
                problems.append(f"table {name}: {c} is {table.c[c].type!r} in MLflow's model, not as declared here")
    for name, cols in INDEXES:
        table = getattr(t, name)
        have = [tuple(c.name for c in ix.columns) for ix in table.indexes]
        have.append(tuple(c.name for c in table.primary_key.columns))
        if cols not in have:
            problems.append(f"table {name}: no index on {cols}")
    for feature, (_what, _since, parts) in OPTIONAL.items():
        stray = [f"{t}.{c}" for t, cs in parts.items() for c in cs if c not in COLUMNS[t]]
        problems += [f"{feature}: {x} is not in COLUMNS" for x in stray]
    return problems


def latest_revision() -> str:
    return mlflow_compat.latest_schema_revision()


def known_revisions() -> set[str]:
    return mlflow_compat.schema_revisions()


def open_read_only(uri: str) -> tuple[Any, SqlTables]:
    """A read-only SQLAlchemy engine on an MLflow database, and its tables as it has them.
    Raises StoreError (one line) for anything that is not an MLflow database the syncer can read."""
    from .mlflow_errors import answered_before, mlflow_error, note_answered

    engine = _engine(uri)
    try:
        with engine.connect() as con:
            found = _reflect(con, redact(uri))
    except StoreError:
        engine.dispose()
        raise
    except Exception as e:
        engine.dispose()
        raise mlflow_error(uri, e, answered=answered_before(uri)) from None
    note_answered(uri)
    _say_revision(redact(uri), found)
    return engine, found


def read_again_if_upgraded(engine: Any, t: SqlTables, uri: str) -> SqlTables:
    """The database's tables read again when its revision moved since (`mlflow db upgrade` while
    the syncer follows it: logged models, workspaces appear); `t` otherwise. One query."""
    from sqlalchemy import text

    with engine.connect() as con:
        if con.execute(text("SELECT version_num FROM alembic_version")).scalar() == t.revision:
            return t
        found = _reflect(con, redact(uri))
    log.info("the MLflow database %s moved from schema %s to %s", redact(uri), t.revision, found.revision)
    _say_revision(redact(uri), found)
    return found


def _engine(uri: str) -> Any:
    from sqlalchemy import create_engine, event

    shown = redact(uri)
    if uri.startswith("sqlite:"):
        path = local_path(uri)
        if path is None:
            raise StoreError(f"{shown}: only sqlite database files can be read (not in-memory databases)")
        if not path.is_file():
            raise StoreError(f"no MLflow database at {path} (from {shown})")
        if path.stat().st_size == 0:
            raise StoreError(f"{path} is empty, not an MLflow database (nothing was changed)")
        target = f"file:{path.resolve()}?mode=ro"
        engine = create_engine("sqlite://", creator=lambda: sqlite3.connect(target, uri=True, check_same_thread=False))

        @event.listens_for(engine, "connect")
        def _query_only(dbapi_con: Any, _record: Any) -> None:
            dbapi_con.execute("PRAGMA query_only = ON")

        return engine
    try:
        engine = create_engine(uri, pool_pre_ping=True, pool_size=2)
    except Exception as e:  # a bad URI or a missing driver
        raise StoreError(f"cannot use the database {shown}: {e}") from None
    statement = {
        "postgresql": "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
        "mysql": "SET SESSION TRANSACTION READ ONLY",
    }.get(engine.dialect.name)
    if statement:

        @event.listens_for(engine, "connect")
        def _read_only(dbapi_con: Any, _record: Any) -> None:
            cur = dbapi_con.cursor()
            cur.execute(statement)
            cur.close()
            dbapi_con.commit()

    return engine


def _reflect(con: Any, shown: str) -> SqlTables:
    """The tables, columns and indexes the database has (catalog queries only), as SqlTables."""
    from sqlalchemy import inspect, text

    insp = inspect(con)
    names = set(insp.get_table_names())
    if "runs" not in names or "alembic_version" not in names:
        raise StoreError(f"{shown} is not an MLflow database (it has no MLflow tables; nothing was changed)")
    rev = con.execute(text("SELECT version_num FROM alembic_version")).scalar()
    wanted = sorted(names & set(COLUMNS))
    reflected = insp.get_multi_columns(filter_names=wanted)  # one catalog query where the dialect can
    has = {name: {c["name"] for c in cols} for (_schema, name), cols in reflected.items()}
    missing = [t for t in REQUIRED if t not in has]
    missing += [f"{t}.{c}" for t in REQUIRED if t in has for c in _needed(t) if c not in has[t]]
    if missing:
        raise StoreError(_unreadable(shown, rev, missing))
    flags = {
        f"has_{feature}": all(name in has and set(cols) <= has[name] for name, cols in parts.items())
        for feature, (_what, _since, parts) in OPTIONAL.items()
    }
    flags["has_input_steps"] &= flags["has_datasets"]
    indexes = {tuple(ix["column_names"]) for ix in insp.get_indexes("metrics")}
    used = set(REQUIRED) | {name for f, (_w, _s, parts) in OPTIONAL.items() if flags[f"has_{f}"] for name in parts}
    absent: dict[str, Any] = {name: None for _w, _s, parts in OPTIONAL.values() for name in parts if name not in used}
    return replace(
        tables(),
        **absent,
        **flags,
        revision=rev,
        has_run_key_step_index=("run_uuid", "key", "step") in indexes,
    )


def _needed(table: str) -> tuple[str, ...]:
    """The columns of a REQUIRED table every MLflow database has (COLUMNS less OPTIONAL ones)."""
    later = {c for _what, _since, parts in OPTIONAL.values() for c in parts.get(table, ())}
    return tuple(c for c in COLUMNS[table] if c not in later)


def _unreadable(shown: str, rev: str | None, missing: list[str]) -> str:
    what = ", ".join(missing[:8]) + (" …" if len(missing) > 8 else "")
    if rev is not None and rev in known_revisions():
        return (
            f"the MLflow database {shown} (schema {rev}) lacks what the syncer reads ({what}): an MLflow "
            f"older than 2.0 wrote it; upgrade it with `mlflow db upgrade` (after a backup), or sync "
            f"through an MLflow server of its version"
        )
    return (
        f"the MLflow database {shown} was written by an MLflow the installed one does not know (schema "
        f"{rev}) and lacks what the syncer reads ({what}): sync through an MLflow server of its version"
    )


_SAID: set[tuple[str, str | None]] = set()  # (database, revision) said once per process


def _say_revision(shown: str, t: SqlTables) -> None:
    """One line per process (not in a backfill's worker processes: their parent said it) when the
    database is not of the installed MLflow's schema: a warning for a revision it does not know,
    an info line naming what an older one lacks."""
    if t.revision == KNOWN_HEAD or (shown, t.revision) in _SAID or multiprocessing.parent_process() is not None:
        return  # (the installed MLflow's head is KNOWN_HEAD: its revisions are read only for another)
    head = latest_revision()
    if t.revision == head:
        return
    _SAID.add((shown, t.revision))
    absent = [f for f in t.absent() if f != "input_steps" or t.has_logged_models]  # no models: no steps
    lacks = ", ".join(f"{OPTIONAL[f][0]} (MLflow >= {OPTIONAL[f][1]})" for f in absent)
    if t.revision not in known_revisions():
        log.warning(
            "the MLflow database %s has schema revision %s, which the installed MLflow (%s, schema %s) does "
            "not know (a newer MLflow wrote it?): reading it, as it has every column the syncer reads%s",
            shown,
            t.revision,
            _mlflow_version(),
            head,
            f"; without {lacks}" if lacks else "",
        )
    else:
        log.info(
            "the MLflow database %s has an older schema (%s) than the installed MLflow (%s): read as it is%s",
            shown,
            t.revision,
            head,
            f", without {lacks}" if lacks else "",
        )


def _mlflow_version() -> str:
    import mlflow

    return str(mlflow.__version__)


# -- workspaces (MLflow >= 3.10: experiments.workspace) ------------------------------------------
def experiments_query(t: SqlTables, workspaces: tuple[str, ...]) -> Any:
    """(id, name, lifecycle stage[, workspace]) of the experiments of these workspaces (all when
    none is named); the workspace only where the database has them. A database without
    workspaces holds the default one's experiments only (what MLflow 3.10's migration makes of them)."""
    from sqlalchemy import false, select, true

    e = t.experiments
    query = select(e.c.experiment_id, e.c.name, e.c.lifecycle_stage, *((e.c.workspace,) if t.has_workspaces else ()))
    if workspaces and t.has_workspaces:
        query = query.where(e.c.workspace.in_(workspaces))
    elif workspaces:
        query = query.where(true() if DEFAULT_WORKSPACE in workspaces else false())
    return query.order_by(e.c.experiment_id)


def check_workspaces(engine: Any, t: SqlTables, wanted: tuple[str, ...], shown: str, *, strict: bool) -> None:
    """The workspaces asked for must exist: BadInput when one does not and `strict` (a backfill),
    else one warning (a daemon: it may be made later, its experiments are synced then)."""
    from sqlalchemy import select

    if not wanted:
        return
    known = {DEFAULT_WORKSPACE}
    if t.has_workspaces:
        with engine.connect() as con:
            known |= set(con.execute(select(t.experiments.c.workspace).distinct()).scalars())
            known |= set(con.execute(select(t.workspaces.c.name)).scalars())
    missing = [w for w in wanted if w not in known]
    if not missing:
        return
    where = "" if t.has_workspaces else " (it has no workspaces: MLflow < 3.10; every experiment is in 'default')"
    msg = f"unknown MLflow workspace(s) in {shown}{where}: " + ", ".join(map(repr, missing))
    if strict:
        raise BadInput(f"{msg} (known: {', '.join(map(repr, sorted(known)[:10]))})")
    if (shown, tuple(missing)) not in _SAID_WS:
        _SAID_WS.add((shown, tuple(missing)))
        log.warning("%s: their experiments are synced once they exist", msg)


_SAID_WS: set[tuple[str, tuple[str, ...]]] = set()
