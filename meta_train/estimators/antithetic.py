"""The antithetic estimators, PES and truncated ES, and the core they share.

Each pair runs theta + eps and theta - eps from one shared state, with the same task and batches,
so the loss difference L+ - L- measures theta's effect alone. A pair's estimate is
(L+ - L-) / (2 sigma^2) times a theta-shaped direction: ES credits this truncation's eps, PES
the sum of every eps of the episode. Only that direction (and how a pair goes on afterwards)
differs between the two; the noise, the +/- thetas and the scaling are the functions below.

With `difference="sign"` a pair's weight is sign(L+ - L-) / (2 sigma) instead (VeLO's ES and
learned_optimization's PES option): every pair counts the same whatever the size of its loss
difference, so a few pairs with large differences (noisy tasks, long episodes, losses of other
scales) no longer set the estimate. E[sign(eps . g) eps] is along g for Gaussian eps, so the
direction is kept, not the magnitude (a step size for an Adam-like outer optimizer anyway).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from meta_train import robust, unroll as unroll_lib
from meta_train.unroll import TruncationOutput, UnrollConfig, UnrollState

# ---- the shared core ---------------------------------------------------------------------------


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
    return unroll_lib.run_population(arch, cfg, pool, thetas, states, theta_per_branch=True)


DIFFERENCES = ("value", "sign")


def gradient(
    direction: Any, out: TruncationOutput, was_reset: jax.Array, sigma: float, cfg: UnrollConfig,
    difference: str = "value",
):
    """(grad, metrics): the mean over valid pairs of (L+ - L-) / (2 sigma^2) * direction[pair],
    or of sign(L+ - L-) / (2 sigma) * direction[pair] with difference="sign"."""
    delta = out.meta_loss[:, 0] - out.meta_loss[:, 1]
    scale = jnp.sign(delta) / (2 * sigma) if difference == "sign" else delta / (2 * sigma**2)
    per_pair = jax.tree.map(lambda d: d * scale.reshape((-1,) + (1,) * (d.ndim - 1)), direction)
    return unroll_lib.valid_mean(per_pair, out, was_reset, cfg)


@dataclasses.dataclass(frozen=True)
class Antithetic(abc.ABC):
    """The configuration PES and ES share (abstract: each says its `estimate`)."""

    arch: Any
    unroll: UnrollConfig
    num_pairs: int = 8
    sigma: float = 0.01
    trainable: tuple[str, ...] = ()  # top-level theta parts perturbed; () = all
    difference: str = "value"  # "value" or "sign" of L+ - L- (see the module docstring)

    num_branches = 2

    def __post_init__(self):
        if self.difference not in DIFFERENCES:
            raise ValueError(f"estimator.difference={self.difference!r}; expected one of {DIFFERENCES} "
                             "(the antithetic loss difference itself, or only its sign).")

    @abc.abstractmethod
    def estimate(self, theta: Any, pool: Any, states: Any, key: jax.Array):
        """(meta_grad, states, metrics) of one truncation (see `meta_train.estimators`)."""


# ---- PES ---------------------------------------------------------------------------------------


class PESState(struct.PyTreeNode):
    unroll: UnrollState  # [pairs, 2]
    accum: Any  # theta-shaped, [pairs, ...]: perturbations accumulated this episode


@dataclasses.dataclass(frozen=True)
class PES(Antithetic):
    """Persistent Evolution Strategies (Vicol, Metz, Sohl-Dickstein, ICML 2021).

    A fresh eps every truncation; each pair keeps the sum of every eps it has used since its
    episode began (the accumulator xi). The estimate (L+ - L-) / (2 sigma^2) * xi credits the
    loss difference to *all* perturbations that shaped the current state, which makes the sum
    over an episode's truncations an unbiased estimate of the full-horizon meta-gradient (of the
    Gaussian-smoothed objective), unlike truncated backprop or truncated ES.
    """

    def init_states(self, theta: Any, pool: Any, key: jax.Array) -> PESState:
        states = unroll_lib.init_states(self, theta, pool, key)
        accum = jax.tree.map(lambda t: jnp.zeros((self.num_pairs,) + t.shape, t.dtype), theta)
        return PESState(unroll=states, accum=accum)

    def estimate(self, theta: Any, pool: Any, states: PESState, key: jax.Array):
        unroll, was_reset = unroll_lib.reset_population(self.arch, self.unroll, pool, states.unroll)
        eps = sample_noise(key, theta, self.num_pairs, self.sigma, self.trainable)

        def add(a, e):  # a new episode forgets the noise of the one before
            kept = jnp.where(was_reset.reshape((-1,) + (1,) * (a.ndim - 1)), 0.0, a)
            return kept + e

        accum = jax.tree.map(add, states.accum, eps)
        unroll, out = run_pairs(self.arch, self.unroll, pool, theta, eps, unroll)
        grad, metrics = gradient(accum, out, was_reset, self.sigma, self.unroll, self.difference)
        return grad, PESState(unroll=unroll, accum=accum), metrics


# ---- truncated ES ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AntitheticES(Antithetic):
    """Truncated antithetic Evolution Strategies (Salimans et al. 2017, applied per truncation).

    The estimate is (L+ - L-) / (2 sigma^2) * eps of this truncation alone. The start state's
    own dependence on theta is ignored, so for truncations shorter than the horizon the estimate
    is biased (like truncated backprop); over a full horizon it estimates the gradient of the
    Gaussian-smoothed meta-loss. After the truncation both branches continue from the + branch,
    so the next one starts shared again.
    """

    init_states = unroll_lib.init_states  # the population alone

    def estimate(self, theta: Any, pool: Any, states: UnrollState, key: jax.Array):
        states, was_reset = unroll_lib.reset_population(self.arch, self.unroll, pool, states)
        eps = sample_noise(key, theta, self.num_pairs, self.sigma, self.trainable)
        states, out = run_pairs(self.arch, self.unroll, pool, theta, eps, states)
        grad, metrics = gradient(eps, out, was_reset, self.sigma, self.unroll, self.difference)
        states = unroll_lib.broadcast_branches(jax.tree.map(lambda x: x[:, 0], states), 2)
        return grad, states, metrics
