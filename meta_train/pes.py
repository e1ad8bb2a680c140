"""Persistent Evolution Strategies (Vicol, Metz, Sohl-Dickstein, ICML 2021).

Antithetic pairs run theta + eps and theta - eps with a fresh eps every truncation. Each pair
keeps the sum of every eps it has used since its episode began (the accumulator xi); the
estimate (L+ - L-) / (2 sigma^2) * xi credits the loss difference to *all* perturbations that
shaped the current state, which makes the sum over an episode's truncations an unbiased estimate
of the full-horizon meta-gradient (of the Gaussian-smoothed objective), unlike truncated
backprop or truncated ES.

The pairs, noise and scaling are `antithetic`'s, shared with ES; this file holds only the
accumulator and its reset at a new episode.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from meta_train import antithetic, population
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
        states = population.init_states(self, theta, pool, key)
        accum = jax.tree.map(lambda t: jnp.zeros((self.num_pairs,) + t.shape, t.dtype), theta)
        return PESState(unroll=states, accum=accum)

    def estimate(self, theta: Any, pool: Any, states: PESState, key: jax.Array):
        unroll, was_reset = population.reset_population(self.arch, self.unroll, pool, states.unroll)
        eps = antithetic.sample_noise(key, theta, self.num_pairs, self.sigma, self.trainable)

        def add(a, e):  # a new episode forgets the noise of the one before
            kept = jnp.where(was_reset.reshape((-1,) + (1,) * (a.ndim - 1)), 0.0, a)
            return kept + e

        accum = jax.tree.map(add, states.accum, eps)
        unroll, out = antithetic.run_pairs(self.arch, self.unroll, pool, theta, eps, unroll)
        grad, metrics = antithetic.gradient(accum, out, was_reset, self.sigma, self.unroll)
        return grad, PESState(unroll=unroll, accum=accum), metrics
