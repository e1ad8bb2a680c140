"""Truncated backpropagation: exact gradient of each truncation's meta-loss w.r.t. theta.

Differentiates through the K inner steps only; the start state is treated as a constant, so
for truncations shorter than the horizon the estimate is biased (it ignores how theta shaped
the state it starts from). Over a full horizon (K = horizon) it is the exact meta-gradient.
Members are independent ([pairs, 1] layout); each member's gradient is computed separately so
a diverged member can be dropped without its NaNs reaching the mean.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from meta_train import unroll as unroll_lib
from meta_train.unroll import UnrollConfig, UnrollState


@dataclasses.dataclass(frozen=True)
class TruncatedBackprop:
    arch: Any
    unroll: UnrollConfig
    num_pairs: int = 8  # members; the name is shared with the antithetic estimators
    sigma: float = 0.0  # unused; accepted so every estimator takes the same config
    difference: str = "value"  # likewise (EstimatorConfig refuses "sign" for tbptt)
    trainable: tuple[str, ...] = ()  # frozen parts are masked by the learner (make_outer_optimizer)

    num_branches = 1
    init_states = unroll_lib.init_states  # the population alone

    def estimate(self, theta: Any, pool: Any, states: UnrollState, key: jax.Array):
        del key  # deterministic given the states
        states, was_reset = unroll_lib.reset_population(self.arch, self.unroll, pool, states)

        def member_loss(theta, task, state):
            new_state, out = unroll_lib.truncation(self.arch, self.unroll, theta, task, state)
            return out.meta_loss, (new_state, out)

        grad_fn = jax.grad(member_loss, has_aux=True)
        grads, (states, out) = unroll_lib.map_population(
            grad_fn, theta, pool, states, theta_per_branch=False
        )
        states, out = unroll_lib.mark_pair_divergence(states, out)
        per_member = jax.tree.map(lambda g: g[:, 0], grads)
        grad, metrics = unroll_lib.valid_mean(per_member, out, was_reset, self.unroll)
        return grad, states, metrics
