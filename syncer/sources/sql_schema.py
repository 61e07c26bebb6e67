"""MLflow's SQL schema as the SQL source reads it, behind a guard.

The tables come from MLflow's own SQLAlchemy models (`mlflow.store.tracking.dbmodels.models`),
so a query names columns the way MLflow defines them. `COLUMNS` lists every column the source
reads and `INDEXES` the indexes its queries count on; tests/test_sql_schema.py fails loudly when
an installed MLflow changes either, or its newest schema revision is not `KNOWN_HEAD` (then
re-read the new migrations and update this file).

A database is opened read-only (sqlite: `mode=ro` and `query_only`; PostgreSQL and MySQL: a
read-only session), and refused with one line when it is not an MLflow database, or was
written by an older or a newer MLflow than the installed one.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from ..errors import StoreError
from ..redact import redact
from . import mlflow_compat
from .uri import local_path

# the newest schema revision of the MLflow this was written against (mlflow 3.17)
KNOWN_HEAD = "dc11669786a5"

COLUMNS: dict[str, tuple[str, ...]] = {
    "experiments": ("experiment_id", "name", "lifecycle_stage"),
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
    ("metrics", ("run_uuid", "key", "step")),
    ("latest_metrics", ("run_uuid",)),
    ("tags", ("run_uuid",)),
    ("params", ("run_uuid",)),
)


@dataclass(frozen=True)
class SqlTables:
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
    logged_models: Any
    logged_model_params: Any
    logged_model_tags: Any
    logged_model_metrics: Any


def tables() -> SqlTables:
    """MLflow's own Table objects for what the source reads."""
    from mlflow.store.tracking.dbmodels import models as m

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
        logged_models=m.SqlLoggedModel.__table__,
        logged_model_params=m.SqlLoggedModelParam.__table__,
        logged_model_tags=m.SqlLoggedModelTag.__table__,
        logged_model_metrics=m.SqlLoggedModelMetric.__table__,
    )


def schema_problems() -> list[str]:
    """What differs between the installed MLflow's models and what this file expects."""
    t = tables()
    problems = []
    for name, cols in COLUMNS.items():
        table = getattr(t, name)
        missing = [c for c in cols if c not in table.c]
        if table.name != name or missing:
            problems.append(f"table {name}: missing {missing or table.name}")
    for name, cols in INDEXES:
        table = getattr(t, name)
        have = [tuple(c.name for c in ix.columns) for ix in table.indexes]
        have.append(tuple(c.name for c in table.primary_key.columns))
        if cols not in have:
            problems.append(f"table {name}: no index on {cols}")
    return problems


def latest_revision() -> str:
    return mlflow_compat.latest_schema_revision()


def known_revisions() -> set[str]:
    return mlflow_compat.schema_revisions()


def open_read_only(uri: str) -> tuple[Any, SqlTables]:
    """A read-only SQLAlchemy engine on an MLflow database, and its tables. Raises StoreError
    (one line) for anything that is not an MLflow database of the installed MLflow's schema."""
    from sqlalchemy import create_engine, event, text

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
    else:
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

    try:
        with engine.connect() as con:
            names = set(_table_names(con))
            if "runs" not in names or "alembic_version" not in names:
                raise StoreError(f"{shown} is not an MLflow database (it has no MLflow tables; nothing was changed)")
            rev = con.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except StoreError:
        engine.dispose()
        raise
    except Exception as e:
        engine.dispose()
        from .mlflow_errors import mlflow_error

        raise mlflow_error(uri, e) from None
    head = latest_revision()
    if rev != head:
        engine.dispose()
        if rev in known_revisions():
            raise StoreError(
                f"the MLflow database {shown} has an older schema ({rev}) than the installed MLflow "
                f"reads ({head}): upgrade it with `mlflow db upgrade` (after a backup), or sync "
                f"through an MLflow server of its version"
            )
        raise StoreError(
            f"the MLflow database {shown} was written by a newer MLflow (schema {rev}, unknown to the "
            f"installed MLflow): upgrade mlflow where the syncer runs"
        )
    return engine, tables()


def _table_names(con: Any) -> list[str]:
    from sqlalchemy import inspect

    return list(inspect(con).get_table_names())
