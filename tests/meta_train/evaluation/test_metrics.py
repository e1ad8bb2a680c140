"""Definitions in metrics.py and tuning.py, on hand-made curves."""

import math

import numpy as np

from meta_train.evaluation import metrics
from meta_train.evaluation.tuning import choose_lr


def test_trailing_mean():
    np.testing.assert_allclose(metrics.trailing_mean(np.array([4.0, 2.0, 0.0, 2.0]), 2),
                               [4.0, 3.0, 1.0, 1.0])


def test_steps_to_reach_and_speedup():
    curve = np.linspace(10.0, 1.0, 10)  # 10, 9, ..., 1
    assert metrics.steps_to_reach(curve, 5.0, 1) == 6
    assert metrics.steps_to_reach(curve, 0.5, 1) is None
    assert metrics.steps_to_reach(curve, math.nan, 1) is None
    assert metrics.speedup(10, 5) == 2.0 and metrics.speedup(10, None) is None


def test_divergence():
    runs = np.array([[1.0, 0.5, 0.4], [1.0, 3.0, 3.0], [1.0, np.nan, 0.1], [1.0, 1.5, 1.9]])
    assert metrics.diverged(runs, 1, 2.0).tolist() == [False, True, True, False]


def test_outcome_band():
    # band = max(1% of 1.0, pooled std 0.05) = 0.05
    assert metrics.outcome(0.9, 0.05, False, 1.0, 0.05, False, 0.01) == "win"
    assert metrics.outcome(0.97, 0.05, False, 1.0, 0.05, False, 0.01) == "tie"
    assert metrics.outcome(1.1, 0.05, False, 1.0, 0.05, False, 0.01) == "loss"
    assert metrics.outcome(0.5, 0.0, True, 1.0, 0.0, False, 0.01) == "loss"
    assert metrics.outcome(2.0, 0.0, False, 1.0, 0.0, True, 0.01) == "win"


def test_choose_lr_skips_unstable_points():
    c = choose_lr(np.array([3.0, 1.0, 0.5, np.nan]), np.array([False, False, True, True]))
    assert c.index == 1 and not c.at_grid_edge and not c.all_diverged
    c = choose_lr(np.array([3.0, 1.0]), np.array([False, False]))
    assert c.index == 1 and c.at_grid_edge
    c = choose_lr(np.array([3.0, 2.0]), np.array([True, True]))
    assert c.index == 1 and c.all_diverged
