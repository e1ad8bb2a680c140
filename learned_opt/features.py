"""Input features of the per-parameter network: per-tensor normalization and global features.

Per-tensor features (gradient, momenta, ...) vary over orders of magnitude between tensors and
over training; dividing each feature channel by its root-mean-square over the tensor makes the
network see O(1) inputs everywhere (the "second moment normalizer" of learned_optimization).
Global features (training step, loss) are the same for every parameter.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

# Below this mean square a feature channel is treated as zero: gradients with RMS under 1e-8
# still produce O(1) inputs, exactly-zero ones stay zero instead of dividing by zero.
NORMALIZE_EPS = 1e-16
# Gradients are clipped to this magnitude before squaring so that g^2 and its sums over up to
# ~1e12 elements stay finite in f32 (a 1e30 gradient would otherwise overflow to inf).
GRAD_CLIP = 1e12
# Added to second moments before rsqrt: smaller than any square of a representable gradient
# that matters, so it only guards exact zeros (including underflowed 1e-30 gradients).
RSQRT_EPS = 1e-30
# A bare rsqrt feature is capped at this multiple of its value at the tensor's mean (see
# `capped_rsqrt`).
RSQRT_CAP = 10.0
# The Adam-like ratios (m * rsqrt(v), g and m * rsqrt of Adafactor's factored v) are clipped to
# this magnitude. Adam's own ratio stays under ~3 in practice, but the factored estimate can be
# far below an element's true g^2 (a row and a column that both went quiet): a network that
# reads the ratio unnormalized (normalize_adam_features=False) then got inputs of 1e3-1e6 and
# moved single weights by 1e3 in one step (mu_velo on a depth-8 MLP, docs/design_notes.md).
RATIO_CLIP = 10.0


def clip_ratio(x: jax.Array) -> jax.Array:
    """An Adam-like ratio feature clipped to [-RATIO_CLIP, RATIO_CLIP]."""
    return jnp.clip(x, -RATIO_CLIP, RATIO_CLIP)


class TensorFeatures(NamedTuple):
    """One tensor's features on its (R, C) view, grouped by how they vary over it.

    Per-row and per-column features (Adafactor's factored statistics) are kept as vectors: the
    fused network folds them into a per-row and a per-column bias instead of repeating their
    multiply-adds for every element. The network's input order is elementwise, rows, columns.
    """

    elementwise: list  # E arrays of shape (R, C)
    rows_KxR: jax.Array  # features constant along each row
    cols_KxC: jax.Array  # features constant along each column

    def broadcast(self) -> list[jax.Array]:
        """Every feature as an (R, C) array, in input order (for the stacked reference)."""
        shape = self.elementwise[0].shape
        return (
            list(self.elementwise)
            + [jnp.broadcast_to(r[:, None], shape) for r in self.rows_KxR]
            + [jnp.broadcast_to(c[None, :], shape) for c in self.cols_KxC]
        )


class FeatureScales(NamedTuple):
    """Tensor-wide means the features are defined relative to (computed once per tensor)."""

    row_mean_Ax1: jax.Array  # mean over rows of each Adafactor row statistic
    col_mean_Ax1: jax.Array  # mean over columns of each column statistic
    rms_mean: jax.Array  # mean of the second moment (on the normalizers' grid)


def capped_rsqrt(rsqrt_x: jax.Array, mean_x: jax.Array) -> jax.Array:
    """rsqrt(x), at most RSQRT_CAP times its value at the tensor's mean x.

    For a bare rsqrt feature only: an element that never had a gradient (a dead unit, an
    unused embedding row) has x = 0 and rsqrt(x) ~ 1e15, which would dominate its tensor's
    normalizer, or, on a grid that misses it, reach the network as a 1e9 input.
    """
    return jnp.minimum(rsqrt_x, RSQRT_CAP * jax.lax.rsqrt(mean_x + RSQRT_EPS))


def time_features(step: jax.Array, time_scales: tuple[float, ...]) -> jax.Array:
    """tanh(step / tau) for each time scale: where in training we are, bounded in [0, 1)."""
    scales = jnp.asarray(time_scales, jnp.float32)
    return jnp.tanh(step.astype(jnp.float32) / scales)


def loss_features(loss: jax.Array, loss_ema_L: jax.Array) -> jax.Array:
    """Relative change of the loss against its running averages, squashed to (-1, 1).

    Relative, so a loss scaled by a constant gives the same features.
    """
    loss = loss.astype(jnp.float32)
    return jnp.tanh((loss - loss_ema_L) / (jnp.abs(loss_ema_L) + 1e-8))


def log_remaining_fraction(count: jax.Array, num_steps: jax.Array) -> jax.Array:
    """log((T - t) / T), floored at log(1 / T): 0 at the start, log(1/T) at the last step.

    A learned power p of it gives the polynomial decay (1 - t/T)^p; the tanh fraction features
    saturate, so a bounded function of them cannot go to zero at the end, this can. Past T (a
    run longer than announced) it stays at the last step's value.
    """
    t = count.astype(jnp.float32)
    T = jnp.maximum(jnp.asarray(num_steps, jnp.float32), 1.0)
    return jnp.log(jnp.maximum(T - t, 1.0) / T)


def log_decay_to_end(power: jax.Array, count: jax.Array, num_steps: jax.Array) -> jax.Array:
    """max(power, 0) * log((T - t) / T): the log of a learned polynomial decay (1 - t/T)^p to the
    end of training (MLPLOpt's and VeLOLOpt's `schedule_decay`). A negative power is clamped to
    no decay, so a perturbation past 0 cannot turn it into growth."""
    return jnp.maximum(power, 0.0) * log_remaining_fraction(count, num_steps)


def log_adam_bias_correction(count: jax.Array, beta1: float, beta2: float) -> jax.Array:
    """log(sqrt(1 - beta2^t) / (1 - beta1^t)), t = count + 1 gradients seen: Adam's bias
    correction of m / sqrt(v) as a log step. EMAs that start at zero make the uncorrected ratio
    (1 - beta1^t) / sqrt(1 - beta2^t) times Adam's: 3.2x at step 1, 6.5x at step 10, 3.2x at
    step 100, 1.3x at step 1000 for (0.9, 0.999). A transformer LM cannot take those early
    steps at the step size it wants later (docs/design_notes.md)."""
    t = jnp.asarray(count, jnp.float32) + 1.0
    return 0.5 * jnp.log1p(-(beta2**t)) - jnp.log1p(-(beta1**t))


def log_horizon(num_steps: jax.Array) -> jax.Array:
    """0.5 log(T / 600): the length of training as an O(1) input for 100-4000 steps."""
    return 0.5 * jnp.log(jnp.maximum(jnp.asarray(num_steps, jnp.float32), 1.0) / 600.0)


def log_num_matrices(tree) -> float:
    """log(M / 3), M the number of leaves of 2 or more dimensions (at least 1): a model's depth
    as a static O(1) input, 0 for a 3-layer MLP. It counts weight tensors, so a transformer
    block's attention and MLP matrices count each."""
    num = sum(1 for leaf in jax.tree.leaves(tree) if jnp.ndim(leaf) >= 2)
    return math.log(max(num, 1) / 3.0)


def fraction_features(count: jax.Array, num_steps: jax.Array, offsets: tuple[float, ...]) -> jax.Array:
    """tanh(10 (t / T - x)) for each offset x (VeLO's fraction-of-training features).

    Each feature switches from -1 to +1 around the fraction x of the run, so a function of
    them can express warm-up, decay to the end and anything between, for any length T.
    """
    fraction = count.astype(jnp.float32) / jnp.maximum(jnp.asarray(num_steps, jnp.float32), 1.0)
    return jnp.tanh(10.0 * (fraction - jnp.asarray(offsets, jnp.float32)))
