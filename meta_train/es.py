"""Truncated antithetic Evolution Strategies (Salimans et al. 2017, applied per truncation).

Each pair runs theta + eps and theta - eps over one truncation from a shared start state and
returns (L+ - L-) / (2 sigma^2) * eps. The start state's own dependence on theta is ignored, so
for truncations shorter than the horizon the estimate is biased (like truncated backprop);
over a full horizon it estimates the gradient of the Gaussian-smoothed meta-loss. After the
truncation both branches continue from the + branch, so the next one starts shared again.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from meta_train import population, robust
from meta_train.unroll import UnrollConfig, UnrollState


@dataclasses.dataclass(frozen=True)
class AntitheticES:
    arch: Any
    unroll: UnrollConfig
    num_pairs: int = 8
    sigma: float = 0.01
    trainable: tuple[str, ...] = ()  # top-level theta parts perturbed; () = all

    num_branches = 2

    def init_states(self, theta: Any, pool: Any, key: jax.Array) -> UnrollState:
        del theta
        return population.init_population(
            self.arch, self.unroll, pool, key, self.num_pairs, self.num_branches
        )

    def estimate(self, theta: Any, pool: Any, states: UnrollState, key: jax.Array):
        states, was_reset = population.reset_population(self.arch, self.unroll, pool, states)
        eps = robust.zero_frozen(robust.tree_sample_normal(key, theta, (self.num_pairs,), self.sigma), self.trainable)
        signs = jnp.array([1.0, -1.0])
        thetas = jax.tree.map(
            lambda t, e: t[None, None] + signs.reshape(1, 2, *(1,) * t.ndim) * e[:, None], theta, eps
        )
        states, out = population.run_population(
            self.arch, self.unroll, pool, thetas, states, theta_per_branch=True
        )
        scale = (out.meta_loss[:, 0] - out.meta_loss[:, 1]) / (2 * self.sigma**2)
        per_pair = jax.tree.map(lambda e: e * scale.reshape((-1,) + (1,) * (e.ndim - 1)), eps)
        valid = ~out.diverged[:, 0]
        grad, num_valid = robust.masked_mean(per_pair, valid)
        states = population.broadcast_branches(jax.tree.map(lambda x: x[:, 0], states), 2)
        metrics = population.truncation_metrics(out, was_reset, valid, num_valid, self.unroll)
        return grad, states, metrics
