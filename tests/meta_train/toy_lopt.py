"""A two-parameter learned optimizer (SGD with learnable log-lr and momentum) for fast tests.

It satisfies the learned_opt interface, so meta_train code is exercised exactly as with MLPLOpt
while every test compiles in seconds and the meta-gradient is cheap to compute exactly.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class MomentumLOpt:
    name = "toy_momentum"
    init_lr: float = 0.05
    init_beta: float = 0.5
    lr_shape: tuple[int, ...] = ()  # e.g. (dim,): one learning rate per coordinate of a vector


    def init_theta(self, key):
        del key
        return {
            "log_lr": jnp.full(self.lr_shape, jnp.log(self.init_lr), jnp.float32),
            "logit_beta": jnp.asarray(jnp.log(self.init_beta / (1 - self.init_beta)), jnp.float32),
        }

    def init_state(self, params):
        return jax.tree.map(jnp.zeros_like, params)

    def update(self, theta, grads, state, params, *, loss=None, roles=None, num_steps=None):
        del params, loss, roles, num_steps
        beta = jax.nn.sigmoid(theta["logit_beta"])
        lr = jnp.exp(theta["log_lr"])
        momentum = jax.tree.map(lambda m, g: beta * m + g, state, grads)
        updates = jax.tree.map(lambda m: -lr * m, momentum)
        return updates, momentum
