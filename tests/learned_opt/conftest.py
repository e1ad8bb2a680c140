"""Pytrees shared by the learned_opt tests."""

import jax
import jax.numpy as jnp
import pytest


def mixed_params(dtype=jnp.float32):
    """A nested dict/list pytree with a dense kernel, a bias, a conv kernel, a scalar and a vector."""
    k = jax.random.split(jax.random.key(0), 4)
    return {
        "dense": {"kernel": jax.random.normal(k[0], (6, 5), dtype), "bias": jnp.zeros((5,), dtype)},
        "conv": [jax.random.normal(k[1], (3, 3, 2, 4), dtype) * 0.3],
        "scale": jnp.ones((), dtype),
        "vec": jax.random.normal(k[2], (7,), dtype),
    }


@pytest.fixture
def params():
    return mixed_params()


def train(tx, loss_fn, params, num_steps):
    """params after `num_steps` jitted steps of `tx` on `loss_fn(params)`, the loss passed along."""
    import optax

    @jax.jit
    def step(p, s):
        loss, g = jax.value_and_grad(loss_fn)(p)
        u, s = tx.update(g, s, p, loss=loss)
        return optax.apply_updates(p, u), s

    p, s = params, tx.init(params)
    for _ in range(num_steps):
        p, s = step(p, s)
    return p
