"""Tests for pipeline.metrics on small hand-computed accuracy matrices."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.metrics import first_task_forgetting, forgetting, seen_average_per_row

NAN = float("nan")

# rows: after training task r; columns: accuracy on task c (NaN = not seen yet)
MATRIX = np.array(
    [
        [90.0, NAN, NAN],
        [80.0, 70.0, NAN],
        [85.0, 60.0, 50.0],
    ]
)


def test_forgetting():
    # task 0: max(90, 80) - 85 = 5; task 1: max(70) - 60 = 10
    np.testing.assert_allclose(forgetting(MATRIX), [5.0, 10.0])
    assert forgetting([[10.0]]).shape == (0,)
    # improvement gives negative forgetting
    np.testing.assert_allclose(forgetting([[50.0, NAN], [60.0, 70.0]]), [-10.0])


def test_forgetting_ignores_rows_before_the_task_was_learned():
    # acc[0,1] (task 1 before it was learned) must not count, even when it is high
    m = np.array([[90.0, 99.0], [80.0, 70.0]])
    np.testing.assert_allclose(forgetting(m), [10.0])
    m3 = np.array([[90.0, 99.0, 1.0], [80.0, 70.0, 99.0], [85.0, 60.0, 50.0]])
    np.testing.assert_allclose(forgetting(m3), [5.0, 10.0])


def test_first_task_forgetting():
    assert first_task_forgetting(MATRIX) == pytest.approx(5.0)
    assert first_task_forgetting([[70.0]]) == 0.0


def test_seen_average_per_row():
    np.testing.assert_allclose(seen_average_per_row(MATRIX), [90.0, 75.0, 65.0])


def test_validation():
    with pytest.raises(ValueError):
        forgetting(np.zeros(3))
    with pytest.raises(ValueError):
        forgetting(np.zeros((3, 2)))
    with pytest.raises(ValueError):
        forgetting(np.array([[NAN, NAN], [1.0, 2.0]]))
    with pytest.raises(ValueError):
        seen_average_per_row(np.zeros((0, 3)))
