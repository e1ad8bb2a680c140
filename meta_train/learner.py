"""The outer loop's pure step: average worker meta-gradients, keep them finite, apply AdamW.

`outer_step(tx, clip_norm, state, grads) -> (state, metrics)` is pure and jitted; the driver
(`meta_train.train`) owns I/O. Running totals of every robustness event live in the state, so
they survive checkpoints and appear in the metrics.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from meta_train import robust

# Events counted per outer step and accumulated in LearnerState.totals.
COUNTED_EVENTS = (
    "unroll/resets",
    "unroll/diverged",
    "grad/dropped",
    "outer/nonfinite_grad",
    "outer/clipped",
    "dist/stale_dropped",  # async results older than max_staleness (distribution.dispatch)
    "dist/failed",  # worker calls that raised
    "dist/lost",  # worker calls whose process died (Ray restarts the worker)
)


@dataclasses.dataclass(frozen=True)
class OuterConfig:
    """Outer optimizer: AdamW on theta with linear warmup then cosine decay, global-norm clip.

    learning_rate: peak; end_learning_rate_factor: final lr = factor * peak.
    clip_norm: meta-gradients with a larger global norm are rescaled to it (counted).
    """

    learning_rate: float = 1e-3
    warmup_steps: int = 10
    end_learning_rate_factor: float = 0.1
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.99
    clip_norm: float = 1.0

    def __post_init__(self):
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"outer.learning_rate={self.learning_rate}; expected a finite value > 0.")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps={self.warmup_steps}; expected >= 0.")
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ValueError(f"outer.clip_norm={self.clip_norm}; expected a finite value > 0.")


def learning_rate_schedule(cfg: OuterConfig, num_steps: int) -> optax.Schedule:
    warmup = min(cfg.warmup_steps, max(num_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else cfg.learning_rate,
        peak_value=cfg.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(num_steps, warmup + 1),
        end_value=cfg.learning_rate * cfg.end_learning_rate_factor,
    )


def freeze_untrainable(trainable) -> optax.GradientTransformation:
    """Zeroes the updates of theta's top-level parts not named in `trainable` (() = none frozen)."""

    def update_fn(updates, state, params=None):
        del params
        return robust.zero_frozen(updates, tuple(trainable)), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def make_outer_optimizer(cfg: OuterConfig, num_steps: int, trainable=()) -> optax.GradientTransformation:
    """AdamW on the schedule of `cfg`; parts of theta outside `trainable` never move (their
    meta-gradient is zeroed before clipping, their update, weight decay included, after)."""
    return optax.chain(
        freeze_untrainable(trainable),
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.adamw(
            learning_rate_schedule(cfg, num_steps), b1=cfg.b1, b2=cfg.b2,
            weight_decay=cfg.weight_decay,
        ),
        freeze_untrainable(trainable),
    )


class LearnerState(struct.PyTreeNode):
    step: jax.Array  # i32[], outer steps done
    theta: Any
    outer_state: Any
    rng: jax.Array  # u32[2], the run's base key; step keys are fold_in(rng, step)
    totals: dict[str, jax.Array]  # running counts of COUNTED_EVENTS


def init_learner(tx: optax.GradientTransformation, theta: Any, rng: jax.Array) -> LearnerState:
    return LearnerState(
        step=jnp.zeros((), jnp.int32),
        theta=theta,
        outer_state=tx.init(theta),
        rng=rng,
        totals={k: jnp.zeros((), jnp.float32) for k in COUNTED_EVENTS},
    )


def mean_over_workers(grads: list[Any]) -> Any:
    return jax.tree.map(lambda *g: sum(g) / len(g), *grads)


def outer_step(
    tx: optax.GradientTransformation, clip_norm: float, state: LearnerState, grad: Any,
    estimator_metrics: dict[str, jax.Array],
) -> tuple[LearnerState, dict[str, jax.Array]]:
    """Apply one meta-gradient. A non-finite meta-gradient, or an update that would make theta
    non-finite, is skipped (theta and the AdamW moments stay as they were) and counted in
    `outer/nonfinite_grad`; clipping is counted in `outer/clipped`."""
    leaves = jax.tree.leaves(grad)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in leaves]))
    grad = jax.tree.map(lambda g: jnp.where(finite, g, 0.0), grad)
    grad_norm = optax.tree.norm(grad)
    updates, new_outer = tx.update(grad, state.outer_state, state.theta)
    new_theta = optax.apply_updates(state.theta, updates)
    # A finite gradient can still overflow theta (a huge learning rate): never keep that either.
    finite = finite & jnp.all(jnp.stack([jnp.all(jnp.isfinite(t)) for t in jax.tree.leaves(new_theta)]))
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    events = {
        "unroll/resets": estimator_metrics["unroll/resets"],
        "unroll/diverged": estimator_metrics["unroll/diverged"],
        "grad/dropped": estimator_metrics["grad/dropped"],
        "outer/nonfinite_grad": (~finite).astype(jnp.float32),
        "outer/clipped": (grad_norm > clip_norm).astype(jnp.float32),
    }
    for k in COUNTED_EVENTS:  # counts only some callers report (the dispatcher's drops)
        events.setdefault(k, jnp.asarray(estimator_metrics.get(k, 0.0), jnp.float32))
    totals = {k: state.totals[k] + events[k] for k in COUNTED_EVENTS}
    new_state = state.replace(
        step=state.step + 1,
        theta=keep(new_theta, state.theta),
        outer_state=keep(new_outer, state.outer_state),
        totals=totals,
    )
    metrics = dict(estimator_metrics)
    metrics.update({k: v for k, v in events.items() if k.startswith("outer/")})
    metrics["outer/grad_norm"] = grad_norm
    metrics["outer/theta_norm"] = optax.tree.norm(new_state.theta)
    metrics.update({f"total/{k.replace('/', '_')}": v for k, v in totals.items()})
    return new_state, metrics
