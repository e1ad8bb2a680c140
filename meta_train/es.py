"""Truncated antithetic Evolution Strategies (Salimans et al. 2017, applied per truncation).

Each pair runs theta + eps and theta - eps over one truncation from a shared start state and
returns (L+ - L-) / (2 sigma^2) * eps. The start state's own dependence on theta is ignored, so
for truncations shorter than the horizon the estimate is biased (like truncated backprop);
over a full horizon it estimates the gradient of the Gaussian-smoothed meta-loss. After the
truncation both branches continue from the + branch, so the next one starts shared again.

The pairs, noise and scaling are `antithetic`'s, shared with PES; this file holds only that
choice of direction (eps) and of how the pair goes on.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from meta_train import antithetic, population
from meta_train.unroll import UnrollConfig, UnrollState


@dataclasses.dataclass(frozen=True)
class AntitheticES:
    arch: Any
    unroll: UnrollConfig
    num_pairs: int = 8
    sigma: float = 0.01
    trainable: tuple[str, ...] = ()  # top-level theta parts perturbed; () = all

    num_branches = 2
    init_states = population.init_states  # the population alone

    def estimate(self, theta: Any, pool: Any, states: UnrollState, key: jax.Array):
        states, was_reset = population.reset_population(self.arch, self.unroll, pool, states)
        eps = antithetic.sample_noise(key, theta, self.num_pairs, self.sigma, self.trainable)
        states, out = antithetic.run_pairs(self.arch, self.unroll, pool, theta, eps, states)
        grad, metrics = antithetic.gradient(eps, out, was_reset, self.sigma, self.unroll)
        states = population.broadcast_branches(jax.tree.map(lambda x: x[:, 0], states), 2)
        return grad, states, metrics
