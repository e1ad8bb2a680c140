"""The learned-optimizer interface: a frozen dataclass of static config plus pure functions.

theta (the meta-parameters) is always an explicit argument, never optimizer state, so the same
function serves meta-training (theta is differentiated / perturbed / vmapped) and deployment
(`learned_opt.to_optax(arch, theta)` closes over a fixed theta).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax

Params = Any
Theta = Any  # pytree of f32 arrays
OptState = Any


@runtime_checkable
class LearnedOptimizer(Protocol):
    """What every architecture in `learned_opt.ARCHITECTURES` implements.

    `roles` (keyword-only, optional) is a pytree prefix of `params` whose leaves are role strings
    (see `learned_opt.mup`); it only matters to architectures with mu-P scaling.
    """

    name: str  # registry key; static

    def init_theta(self, key: jax.Array) -> Theta:
        """Meta-parameters; deterministic in `key`."""

    def init_state(self, params: Params) -> OptState:
        """Optimizer state for `params` (accumulators, step count). Holds no theta."""

    def update(
        self,
        theta: Theta,
        grads: Params,
        state: OptState,
        params: Params,
        *,
        loss: jax.Array | None = None,
        roles: Any = None,
        num_steps: jax.Array | int | None = None,
    ) -> tuple[Params, OptState]:
        """(updates, new_state); apply with `optax.apply_updates(params, updates)`.

        num_steps: the length of training; architectures that read the fraction of training
        need it, the others ignore it."""
