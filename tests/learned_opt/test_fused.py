"""The fused (elementwise) step agrees with the reference (stacked) step, values and meta-gradients."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import learned_opt
from tests.learned_opt.conftest import mixed_params

BASE = learned_opt.MLPLOpt(hidden_sizes=(8, 4), loss_features=True, mup=True, base_fan_in=8)
FUSED = dataclasses.replace(BASE, impl="fused")
REF = dataclasses.replace(BASE, impl="reference")


def _random_theta(arch):
    """Theta with a non-trivial MLP (the default init makes the MLP's output tiny)."""
    theta = arch.init_theta(jax.random.key(0))
    keys = iter(jax.random.split(jax.random.key(1), 16))
    return jax.tree.map(lambda x: x + 0.3 * jax.random.normal(next(keys), x.shape), theta)


def _run(arch, theta, params, steps=3):
    state = arch.init_state(params)
    out = []
    for i in range(steps):
        grads = jax.tree.map(lambda p, i=i: jax.random.normal(jax.random.key(10 + i), p.shape, p.dtype), params)
        updates, state = jax.jit(arch.update)(theta, grads, state, params, loss=jnp.float32(2.0 - 0.1 * i))
        out.append(updates)
    return out, state


@pytest.mark.parametrize(
    "dtype, normalizer_samples",
    [(jnp.float32, 16384), (jnp.bfloat16, 16384), (jnp.float32, 10)],
    ids=["f32-exact", "bf16-exact", "f32-grid"],  # 10 samples: every tensor but the scalar is gridded
)
def test_fused_matches_reference_on_mixed_pytrees(dtype, normalizer_samples):
    params = mixed_params(dtype)  # dense kernel, bias, conv kernel, scalar, vector
    theta = _random_theta(REF)
    ups_f, st_f = _run(dataclasses.replace(FUSED, normalizer_samples=normalizer_samples), theta, params)
    ups_r, st_r = _run(dataclasses.replace(REF, normalizer_samples=normalizer_samples), theta, params)
    tol = dict(rtol=1e-4, atol=1e-7) if dtype == jnp.float32 else dict(rtol=2e-2, atol=1e-5)
    for uf, ur in zip(ups_f, ups_r):
        for a, b in zip(jax.tree.leaves(uf), jax.tree.leaves(ur)):
            assert a.dtype == b.dtype == dtype
            np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), **tol)
    assert jax.tree.structure(st_f) == jax.tree.structure(st_r)
    # The updates are not trivially zero: the comparison means something.
    assert float(jnp.max(jnp.abs(ups_r[-1]["dense"]["kernel"].astype(jnp.float32)))) > 1e-5


def test_meta_gradient_through_fused_matches_reference():
    """Truncated backprop differentiates through the step: the custom JVP of the reduction must be right."""
    params = {"w": jax.random.normal(jax.random.key(2), (6, 5)), "b": jnp.zeros(5)}
    x = jax.random.normal(jax.random.key(3), (16, 6))

    def inner_loss(p):
        return jnp.mean(jnp.tanh(x @ p["w"] + p["b"]) ** 2)

    def meta_loss(theta, arch):
        p, s = params, arch.init_state(params)
        for _ in range(3):
            loss, g = jax.value_and_grad(inner_loss)(p)
            u, s = arch.update(theta, g, s, p, loss=loss)
            p = jax.tree.map(jnp.add, p, u)
        return inner_loss(p)

    theta = _random_theta(REF)
    g_f = jax.grad(meta_loss)(theta, FUSED)
    g_r = jax.grad(meta_loss)(theta, REF)
    for a, b in zip(jax.tree.leaves(g_f), jax.tree.leaves(g_r)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3, atol=1e-9)
    assert max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(g_r)) > 0


def test_fused_refuses_large_networks():
    with pytest.raises(ValueError, match="impl='fused'.*hidden_sizes=\\(32, 32\\)"):
        learned_opt.MLPLOpt(hidden_sizes=(32, 32), impl="fused")


@pytest.mark.parametrize(
    "rows, cols, max_samples", [(1024, 1024, 16384), (50000, 1, 16384), (7, 3000, 100), (5, 4, 20)]
)
def test_normalizer_grid_is_bounded_and_as_dense_as_allowed(rows, cols, max_samples):
    sr, sc = learned_opt.features.normalizer_strides(rows, cols, max_samples)
    n = -(-rows // sr) * -(-cols // sc)
    assert n <= max_samples
    # One step less thinning on either axis would exceed the budget (no needless thinning).
    assert sr == 1 or -(-rows // (sr - 1)) * -(-cols // sc) > max_samples
    assert sc == 1 or -(-rows // sr) * -(-cols // (sc - 1)) > max_samples
    assert learned_opt.features.normalizer_strides(rows, cols, 0) == (1, 1)


def test_grid_normalizers_estimate_the_exact_update():
    """On a 512 x 512 tensor a 4096-element grid gives nearly the exactly normalized update."""
    key = jax.random.key(7)
    params = {"w": jax.random.normal(key, (512, 512)) / 20.0, "b": jnp.zeros((512,))}
    theta = _random_theta(REF)
    exact, _ = _run(dataclasses.replace(FUSED, normalizer_samples=0), theta, params)
    grid, _ = _run(dataclasses.replace(FUSED, normalizer_samples=4096), theta, params)
    coarse, _ = _run(dataclasses.replace(FUSED, normalizer_samples=4), theta, params)
    rel = lambda a, b: float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))  # noqa: E731
    assert rel(grid[-1]["w"], exact[-1]["w"]) < 0.03
    # The grid matters: a 4-element "grid" gives a clearly different update.
    assert rel(coarse[-1]["w"], exact[-1]["w"]) > 3 * rel(grid[-1]["w"], exact[-1]["w"])


def test_normalizer_samples_validated():
    with pytest.raises(ValueError, match="normalizer_samples=-1"):
        learned_opt.MLPLOpt(normalizer_samples=-1)
