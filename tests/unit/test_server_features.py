"""What each MLflow version's server is asked for (syncer/sources/server_features.py): the
boundaries found in the release wheels' code and on real servers (2.0.1, 2.9.2, 2.16.2, 2.22.5,
3.17.2)."""

from __future__ import annotations

import logging

import pytest
from syncer.sources.server_features import ServerFeatures, requests_made


@pytest.mark.parametrize(
    ("version", "logged_models", "bulk_runs", "bulk_interval", "not_in"),
    [
        ((2, 1, 1), False, 0, False, False),
        ((2, 2, 0), False, 20, False, False),
        ((2, 3, 0), False, 20, False, True),
        ((2, 9, 2), False, 20, False, True),
        ((2, 10, 0), False, 20, False, True),
        ((2, 11, 0), False, 100, True, True),
        ((2, 16, 2), False, 100, True, True),
        ((2, 22, 5), False, 100, True, True),
        ((3, 0, 0), True, 100, True, True),
        ((3, 17, 2), True, 100, True, True),
    ],
)
def test_each_version_is_asked_only_what_it_has(version, logged_models, bulk_runs, bulk_interval, not_in):
    f = ServerFeatures.of_version(version)
    assert (f.logged_models, f.bulk_runs, f.bulk_interval, f.not_in) == (
        logged_models,
        bulk_runs,
        bulk_interval,
        not_in,
    )
    assert f.may_have_workspaces is (version >= (3, 10))
    assert requests_made(f) == (2 if version >= (3, 10) else 1)


def test_a_server_that_does_not_say_its_version_is_asked_what_every_2x_takes():
    f = ServerFeatures.of_version(None)
    assert (f.bulk_runs, f.not_in, f.may_have_workspaces) == (20, False, True)
    assert requests_made(f) == 5  # version, server-info, and the three endpoints probed


def test_what_a_server_lacks_is_said_in_one_line_at_info():
    level, line = ServerFeatures.of_version((2, 9, 2)).summary("http://mlflow:5000")
    assert level == logging.INFO and line.startswith("MLflow 2.9.2 at http://mlflow:5000; no logged models")
    assert "20 runs a request" in line and "get-history-bulk-interval" in line and "NOT IN" not in line
    level, line = ServerFeatures.of_version((3, 17, 2)).summary("http://mlflow:5000")
    assert (level, line) == (logging.DEBUG, "MLflow 3.17.2 at http://mlflow:5000")


def test_get_history_bulk_queries_stay_under_gunicorns_request_line_limit():
    """MLflow 2.x servers run gunicorn, which answers a request line over 4,094 bytes with a 400:
    100 run ids (what 2.11+ takes) alone are 4,000 bytes of query."""
    from urllib.parse import urlencode

    from syncer.sources.http_history import id_batches

    ids = [f"{i:032x}" for i in range(250)]
    for key, most in (("loss", 100), ("eval/" + "x" * 200, 100), ("loss", 20)):
        batches = list(id_batches(ids, key, most))
        assert [i for b in batches for i in b] == ids
        for b in batches:
            assert len(b) <= most
            line = "GET /ajax-api/2.0/mlflow/metrics/get-history-bulk?"
            line += urlencode({"run_id": b, "metric_key": key, "max_results": 25000}, doseq=True) + " HTTP/1.1"
            assert len(line) <= 4094, (key, most, len(b), len(line))
    assert [len(b) for b in id_batches(ids[:100], "loss", 100)] == [94, 6]
    assert [len(b) for b in id_batches(ids[:45], "loss", 20)] == [20, 20, 5]
