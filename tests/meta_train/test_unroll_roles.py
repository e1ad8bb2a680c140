"""mu-P roles reach the learned optimizer during unrolls, so the readout is not scaled twice."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import learned_opt
from meta_train.unroll import param_roles

PARAMS = {
    "input": {"kernel": jnp.ones((8, 64)), "bias": jnp.zeros(64)},
    "hidden_1": {"kernel": jnp.ones((64, 64)), "bias": jnp.zeros(64)},
    "readout": {"dense": {"kernel": jnp.ones((64, 10)), "bias": jnp.zeros(10)}},
}


def test_roles_only_for_mup_architectures():
    assert param_roles(learned_opt.ARCHITECTURES["mlp"], PARAMS) is None
    roles = param_roles(learned_opt.ARCHITECTURES["mulo"], PARAMS)
    assert roles["readout"]["dense"]["kernel"] == "output"
    assert roles["hidden_1"]["kernel"] == "hidden"
    assert roles["input"]["kernel"] == "input"


def test_readout_update_unscaled_at_any_width():
    """At 4x the base width, the hidden update shrinks 4x and the readout's does not."""
    arch = dataclasses.replace(learned_opt.ARCHITECTURES["mulo"], base_fan_in=16)
    theta = arch.init_theta(jax.random.key(0))
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(1), p.shape), PARAMS)
    u, _ = arch.update(theta, grads, arch.init_state(PARAMS), PARAMS, roles=param_roles(arch, PARAMS))
    u_plain, _ = dataclasses.replace(arch, mup=False).update(theta, grads, arch.init_state(PARAMS), PARAMS)
    np.testing.assert_allclose(u["hidden_1"]["kernel"], u_plain["hidden_1"]["kernel"] * 16 / 64, rtol=1e-5)
    np.testing.assert_allclose(u["readout"]["dense"]["kernel"], u_plain["readout"]["dense"]["kernel"], rtol=1e-6)
    np.testing.assert_allclose(u["input"]["kernel"], u_plain["input"]["kernel"], rtol=1e-6)
