"""Truncated inner training: the per-member state and the K-step `lax.scan` every estimator runs.

A population member is one inner training run (task, params, optimizer state, step, horizon).
Its state persists across truncations; when it reaches its horizon (or diverges) it restarts
with a new task drawn from the pool and a new seed. Tasks live in a *pool*: a stacked Task
pytree (leading axis = pool size) passed as a jit argument, so a reset is an index draw inside
jit, never a host round trip or a recompile.

Layout: estimators keep states with leading axes [pairs, branches]. Branches of one pair (the
antithetic +/- perturbations) share the task, seed, step and horizon (common random numbers);
they differ only in params/optimizer state. Every function here acts on ONE member; estimators
vmap it.

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
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

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


def pool_size(pool: Any) -> int:
    return int(jax.tree.leaves(pool)[0].shape[0])


def take_task(pool: Any, index: jax.Array) -> Any:
    """The task(s) at `index` (scalar or array of indices) of a stacked pool."""
    return jax.tree.map(lambda x: x[index], pool)


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


def param_roles(arch: Any, params: Any) -> Any:
    """mu-P roles of the inner model's tensors, for architectures that scale by them.

    tasks/ models name their layers so `tasks.models.mup.param_roles` can tell input, hidden,
    readout and vector tensors apart; the readout must not get the hidden-layer update scaling.
    """
    if not getattr(arch, "mup", False):
        return None
    from tasks.models.mup import param_roles as roles_by_name

    return roles_by_name(params)


def truncation(
    arch: Any, cfg: UnrollConfig, theta: Any, task: Any, state: UnrollState
) -> tuple[UnrollState, TruncationOutput]:
    """K inner steps of `arch` under `theta` on `task`; differentiable in theta.

    Batches are sampled inside the scan from the task's device-resident data with
    fold_in(episode key, step), so antithetic branches see the same batches.
    """

    roles = param_roles(arch, state.params)

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
