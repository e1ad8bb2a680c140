"""Numbers read off loss curves: final loss, divergence, steps to a target, win/tie/loss.

Definitions (report.md repeats them):

* final train loss of a run: the mean minibatch train loss over its last `window` steps,
  window = max(1, round(final_fraction x steps)); smoothing makes it comparable across runs.
* diverged run: a non-finite train loss at any step, or a final train loss above
  `divergence_factor` x its loss at step 0. A diverged run counts as a loss.
* steps to reach a target: on the seed-mean train curve smoothed by the same trailing window,
  the first step (1-based count of steps taken) at which it is <= target; None if never.
  The target is tuned AdamW's final train loss, which AdamW itself reaches at step <= T.
* speedup = AdamW's steps to its own final loss / the optimizer's steps to that loss
  (> 1: faster than AdamW); None when the optimizer never reaches it.
* outcome against the reference: "loss" if the optimizer diverged; otherwise, with
  band = max(rel_tol x |ref|, sqrt((std^2 + ref_std^2) / 2)) (std over seeds of final losses),
  "win" if final < ref - band, "loss" if final > ref + band, else "tie". If the reference
  diverged and the optimizer did not, "win".
"""

from __future__ import annotations

import math

import numpy as np


def final_window(num_steps: int, final_fraction: float) -> int:
    return max(1, int(round(final_fraction * num_steps)))


def final_loss(train_loss: np.ndarray, window: int) -> np.ndarray:
    """Mean over the last `window` steps (last axis)."""
    return np.mean(train_loss[..., -window:], axis=-1)


def diverged(train_loss: np.ndarray, window: int, factor: float) -> np.ndarray:
    """Per run (all axes but the last): non-finite anywhere or final > factor x initial."""
    with np.errstate(invalid="ignore"):
        nonfinite = ~np.all(np.isfinite(train_loss), axis=-1)
        blew_up = final_loss(train_loss, window) > factor * train_loss[..., 0]
    return nonfinite | blew_up


def trailing_mean(curve: np.ndarray, window: int) -> np.ndarray:
    """out[t] = mean(curve[max(0, t - window + 1) : t + 1])."""
    csum = np.concatenate([[0.0], np.cumsum(curve, dtype=np.float64)])
    t = np.arange(1, len(curve) + 1)
    lo = np.maximum(0, t - window)
    return (csum[t] - csum[lo]) / (t - lo)


def steps_to_reach(mean_curve: np.ndarray, target: float, window: int) -> int | None:
    if not math.isfinite(target):
        return None
    with np.errstate(invalid="ignore"):
        hit = np.nonzero(trailing_mean(mean_curve, window) <= target * (1 + 1e-5))[0]
    return int(hit[0]) + 1 if len(hit) else None


def speedup(reference_steps: int | None, steps: int | None) -> float | None:
    if reference_steps is None or steps is None:
        return None
    return reference_steps / steps


def tie_band(ref_mean: float, ref_std: float, std: float, rel_tol: float) -> float:
    return max(rel_tol * abs(ref_mean), math.sqrt((std ** 2 + ref_std ** 2) / 2))


def outcome(mean: float, std: float, is_diverged: bool, ref_mean: float, ref_std: float,
            ref_diverged: bool, rel_tol: float) -> str:
    if is_diverged:
        return "loss"
    if ref_diverged:
        return "win"
    band = tie_band(ref_mean, ref_std, std, rel_tol)
    if mean < ref_mean - band:
        return "win"
    if mean > ref_mean + band:
        return "loss"
    return "tie"
