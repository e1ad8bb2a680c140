"""Every registry entry, in every implementation it accepts, inside the containers users put an
optax transform in: flax nnx.Optimizer and flax linen TrainState, with the optimizer inside
optax.chain and `loss=` forwarded (haiku's params are plain dicts: tests/learned_opt/test_export.py).

Both containers must take the same steps as a plain optax loop from the same parameters. The
second and third steps are where a container that re-wraps the optimizer state (nnx turns our
NamedTuples into its own State) breaks an implementation that relies on the state's type.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state

import learned_opt
from tests.learned_opt.conftest import train

STEPS = 3
X_BxD = jax.random.normal(jax.random.key(1), (16, 4))


def _cases():
    cases = []
    for name, arch in learned_opt.ARCHITECTURES.items():
        # mu_velo is velo with another per-tensor constant: its own impl only (CI time).
        for impl in ("reference", "fused", "native") if name != "mu_velo" else (arch.impl,):
            try:
                cases.append(pytest.param(dataclasses.replace(arch, impl=impl), id=f"{name}-{impl}"))
            except ValueError:  # the implementation refuses this network size
                continue
    return cases


class _NNXModel(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(4, 8, rngs=rngs)
        self.out = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.hidden(x)))


class _LinenModel(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1, name="out")(jax.nn.relu(nn.Dense(8, name="hidden")(x)))


def _linen_params(model):
    """The nnx model's weights as linen params (the same network, the same numbers)."""
    return {"params": {name: {"kernel": layer.kernel[...], "bias": layer.bias[...]}
                       for name, layer in (("hidden", model.hidden), ("out", model.out))}}


def _loss(params):
    return jnp.mean(_LinenModel().apply(params, X_BxD) ** 2)


@pytest.mark.parametrize("arch", _cases())
def test_nnx_optimizer_and_linen_train_state_step_like_a_plain_loop(arch):
    tx = optax.chain(optax.clip_by_global_norm(10.0), learned_opt.to_optax(arch, arch.init_theta(jax.random.key(0)), num_steps=100))
    model = _NNXModel(nnx.Rngs(0))
    params0 = _linen_params(model)

    plain = train(tx, _loss, params0, STEPS)
    assert float(_loss(plain)) < float(_loss(params0))

    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def nnx_step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean(m(X_BxD) ** 2))(model)
        optimizer.update(model, grads, loss=loss)

    linen = train_state.TrainState.create(apply_fn=_LinenModel().apply, params=params0, tx=tx)

    @jax.jit
    def linen_step(state):
        loss, grads = jax.value_and_grad(_loss)(state.params)
        if not arch.loss_features:
            return state.apply_gradients(grads=grads)
        # apply_gradients cannot forward `loss=`: the manual step.
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params, loss=loss)
        return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state)

    for _ in range(STEPS):
        nnx_step(model, optimizer)
        linen = linen_step(linen)
    for got in (_linen_params(model), linen.params):
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(plain), strict=True):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-7)
