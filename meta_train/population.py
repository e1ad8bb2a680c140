"""A population of unroll states with leading axes [pairs, branches], and the vmaps over it.

Branches of a pair share task, seed, step and horizon; estimators decide what differs between
them (antithetic theta perturbations for PES/ES, nothing for plain training). Tasks are
gathered from the pool once per truncation, outside the scan.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from meta_train import robust, unroll as unroll_lib
from meta_train.unroll import UnrollConfig, UnrollState


def init_population(
    arch: Any, cfg: UnrollConfig, pool: Any, key: jax.Array, num_pairs: int, num_branches: int
) -> UnrollState:
    """[pairs, branches] members; the branches of each pair start identical."""
    if num_pairs < 1 or num_branches < 1:
        raise ValueError(
            f"num_pairs={num_pairs}, num_branches={num_branches}; both must be >= 1."
        )
    keys = jax.random.split(key, num_pairs)
    members = jax.vmap(lambda k: unroll_lib.init_member(arch, cfg, pool, k))(keys)
    return broadcast_branches(members, num_branches)


def init_states(estimator: Any, theta: Any, pool: Any, key: jax.Array) -> UnrollState:
    """`init_states` of an estimator whose state is its population alone (ES, truncated backprop).

    Takes theta only to fit the estimator interface: a fresh population does not depend on it.
    """
    del theta
    return init_population(
        estimator.arch, estimator.unroll, pool, key, estimator.num_pairs, estimator.num_branches
    )


def broadcast_branches(tree: Any, num_branches: int) -> Any:
    """[pairs, ...] -> [pairs, branches, ...] by copying."""
    return jax.tree.map(
        lambda x: jnp.broadcast_to(x[:, None], (x.shape[0], num_branches) + x.shape[1:]), tree
    )


def reset_population(arch: Any, cfg: UnrollConfig, pool: Any, states: UnrollState):
    """(states, was_reset[pairs]): members at their horizon or diverged start a new episode."""
    reset = jax.vmap(jax.vmap(lambda s: unroll_lib.reset_if_done(arch, cfg, pool, s)))
    states, done = reset(states)
    return states, done[:, 0]


def map_population(
    member_fn: Callable[[Any, Any, UnrollState], Any],
    thetas: Any,
    pool: Any,
    states: UnrollState,
    *,
    theta_per_branch: bool,
) -> Any:
    """vmap `member_fn(theta, task, state)` over [pairs, branches].

    theta_per_branch: thetas have leading [pairs, branches] axes (perturbed); otherwise one
    theta is shared by everyone.
    """
    tasks = unroll_lib.take_task(pool, states.task_index[:, 0])
    theta_axis = 0 if theta_per_branch else None
    over_branches = jax.vmap(member_fn, in_axes=(theta_axis, None, 0))
    over_pairs = jax.vmap(over_branches, in_axes=(theta_axis, 0, 0))
    return over_pairs(thetas, tasks, states)


def run_population(
    arch: Any, cfg: UnrollConfig, pool: Any, thetas: Any, states: UnrollState, *,
    theta_per_branch: bool,
):
    """One truncation for everyone: (states, TruncationOutput[pairs, branches]).

    A pair where any branch diverged is marked diverged in every branch, so both reset together.
    """

    def member(theta, task, state):
        return unroll_lib.truncation(arch, cfg, theta, task, state)

    states, out = map_population(member, thetas, pool, states, theta_per_branch=theta_per_branch)
    return mark_pair_divergence(states, out)


def mark_pair_divergence(states: UnrollState, out: unroll_lib.TruncationOutput):
    pair_diverged = jnp.any(out.diverged, axis=1, keepdims=True)
    pair_diverged = jnp.broadcast_to(pair_diverged, out.diverged.shape)
    states = states.replace(diverged=pair_diverged)
    return states, out.replace(diverged=pair_diverged)


def num_inner_steps(states: UnrollState, cfg: UnrollConfig) -> int:
    """Inner steps per truncation, counting every branch."""
    pairs, branches = states.step.shape[:2]
    return pairs * branches * cfg.truncation_length


def plain_truncation(arch: Any, cfg: UnrollConfig, pool: Any, theta: Any, states: UnrollState):
    """Training the same population with a frozen theta: the throughput baseline (no estimator)."""
    states, _ = reset_population(arch, cfg, pool, states)
    states, out = run_population(arch, cfg, pool, theta, states, theta_per_branch=False)
    return states, out


def valid_mean(per_pair: Any, out: unroll_lib.TruncationOutput, was_reset, cfg: UnrollConfig):
    """(grad, metrics): the mean of per_pair[pairs, ...] over the pairs that did not diverge (and
    stayed finite), and the truncation's metrics; the last step of every estimator."""
    valid = ~out.diverged[:, 0]
    grad, num_valid = robust.masked_mean(per_pair, valid)
    return grad, truncation_metrics(out, was_reset, valid, num_valid, cfg)


def truncation_metrics(out: unroll_lib.TruncationOutput, was_reset, valid, num_valid, cfg):
    """The flat metrics every estimator returns (means over valid pairs, counts over all)."""
    valid_branches = jnp.broadcast_to(valid[:, None], out.meta_loss.shape)
    pairs, branches = out.meta_loss.shape
    return {
        "meta_loss": robust.masked_scalar_mean(out.meta_loss, valid_branches),
        "inner_loss": robust.masked_scalar_mean(out.raw_loss, valid_branches),
        "unroll/resets": jnp.sum(was_reset).astype(jnp.float32),
        "unroll/diverged": jnp.sum(out.diverged[:, 0]).astype(jnp.float32),
        "grad/dropped": (pairs - num_valid).astype(jnp.float32),
        "unroll/inner_steps": jnp.asarray(pairs * branches * cfg.truncation_length, jnp.float32),
    }
