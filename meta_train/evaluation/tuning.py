"""Choosing a baseline's learning rate per task: the best final train loss among stable LRs.

An LR point is unstable if any seed diverged there (`metrics.diverged`); among the stable
points the lowest seed-mean final train loss wins (ties: the first, i.e. the smaller LR). If
every point diverged, the lowest finite mean is taken (the run is then reported as diverged).
A choice at either end of a grid of more than one point is flagged: the grid may be too narrow.
`lopt evaluate` then adds points past that end, one grid spacing at a time (`next_edge_lr`,
`EvaluationConfig.extend_lr_grid`), so a baseline reported as tuned is not one stopped by its grid.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class LRChoice:
    index: int
    at_grid_edge: bool
    all_diverged: bool


def choose_lr(final_mean: np.ndarray, diverged_any: np.ndarray) -> LRChoice:
    """final_mean[L]: seed-mean final train loss per LR; diverged_any[L]: any seed diverged."""
    final_mean = np.asarray(final_mean, np.float64)
    stable = ~np.asarray(diverged_any) & np.isfinite(final_mean)
    candidates = stable if stable.any() else np.isfinite(final_mean)
    if not candidates.any():
        index = 0
    else:
        index = int(np.argmin(np.where(candidates, final_mean, np.inf)))
    n = len(final_mean)
    return LRChoice(index, n > 1 and index in (0, n - 1), not stable.any())


def next_edge_lr(grid: list[float], chosen: float, spacing: float) -> float | None:
    """The LR one grid spacing past the end of `grid` where `chosen` lies, or None when the choice
    is inside the grid (or the grid has a single point: no spacing, nothing to extend)."""
    if len(grid) < 2 or spacing <= 1.0:
        return None
    i = int(np.argmin(np.abs(np.log(np.asarray(grid, np.float64)) - np.log(chosen))))
    if i == len(grid) - 1:
        return float(grid[-1] * spacing)
    if i == 0:
        return float(grid[0] / spacing)
    return None
