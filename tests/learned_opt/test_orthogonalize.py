"""Newton-Schulz orthogonalization (learned_opt.orthogonalize) and VeLOLOpt's `orthogonalize`."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import learned_opt
from learned_opt.orthogonalize import newton_schulz, orthogonalize_like

MU_VELO = learned_opt.ARCHITECTURES["mu_velo"]


@pytest.mark.parametrize("shape", [(48, 24), (24, 48)])
def test_newton_schulz_keeps_the_singular_vectors_and_evens_the_values(shape):
    m = jax.random.normal(jax.random.key(0), shape) @ jnp.diag(jnp.logspace(-1, 1, shape[1]))
    o = np.asarray(newton_schulz(m))
    s = np.linalg.svd(o, compute_uv=False)
    assert s.min() > 0.5 and s.max() < 1.25, s  # from a 100x spread to within ~2x
    u, _, vt = np.linalg.svd(np.asarray(m), full_matrices=False)
    polar = u @ vt  # the exact orthogonal factor
    cos = np.sum(o * polar) / (np.linalg.norm(o) * np.linalg.norm(polar))
    assert cos > 0.95, cos


def test_orthogonalize_like_keeps_shape_dtype_and_rms_and_reads_a_kernel_as_fan_in_by_out():
    u = 0.01 * jax.random.normal(jax.random.key(1), (3, 3, 16, 8))
    v = orthogonalize_like(u)
    assert v.shape == u.shape and v.dtype == u.dtype
    rms = lambda x: float(jnp.sqrt(jnp.mean(jnp.square(x))))
    assert rms(v) == pytest.approx(rms(u), rel=1e-5)
    s = np.linalg.svd(np.asarray(v).reshape(-1, 8), compute_uv=False)
    assert s.max() / s.min() < 2.0
    with pytest.raises(ValueError, match="shape \\(5,\\)"):
        orthogonalize_like(jnp.ones((5,)))


def test_velo_orthogonalize_changes_hidden_matrices_only_and_keeps_their_step_size():
    k1, k2 = jax.random.split(jax.random.key(2))
    params = {"hidden": 0.3 * jax.random.normal(k1, (32, 16)), "bias": jnp.zeros((16,)),
              "readout": 0.3 * jax.random.normal(k2, (16, 4))}
    roles = {"hidden": "hidden", "bias": "vector", "readout": "output"}
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(9), p.shape), params)
    theta = MU_VELO.init_theta(jax.random.key(0))
    ortho = dataclasses.replace(MU_VELO, orthogonalize=True)
    got, want = {}, {}
    for arch, out in ((MU_VELO, want), (ortho, got)):
        tx = learned_opt.to_optax(arch, theta, roles=roles, num_steps=100)
        state = tx.init(params)
        for _ in range(3):
            u, state = tx.update(grads, state, params, loss=1.0)
        out.update(u)
    np.testing.assert_array_equal(got["bias"], want["bias"])
    np.testing.assert_array_equal(got["readout"], want["readout"])
    assert not np.allclose(got["hidden"], want["hidden"])
    assert float(jnp.linalg.norm(got["hidden"])) == pytest.approx(float(jnp.linalg.norm(want["hidden"])), rel=1e-4)
    s = np.linalg.svd(np.asarray(got["hidden"]), compute_uv=False)
    s0 = np.linalg.svd(np.asarray(want["hidden"]), compute_uv=False)
    assert s.max() / s.min() < s0.max() / s0.min()
    with pytest.raises(ValueError, match="orthogonalize=1"):
        dataclasses.replace(MU_VELO, orthogonalize=1)
