"""A worker owns unroll states and turns a theta into estimator output; nothing else.

This is the seam the Ray issue reuses: a Ray actor wraps the same `LocalWorker` (or calls the
same jitted estimate) on its own states, and the learner only ever sees
`(meta_grad, metrics)` per worker. In-process workers are the default.
"""

from __future__ import annotations

from typing import Any

import jax


class LocalWorker:
    """Holds one share of the population; `compute` runs one truncation for all of it.

    The whole truncation (K steps for every member and antithetic branch) is one jitted call;
    the unroll-state buffers are donated, so they are updated in place.
    """

    def __init__(self, estimator: Any, pool: Any, theta: Any, key: jax.Array):
        self.estimator = estimator
        self.pool = pool
        self._estimate = jax.jit(estimator.estimate, donate_argnums=(2,))
        self.states = jax.jit(estimator.init_states)(theta, pool, key)

    def compute(self, theta: Any, key: jax.Array) -> tuple[Any, dict[str, jax.Array]]:
        grad, self.states, metrics = self._estimate(theta, self.pool, self.states, key)
        return grad, metrics

    def warm_up(self, theta: Any, key: jax.Array) -> None:
        """Compile the truncation by running it once on a copy of the states (left unchanged),
        so a new (or restarted) Ray actor is ready at full speed when its first call comes."""
        states = jax.tree.map(lambda x: x.copy(), self.states)
        self.compute(theta, key)
        jax.block_until_ready(self.states)
        self.states = states

    def get_states(self) -> Any:
        return self.states

    def set_states(self, states: Any) -> None:
        self.states = states
