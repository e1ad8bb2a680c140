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
    step = jax.jit(arch.update)  # one jit object: a new one per step would compile every step
    out = []
    for i in range(steps):
        grads = jax.tree.map(lambda p, i=i: jax.random.normal(jax.random.key(10 + i), p.shape, p.dtype), params)
        updates, state = step(theta, grads, state, params, loss=jnp.float32(2.0 - 0.1 * i))
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
    sr, sc = learned_opt.normalizers.normalizer_strides(rows, cols, max_samples)
    n = -(-rows // sr) * -(-cols // sc)
    assert n <= max_samples
    # One step less thinning on either axis would exceed the budget (no needless thinning).
    assert sr == 1 or -(-rows // (sr - 1)) * -(-cols // sc) > max_samples
    assert sc == 1 or -(-rows // sr) * -(-cols // (sc - 1)) > max_samples
    assert learned_opt.normalizers.normalizer_strides(rows, cols, 0) == (1, 1)


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


def _steps_with_grads(arch, theta, params, grads_list):
    state, step = arch.init_state(params), jax.jit(arch.update)
    for grads in grads_list:
        updates, state = step(theta, grads, state, params, loss=jnp.float32(1.0))
    return updates


@pytest.mark.parametrize("arch", [FUSED, REF], ids=["fused", "reference"])
def test_sparse_gradient_falls_back_to_exact_normalizers(arch):
    """Rows 1 and 3 carry all the gradient (an embedding's few active rows); the grid (every 8th
    row) misses them, so its estimate is off by far more than the tolerance: the exact
    normalizers must be used, giving the update of normalizer_samples=0."""
    params = {"emb": jax.random.normal(jax.random.key(3), (512, 64))}
    g = jnp.zeros((512, 64)).at[jnp.array([1, 3])].set(jax.random.normal(jax.random.key(4), (2, 64)))
    assert learned_opt.normalizers.normalizer_strides(512, 64, 4096)[0] == 8
    theta = _random_theta(REF)
    grads_list = [{"emb": g * (1.0 + 0.1 * i)} for i in range(2)]
    grid = _steps_with_grads(dataclasses.replace(arch, normalizer_samples=4096), theta, params, grads_list)
    exact = _steps_with_grads(dataclasses.replace(arch, normalizer_samples=0), theta, params, grads_list)
    np.testing.assert_allclose(np.asarray(grid["emb"]), np.asarray(exact["emb"]), rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("arch", [FUSED, REF], ids=["fused", "reference"])
def test_past_gradient_outlier_falls_back_to_exact_normalizers(arch):
    """One element off the grid once had a huge gradient: the momenta's RMS is that element's,
    which the grid cannot see although today's gradient looks uniform. Adafactor's row
    statistic remembers it, so the exact normalizers are used."""
    params = {"w": jax.random.normal(jax.random.key(3), (512, 64)) / 8}
    normal = [jax.random.normal(jax.random.key(20 + i), (512, 64)) * 1e-3 for i in range(3)]
    grads_list = [{"w": normal[0].at[1, 5].set(1e3)}, {"w": normal[1]}, {"w": normal[2]}]
    theta = _random_theta(REF)
    grid = _steps_with_grads(dataclasses.replace(arch, normalizer_samples=4096), theta, params, grads_list)
    exact = _steps_with_grads(dataclasses.replace(arch, normalizer_samples=0), theta, params, grads_list)
    np.testing.assert_allclose(np.asarray(grid["w"]), np.asarray(exact["w"]), rtol=1e-4, atol=1e-8)


def test_rows_without_gradient_stay_bounded_on_a_grid():
    """Rows 1 and 3 never had a gradient (dead units): rsqrt of their zero second moment is
    capped, so a grid that misses them does not turn it into a 1e9 network input. Theta makes
    the update the normalized rsqrt(v) feature itself (MLP output 0, skip one-hot on it)."""
    arch = dataclasses.replace(REF, normalizer_samples=4096, mup=False)
    theta = arch.init_theta(jax.random.key(0))
    theta["mlp"][-1] = jax.tree.map(jnp.zeros_like, theta["mlp"][-1])
    theta["skip"] = jnp.zeros_like(theta["skip"]).at[arch.feature_names().index("rsqrt_v")].set(1.0)
    params = {"w": jax.random.normal(jax.random.key(3), (512, 64)) / 8}
    live = jnp.ones((512, 1)).at[jnp.array([1, 3])].set(0.0)
    grads_list = [{"w": live * jax.random.normal(jax.random.key(10 + i), (512, 64)) * 1e-3} for i in range(2)]
    feature = _steps_with_grads(arch, theta, params, grads_list)["w"] / arch.step_mult
    assert float(jnp.sqrt(jnp.mean(jnp.square(feature * live)))) == pytest.approx(1.0, rel=0.1)
    assert 1.0 < float(jnp.max(jnp.abs(feature * (1 - live)))) <= 1.1 * learned_opt.features.RSQRT_CAP


def test_grid_or_exact_under_vmap_and_grad():
    """vmap (the evaluation harness, populations) turns the cond into a select of both
    branches: each member must still get its own choice. Truncated backprop goes through it."""
    arch = dataclasses.replace(FUSED, normalizer_samples=4096)
    theta = _random_theta(REF)
    params = {"w": jax.random.normal(jax.random.key(3), (512, 64)) / 8}
    dense = jax.random.normal(jax.random.key(5), (512, 64))
    sparse = jnp.zeros((512, 64)).at[1].set(1.0)  # off the grid: exact normalizers

    def update(theta, g):
        return arch.update(theta, {"w": g}, arch.init_state(params), params, loss=jnp.float32(1.0))[0]["w"]

    batched = jax.jit(jax.vmap(update, in_axes=(None, 0)))(theta, jnp.stack([dense, sparse]))
    for i, g in enumerate([dense, sparse]):
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(jax.jit(update)(theta, g)), rtol=1e-5, atol=1e-9)
    meta_grad = jax.grad(lambda t: jnp.sum(update(t, sparse) ** 2) + jnp.sum(update(t, dense) ** 2))(theta)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(meta_grad))
    assert float(jnp.max(jnp.abs(meta_grad["skip"]))) > 0
