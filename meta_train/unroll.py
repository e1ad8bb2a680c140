"""Truncated inner training: a member's state, the K-step `lax.scan` every estimator runs, and
the population of members ([pairs, branches]) that the estimators vmap it over.

A population member is one inner training run (task, params, optimizer state, step, horizon).
Its state persists across truncations; when it reaches its horizon (or diverges) it restarts
with a new task drawn from the task pool and a new seed. The *task pool* is a stacked Task
pytree (leading axis = pool size; `sample_task_pool`) passed as a jit argument, so a reset is an
index draw inside jit, never a host round trip or a recompile. (Not to be confused with the
*worker* pool of `meta_train.distribution`, which says where estimates are computed.)

Layout: estimators keep states with leading axes [pairs, branches]. Branches of one pair (the
antithetic +/- perturbations) share the task, seed, step and horizon (common random numbers);
they differ only in params/optimizer state. The member functions act on ONE member; the
population functions at the end vmap them and compute what every estimator returns (the mean
over the pairs that stayed finite, and the truncation's metrics).

Horizons are log-uniform in [min_horizon, max_horizon], rounded up to a multiple of the
truncation length K, so resets happen exactly at truncation boundaries and a truncation never
straddles two tasks. With `stagger`, each member's first episode is shortened by a random
truncation-aligned amount (fresh params, fewer steps), so the members' resets are spread out
and, after the first ones, the population covers every phase of training. The optimizer is told
each episode's length (`update(..., num_steps=horizon)`), so one with a schedule sees the
fraction of training it is at.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

from meta_train import population_devices, robust
from tasks.base import mup_roles
from tasks.stacking import stack_tasks

META_LOSSES = ("train", "test", "log_train")
LOG_LOSS_FLOOR = 1e-8  # log_train: losses below this fraction of the initial loss count as it


@dataclasses.dataclass(frozen=True)
class UnrollConfig:
    """Static shape of the inner training.

    truncation_length: K, inner steps per truncation (one estimator call).
    min_horizon / max_horizon: inner steps per task, log-uniform, rounded up to a multiple of K.
    stagger: start members at random offsets into their first horizon.
    meta_loss: "train" = mean train-batch loss over the truncation; "test" = mean held-out
      loss after each step. Both are divided by the task's loss at initialization, so tasks
      with different loss scales weigh alike. "log_train" = mean of log(train loss / initial
      loss): a loss falling from 1e-2 to 1e-4 counts as much as one from 1 to 1e-2, so
      meta-training rewards converging far, not just the first drop (needs positive losses).
    divergence_factor: a loss above factor * (initial loss), or non-finite, marks divergence.
    meta_loss_clip: with c > 0, each step's loss / (initial loss) is clipped to at most c and a
      non-finite one counts as c (learned_optimization's clipped meta-loss), so one member's
      blow-up cannot dominate the estimate; 0 leaves the losses as they are.
    meta_loss_weight_power: p >= 0; step t of an episode of T steps weighs (p + 1) ((t + 1/2) / T)^p
      in the meta-loss (mean weight 1 over the episode). 0 weighs every step alike (the mean
      loss over training); larger p moves the objective toward the end of training, where the
      final loss that evaluations compare is made, so schedules learn to decay.
    """

    truncation_length: int = 10
    min_horizon: int = 100
    max_horizon: int = 1000
    stagger: bool = True
    meta_loss: str = "train"
    divergence_factor: float = 1e3
    meta_loss_clip: float = 0.0
    meta_loss_weight_power: float = 0.0

    def __post_init__(self):
        if self.truncation_length < 1:
            raise ValueError(f"truncation_length={self.truncation_length}; expected >= 1.")
        if not 1 <= self.min_horizon <= self.max_horizon:
            raise ValueError(
                f"horizons ({self.min_horizon}, {self.max_horizon}) must satisfy "
                "1 <= min_horizon <= max_horizon."
            )
        if self.meta_loss not in META_LOSSES:
            raise ValueError(f"meta_loss={self.meta_loss!r}; expected one of {META_LOSSES}.")
        if not self.meta_loss_clip >= 0:
            raise ValueError(f"meta_loss_clip={self.meta_loss_clip}; expected >= 0 (0: no clipping).")
        if not 0 <= self.meta_loss_weight_power < float("inf"):
            raise ValueError(
                f"meta_loss_weight_power={self.meta_loss_weight_power}; expected a finite value >= 0 "
                "(0: every step weighs alike)."
            )
        if not self.divergence_factor > 1:
            raise ValueError(f"divergence_factor={self.divergence_factor}; expected > 1.")


class UnrollState(struct.PyTreeNode):
    """One member's inner training run; persists across truncations."""

    params: Any
    opt_state: Any
    task_index: jax.Array  # i32[], index into the task pool
    step: jax.Array  # i32[], inner steps taken in this episode
    horizon: jax.Array  # i32[], episode length (multiple of K)
    loss_scale: jax.Array  # f32[], loss at initialization: the meta-loss normalizer
    rng: jax.Array  # u32[2], the episode's key: data order and the next reset
    diverged: jax.Array  # bool[], set by the last truncation; forces a reset


class TruncationOutput(struct.PyTreeNode):
    """What one member's truncation reports (per member; vmapped to [pairs, branches])."""

    meta_loss: jax.Array  # f32[], normalized mean loss over the K steps
    raw_loss: jax.Array  # f32[], un-normalized mean train loss
    diverged: jax.Array  # bool[]


def step_weights(cfg: UnrollConfig, first_step: jax.Array, horizon: jax.Array) -> jax.Array:
    """(K,) meta-loss weights of the truncation's steps first_step .. first_step + K - 1."""
    p = cfg.meta_loss_weight_power
    t_K = first_step + jnp.arange(cfg.truncation_length, dtype=jnp.float32)
    fraction_K = (t_K + 0.5) / jnp.maximum(horizon.astype(jnp.float32), 1.0)
    return (p + 1.0) * fraction_K**p


def _normalized_meta_loss(cfg: UnrollConfig, metas_K: jax.Array, loss_scale: jax.Array, weights_K=None):
    relative_K = metas_K / loss_scale
    if cfg.meta_loss_clip > 0:
        c = cfg.meta_loss_clip
        relative_K = jnp.minimum(jnp.nan_to_num(relative_K, nan=c, posinf=c), c)
    if cfg.meta_loss == "log_train":
        relative_K = jnp.log(jnp.maximum(relative_K, LOG_LOSS_FLOOR))
    if weights_K is not None:
        relative_K = weights_K * relative_K
    return jnp.mean(relative_K)


# ---- the task pool -----------------------------------------------------------------------------


def sample_task_pool(family: Any, key: jax.Array, size: int) -> Any:
    """`size` tasks from `family`, sampled on the host once and stacked (leading axis = size).

    Families whose static choices vary (model width, dataset, ...) provide
    `sample_population(key, size)`: one static configuration with per-task array leaves (init
    scale, ...), which is what a pool needs. Different workers get different keys, hence
    different configurations, so the whole population still covers the family. Sampling is
    deterministic in the key, so a resumed run rebuilds the same pool.
    """
    if size < 1:
        raise ValueError(f"pool size={size}; expected >= 1.")
    if hasattr(family, "sample_population"):
        return family.sample_population(key, size)
    keys = jax.random.split(key, size)
    return stack_tasks([family.sample(k) for k in keys])


def pool_size(pool: Any) -> int:
    return int(jax.tree.leaves(pool)[0].shape[0])


def take_task(pool: Any, index: jax.Array) -> Any:
    """The task(s) at `index` (scalar or array of indices) of a stacked pool."""
    return jax.tree.map(lambda x: x[index], pool)


# ---- one member ---------------------------------------------------------------------------------


def sample_horizon(cfg: UnrollConfig, key: jax.Array) -> jax.Array:
    """Log-uniform in [min_horizon, max_horizon], rounded up to a multiple of K."""
    log_h = jax.random.uniform(
        key, (), minval=jnp.log(cfg.min_horizon), maxval=jnp.log(cfg.max_horizon)
    )
    k = cfg.truncation_length
    return (jnp.ceil(jnp.exp(log_h) / k) * k).astype(jnp.int32)


def fresh_member(arch: Any, cfg: UnrollConfig, pool: Any, key: jax.Array) -> UnrollState:
    """A new episode: random task from the pool, fresh params and optimizer state, new horizon."""
    k_task, k_init, k_horizon, k_scale, k_rng = jax.random.split(key, 5)
    index = jax.random.randint(k_task, (), 0, pool_size(pool))
    task = take_task(pool, index)
    params = task.init(k_init)
    init_loss = task.loss(params, task.sample_batch(k_scale, split="train"))
    return UnrollState(
        params=params,
        opt_state=arch.init_state(params),
        task_index=index.astype(jnp.int32),
        step=jnp.zeros((), jnp.int32),
        horizon=sample_horizon(cfg, k_horizon),
        loss_scale=jnp.maximum(jnp.abs(init_loss), 1e-6).astype(jnp.float32),
        rng=k_rng,
        diverged=jnp.zeros((), bool),
    )


def init_member(arch: Any, cfg: UnrollConfig, pool: Any, key: jax.Array) -> UnrollState:
    """A member at the start of meta-training: fresh, with a staggered start if configured."""
    k_fresh, k_offset = jax.random.split(key)
    state = fresh_member(arch, cfg, pool, k_fresh)
    if cfg.stagger:
        k = cfg.truncation_length
        num_truncations = state.horizon // k
        offset = jax.random.randint(k_offset, (), 0, num_truncations) * k
        state = state.replace(horizon=(state.horizon - offset).astype(jnp.int32))
    return state


def needs_reset(state: UnrollState) -> jax.Array:
    return (state.step >= state.horizon) | state.diverged


def reset_if_done(arch: Any, cfg: UnrollConfig, pool: Any, state: UnrollState):
    """(state, was_reset): finished or diverged members start a new episode.

    The new episode's key derives from the old episode's key, so the branches of a pair (same
    key, same step) reset identically.
    """
    done = needs_reset(state)
    fresh = fresh_member(arch, cfg, pool, jax.random.fold_in(state.rng, 0x5E5E7))
    state = jax.tree.map(lambda f, s: jnp.where(done, f, s), fresh, state)
    return state, done


def tree_all_finite(tree: Any) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def truncation(
    arch: Any, cfg: UnrollConfig, theta: Any, task: Any, state: UnrollState
) -> tuple[UnrollState, TruncationOutput]:
    """K inner steps of `arch` under `theta` on `task`; differentiable in theta.

    Batches are sampled inside the scan from the task's device-resident data with
    fold_in(episode key, step), so antithetic branches see the same batches. The task's model
    names its mu-P roles (the readout must not get the hidden-layer update scaling); an
    architecture without mu-P scaling ignores them.
    """

    roles = mup_roles(task, state.params)

    def inner_step(carry, _):
        params, opt_state, step = carry
        k_step = jax.random.fold_in(state.rng, step)
        batch = task.sample_batch(jax.random.fold_in(k_step, 0), split="train")
        loss, grads = jax.value_and_grad(task.loss)(params, batch)
        updates, opt_state = arch.update(
            theta, grads, opt_state, params, loss=loss, roles=roles, num_steps=state.horizon
        )
        params = optax.apply_updates(params, updates)
        if cfg.meta_loss == "test":
            test_batch = task.sample_batch(jax.random.fold_in(k_step, 1), split="test")
            meta = task.loss(params, test_batch)
        else:
            meta = loss
        return (params, opt_state, step + 1), (loss, meta)

    (params, opt_state, step), (losses, metas) = jax.lax.scan(
        inner_step,
        (state.params, state.opt_state, state.step),
        None,
        length=cfg.truncation_length,
    )
    limit = cfg.divergence_factor * state.loss_scale
    exploded = jnp.any(~jnp.isfinite(losses)) | jnp.any(jnp.abs(losses) > limit)
    exploded = exploded | jnp.any(~jnp.isfinite(metas)) | ~tree_all_finite(params)
    new_state = state.replace(params=params, opt_state=opt_state, step=step, diverged=exploded)
    out = TruncationOutput(
        meta_loss=_normalized_meta_loss(
            cfg,
            metas,
            state.loss_scale,
            step_weights(cfg, state.step.astype(jnp.float32), state.horizon)
            if cfg.meta_loss_weight_power
            else None,
        ),
        raw_loss=jnp.mean(losses),
        diverged=exploded,
    )
    return new_state, out


# ---- the population: [pairs, branches] members -----------------------------------------------
# Branches of a pair share task, seed, step and horizon; estimators decide what differs between
# them (antithetic theta perturbations for PES/ES, nothing for plain training). Tasks are
# gathered from the pool once per truncation, outside the scan.


def init_population(
    arch: Any, cfg: UnrollConfig, pool: Any, key: jax.Array, num_pairs: int, num_branches: int
) -> UnrollState:
    """[pairs, branches] members; the branches of each pair start identical."""
    if num_pairs < 1 or num_branches < 1:
        raise ValueError(
            f"num_pairs={num_pairs}, num_branches={num_branches}; both must be >= 1."
        )
    keys = jax.random.split(key, num_pairs)
    members = jax.vmap(lambda k: init_member(arch, cfg, pool, k))(keys)
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
    reset = jax.vmap(jax.vmap(lambda s: reset_if_done(arch, cfg, pool, s)))
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
    theta is shared by everyone. Traced under a population mesh (meta_train.population_devices),
    each device runs its own share of the pairs.
    """
    theta_axis = 0 if theta_per_branch else None

    def over_pairs(thetas, pool, states):
        tasks = take_task(pool, states.task_index[:, 0])
        over_branches = jax.vmap(member_fn, in_axes=(theta_axis, None, 0))
        return jax.vmap(over_branches, in_axes=(theta_axis, 0, 0))(thetas, tasks, states)

    return population_devices.map_shards(over_pairs, (theta_per_branch, False, True))(thetas, pool, states)


def run_population(
    arch: Any, cfg: UnrollConfig, pool: Any, thetas: Any, states: UnrollState, *,
    theta_per_branch: bool,
):
    """One truncation for everyone: (states, TruncationOutput[pairs, branches]).

    A pair where any branch diverged is marked diverged in every branch, so both reset together.
    """

    def member(theta, task, state):
        return truncation(arch, cfg, theta, task, state)

    states, out = map_population(member, thetas, pool, states, theta_per_branch=theta_per_branch)
    return mark_pair_divergence(states, out)


def mark_pair_divergence(states: UnrollState, out: TruncationOutput):
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


def valid_mean(per_pair: Any, out: TruncationOutput, was_reset, cfg: UnrollConfig):
    """(grad, metrics): the mean of per_pair[pairs, ...] over the pairs that did not diverge (and
    stayed finite), and the truncation's metrics; the last step of every estimator."""
    valid = ~out.diverged[:, 0]
    grad, num_valid = robust.masked_mean(per_pair, valid)
    return grad, truncation_metrics(out, was_reset, valid, num_valid, cfg)


def truncation_metrics(out: TruncationOutput, was_reset, valid, num_valid, cfg):
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
