"""The antithetic core that PES and ES share: the noise, the +/- thetas and the scaled estimate.

Each pair runs theta + eps and theta - eps from one shared state, with the same task and batches,
so the loss difference L+ - L- measures theta's effect alone. A pair's estimate is
(L+ - L-) / (2 sigma^2) times a theta-shaped direction: ES credits this truncation's eps, PES
the sum of every eps of the episode. Only that direction differs between the two.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from meta_train import population, robust
from meta_train.unroll import TruncationOutput, UnrollConfig, UnrollState


def sample_noise(key: jax.Array, theta: Any, num_pairs: int, sigma: float, trainable) -> Any:
    """eps[pairs, ...] ~ N(0, sigma^2) like theta; parts not in `trainable` are exactly zero,
    so frozen parts are neither perturbed nor credited."""
    return robust.zero_frozen(robust.tree_sample_normal(key, theta, (num_pairs,), sigma), trainable)


def run_pairs(arch: Any, cfg: UnrollConfig, pool: Any, theta: Any, eps: Any, states: UnrollState):
    """One truncation with theta + eps in branch 0 and theta - eps in branch 1 of every pair."""
    signs = jnp.array([1.0, -1.0])
    thetas = jax.tree.map(
        lambda t, e: t[None, None] + signs.reshape(1, 2, *(1,) * t.ndim) * e[:, None], theta, eps
    )
    return population.run_population(arch, cfg, pool, thetas, states, theta_per_branch=True)


def gradient(
    direction: Any, out: TruncationOutput, was_reset: jax.Array, sigma: float, cfg: UnrollConfig
):
    """(grad, metrics): the mean over valid pairs of (L+ - L-) / (2 sigma^2) * direction[pair]."""
    scale = (out.meta_loss[:, 0] - out.meta_loss[:, 1]) / (2 * sigma**2)
    per_pair = jax.tree.map(lambda d: d * scale.reshape((-1,) + (1,) * (d.ndim - 1)), direction)
    return population.valid_mean(per_pair, out, was_reset, cfg)
