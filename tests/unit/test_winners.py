"""Aim keeps one value per step: the later point by timestamp wins (on a tie, the later logged)."""

from __future__ import annotations

import pytest
from syncer.sink import aim_run_hash, winners


@pytest.mark.parametrize(
    ("steps", "values", "timestamps", "want"),
    [
        ([], [], [], ([], [], [])),
        ([0, 1, 2], [1.0, 2.0, 3.0], [10, 20, 30], ([0, 1, 2], [1.0, 2.0, 3.0], [10, 20, 30])),
        ([1, 1], [1.0, 2.0], [20, 10], ([1], [1.0], [20])),  # the earlier-logged point is later in time
        ([1, 1], [1.0, 2.0], [10, 10], ([1], [2.0], [10])),  # a tie: the later logged
        ([2, 0, 2, 1], [1.0, 2.0, 3.0, 4.0], [5, 6, 7, 8], ([0, 2, 1], [2.0, 3.0, 4.0], [6, 7, 8])),
    ],
)
def test_one_point_per_step_the_later_wins(steps, values, timestamps, want):
    assert winners(steps, values, timestamps) == want


def test_an_mlflow_run_has_one_aim_hash_everywhere():
    assert aim_run_hash("abc") == aim_run_hash("abc") != aim_run_hash("abd")
    assert len(aim_run_hash("abc")) == 24 and int(aim_run_hash("abc"), 16) >= 0
