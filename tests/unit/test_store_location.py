"""A tracking URI is parsed once: its kind of store, its local path, the identity cursors are
stored under, how it is shown; and MLflow's failures become errors the daemon knows what to do
with."""

from __future__ import annotations

from pathlib import Path

import pytest
from syncer.errors import RetryLater, StoreError, StoreReadFailed, StoreUnavailable
from syncer.sources import ReadStats, StoreLocation
from syncer.sources.mlflow_errors import mlflow_error


@pytest.mark.parametrize(
    ("uri", "kind", "path"),
    [
        ("logs/mlruns", "file", Path("logs/mlruns")),
        ("file:///tmp/x/mlruns", "file", Path("/tmp/x/mlruns")),
        ("sqlite:///mlflow.db", "sql", Path("mlflow.db")),
        ("sqlite:////abs/mlflow.db", "sql", Path("/abs/mlflow.db")),
        ("postgresql://u:pw@db:5432/mlflow", "sql", None),
        ("postgresql+psycopg://u:pw@db/mlflow", "sql", None),
        ("mysql://u:pw@db/mlflow", "sql", None),
        ("http://127.0.0.1:5000", "http", None),
        ("https://alice:s3cret@mlflow.example.com/", "http", None),
    ],
)
def test_a_tracking_uri_is_parsed_once(uri, kind, path):
    loc = StoreLocation.parse(uri)
    assert (loc.kind, loc.path) == (kind, path)
    assert "pw" not in loc.display and "s3cret" not in loc.display and "pw" not in loc.identity


def test_spellings_of_one_local_store_share_an_identity(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    same = {StoreLocation.parse(u).identity for u in ("mlruns", "./mlruns", (tmp_path / "mlruns").as_uri())}
    assert same == {f"file://{tmp_path / 'mlruns'}"}
    assert StoreLocation.parse("sqlite:///m.db").identity == f"sqlite://{tmp_path / 'm.db'}"
    assert StoreLocation.parse("http://h:5000/").identity == "http://h:5000"


@pytest.mark.parametrize("uri", ["", "sqlte:///x.db", "ftp://host/x", "s3://bucket/mlruns"])
def test_a_uri_of_no_known_kind_is_refused_in_one_line(uri):
    with pytest.raises(StoreError) as e:
        StoreLocation.parse(uri)
    assert "\n" not in str(e.value)


def _rest(code: str) -> Exception:
    from mlflow.exceptions import RestException

    return RestException({"error_code": code, "message": "m"})


@pytest.mark.parametrize(
    ("failure", "answered", "want"),
    [
        (ConnectionRefusedError(), False, StoreUnavailable),
        (TimeoutError(), True, StoreUnavailable),
        (_rest("TEMPORARILY_UNAVAILABLE"), False, StoreUnavailable),  # a server starting (503)
        (_rest("INTERNAL_ERROR"), True, StoreUnavailable),  # 500 from the server itself
        (_rest("RESOURCE_DOES_NOT_EXIST"), False, StoreError),  # the first answer: bad input
        (_rest("RESOURCE_DOES_NOT_EXIST"), True, StoreReadFailed),  # after answering: retried
        (ValueError("not JSON"), False, StoreError),
        (ValueError("not JSON"), True, StoreReadFailed),
    ],
)
def test_mlflow_failures_are_told_apart_by_what_the_daemon_does(failure, answered, want):
    err = mlflow_error("http://u:pw@h:5000", failure, answered=answered)
    assert type(err) is want and "pw" not in str(err)
    assert isinstance(err, RetryLater) is (want is not StoreError)


def test_read_counters_add_up_and_start_again():
    a = ReadStats()
    a.count(requests=2, rows=10)
    b = ReadStats(full=True, points=5, requests=1)
    a.add(b)
    assert (a.requests, a.rows, a.points, a.full) == (3, 10, 5, False)  # a worker's reads: counts only
    assert a["requests"] == 3 and a.as_dict()["rows"] == 10
    a.reset(full=True)
    assert a.as_dict() == ReadStats(full=True).as_dict()
    with pytest.raises(KeyError):
        a["nothing"]
