"""mu-P update scaling: shape inference, explicit roles, and width-independence of update size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import learned_opt
from learned_opt import mup


def test_shape_inference_and_scales():
    assert mup.infer_role((5,)) == "vector" and mup.infer_role(()) == "vector"
    assert mup.infer_role((4, 8)) == "hidden" and mup.infer_role((3, 3, 4, 8)) == "hidden"
    assert mup.update_scale((64, 8), "hidden", 32) == 0.5
    assert mup.update_scale((3, 3, 4, 8), "hidden", 4) == 1.0  # width = in channels, not 3*3*4
    assert mup.update_scale((3, 3, 16, 8), "hidden", 4) == 0.25
    assert mup.update_scale((64, 8), "input", 32) == 1.0
    assert mup.update_scale((64, 8), "output", 32) == 1.0  # the readout's multiplier does the scaling
    assert mup.update_scale((1000, 8), "embedding", 32) == 1.0
    assert mup.update_scale((64,), "hidden", 32) == 1.0  # vectors are never scaled


def test_explicit_roles_are_a_prefix():
    params = {"embed": jnp.zeros((10, 4)), "blocks": [{"w": jnp.zeros((4, 4)), "b": jnp.zeros(4)}], "head": jnp.zeros((4, 10))}
    assert mup.resolve_roles(params) == ["vector", "hidden", "hidden", "hidden"]
    roles = {"embed": "embedding", "blocks": None, "head": "output"}
    # Flattening order is sorted dict keys: blocks/0/b, blocks/0/w, embed, head.
    assert mup.resolve_roles(params, roles) == ["vector", "hidden", "embedding", "output"]


def test_bad_roles_are_clear_errors():
    params = {"a": jnp.zeros((3, 3)), "b": jnp.zeros(3)}
    with pytest.raises(ValueError, match=r"Unknown mu-P role 'hiden' for parameter 'a'"):
        mup.resolve_roles(params, {"a": "hiden", "b": None})
    with pytest.raises(ValueError, match="pytree prefix of params"):
        mup.resolve_roles(params, {"a": "hidden"})


def _hidden_update_rms(arch, width):
    """RMS of the update of a (width, width) hidden kernel after a few steps of the same gradient statistics."""
    theta = arch.init_theta(jax.random.key(0))
    tx = learned_opt.to_optax(arch, theta)
    params = {"w": jax.random.normal(jax.random.key(1), (width, width)) / np.sqrt(width), "b": jnp.zeros(width)}
    state = tx.init(params)
    for i in range(3):
        g = {"w": jax.random.normal(jax.random.key(10 + i), (width, width)), "b": jnp.ones(width)}
        updates, state = tx.update(g, state, params)
    return float(jnp.sqrt(jnp.mean(updates["w"] ** 2))), float(jnp.sqrt(jnp.mean(updates["b"] ** 2)))


def test_mup_update_shrinks_as_one_over_fan_in_and_vectors_do_not():
    arch = learned_opt.ARCHITECTURES["mulo"]
    (w64, b64), (w256, b256) = _hidden_update_rms(arch, 64), _hidden_update_rms(arch, 256)
    np.testing.assert_allclose(w64 / w256, 4.0, rtol=0.1)
    np.testing.assert_allclose(b64 / b256, 1.0, rtol=0.1)
    # Without mu-P the per-entry update size does not depend on width.
    (s64, _), (s256, _) = _hidden_update_rms(learned_opt.ARCHITECTURES["mlp"], 64), _hidden_update_rms(
        learned_opt.ARCHITECTURES["mlp"], 256
    )
    np.testing.assert_allclose(s64 / s256, 1.0, rtol=0.1)


def test_roles_reach_the_update_through_to_optax():
    arch = learned_opt.ARCHITECTURES["mulo"]
    theta = arch.init_theta(jax.random.key(0))
    params = {"embed": jnp.ones((256, 16)), "head": jnp.ones((256, 16))}
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(2), p.shape), params)
    tx = learned_opt.to_optax(arch, theta, roles={"embed": "embedding", "head": "hidden"})
    u, _ = tx.update(grads, tx.init(params), params)
    # Same gradient, same features: the only difference is the mu-P factor base / width.
    factor = arch.base_fan_in / 256
    np.testing.assert_allclose(np.asarray(u["head"]), np.asarray(u["embed"]) * factor, rtol=1e-5, atol=1e-12)
