"""Persistent Evolution Strategies (Vicol, Metz, Sohl-Dickstein, ICML 2021).

Antithetic pairs run theta + eps and theta - eps with a fresh eps every truncation. Each pair
keeps the sum of every eps it has used since its episode began (the accumulator xi); the
estimate (L+ - L-) / (2 sigma^2) * xi credits the loss difference to *all* perturbations that
shaped the current state, which makes the sum over an episode's truncations an unbiased estimate
of the full-horizon meta-gradient (of the Gaussian-smoothed objective), unlike truncated
backprop or truncated ES.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from meta_train import population, robust
from meta_train.unroll import UnrollConfig, UnrollState


class PESState(struct.PyTreeNode):
    unroll: UnrollState  # [pairs, 2]
    accum: Any  # theta-shaped, [pairs, ...]: perturbations accumulated this episode


@dataclasses.dataclass(frozen=True)
class PES:
    arch: Any
    unroll: UnrollConfig
    num_pairs: int = 8
    sigma: float = 0.01
    trainable: tuple[str, ...] = ()  # top-level theta parts perturbed; () = all

    num_branches = 2

    def init_states(self, theta: Any, pool: Any, key: jax.Array) -> PESState:
        states = population.init_population(
            self.arch, self.unroll, pool, key, self.num_pairs, self.num_branches
        )
        accum = jax.tree.map(lambda t: jnp.zeros((self.num_pairs,) + t.shape, t.dtype), theta)
        return PESState(unroll=states, accum=accum)

    def estimate(self, theta: Any, pool: Any, states: PESState, key: jax.Array):
        unroll, was_reset = population.reset_population(self.arch, self.unroll, pool, states.unroll)
        eps = robust.zero_frozen(robust.tree_sample_normal(key, theta, (self.num_pairs,), self.sigma), self.trainable)

        def add(a, e):
            kept = jnp.where(was_reset.reshape((-1,) + (1,) * (a.ndim - 1)), 0.0, a)
            return kept + e

        accum = jax.tree.map(add, states.accum, eps)
        signs = jnp.array([1.0, -1.0])
        thetas = jax.tree.map(
            lambda t, e: t[None, None] + signs.reshape(1, 2, *(1,) * t.ndim) * e[:, None], theta, eps
        )
        unroll, out = population.run_population(
            self.arch, self.unroll, pool, thetas, unroll, theta_per_branch=True
        )
        scale = (out.meta_loss[:, 0] - out.meta_loss[:, 1]) / (2 * self.sigma**2)
        per_pair = jax.tree.map(lambda a: a * scale.reshape((-1,) + (1,) * (a.ndim - 1)), accum)
        valid = ~out.diverged[:, 0]
        grad, num_valid = robust.masked_mean(per_pair, valid)
        metrics = population.truncation_metrics(out, was_reset, valid, num_valid, self.unroll)
        return grad, PESState(unroll=unroll, accum=accum), metrics
