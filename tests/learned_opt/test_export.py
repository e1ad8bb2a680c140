"""`to_optax` in the places users put an optax transform."""

import dataclasses

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import learned_opt
from tests.learned_opt.conftest import mixed_params

# A larger step than the default (1e-3) so that 40 steps make clear progress.
ARCH = learned_opt.MLPLOpt(hidden_sizes=(8,), step_mult=1e-2)
THETA = ARCH.init_theta(jax.random.key(0))

X_BxD = jax.random.normal(jax.random.key(1), (64, 8))
Y_Bx1 = jnp.sin(X_BxD @ jax.random.normal(jax.random.key(2), (8, 1)))


def _mse(pred, y=Y_Bx1):
    return jnp.mean((pred - y) ** 2)


def _train(loss_fn, params, tx, steps=40):
    """Plain loop; returns (first loss, last loss)."""
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params, loss=loss)
        return optax.apply_updates(params, updates), state, loss

    first = None
    for _ in range(steps):
        params, state, loss = step(params, state)
        first = float(loss) if first is None else first
    return first, float(loss_fn(params))


def test_inside_optax_chain_with_loss_forwarded():
    # Reads `loss`, so optax.chain must forward it.
    arch = dataclasses.replace(learned_opt.ARCHITECTURES["mlp_loss"], step_mult=1e-2)
    tx = optax.chain(optax.clip_by_global_norm(10.0), learned_opt.to_optax(arch, arch.init_theta(jax.random.key(0))))
    params = {"w": jnp.zeros((8, 1)), "b": jnp.zeros((1,))}
    first, last = _train(lambda p: _mse(X_BxD @ p["w"] + p["b"]), params, tx)
    assert last < 0.85 * first  # a linear model cannot fit much further than this


def test_missing_loss_is_a_clear_error():
    arch = learned_opt.ARCHITECTURES["mlp_loss"]
    tx = learned_opt.to_optax(arch, arch.init_theta(jax.random.key(0)))
    p = {"w": jnp.zeros((3, 2))}
    with pytest.raises(ValueError, match="needs the loss"):
        tx.update(p, tx.init(p), p)


def test_missing_params_is_a_clear_error():
    tx = learned_opt.to_optax(ARCH, THETA)
    p = {"w": jnp.zeros((3, 2))}
    with pytest.raises(ValueError, match="needs params"):
        tx.update(p, tx.init(p))


def test_haiku_params():
    net = hk.without_apply_rng(hk.transform(lambda x: hk.nets.MLP([16, 1])(x)))
    params = net.init(jax.random.key(0), X_BxD)
    first, last = _train(lambda p: _mse(net.apply(p, X_BxD)), params, learned_opt.to_optax(ARCH, THETA))
    assert last < 0.7 * first


def test_nested_dict_list_pytree():
    k1, k2 = jax.random.split(jax.random.key(4))
    params = {
        "layers": [
            {"w": jax.random.normal(k1, (8, 4)) / 3, "b": jnp.zeros(4)},
            {"w": jax.random.normal(k2, (4, 1)) / 2, "b": jnp.zeros(1)},
        ]
    }

    def loss_fn(p):
        h = jnp.tanh(X_BxD @ p["layers"][0]["w"] + p["layers"][0]["b"])
        return _mse(h @ p["layers"][1]["w"] + p["layers"][1]["b"])

    first, last = _train(loss_fn, params, learned_opt.to_optax(ARCH, THETA))
    assert last < 0.7 * first


def test_bf16_params_keep_dtype_and_f32_state():
    params = mixed_params(jnp.bfloat16)
    tx = learned_opt.to_optax(ARCH, THETA)
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    assert all(u.dtype == jnp.bfloat16 for u in jax.tree.leaves(updates))
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(state.accumulators))
    # bf16 params agree with the same computation in f32, to bf16 precision.
    params32 = jax.tree.map(lambda p: p.astype(jnp.float32), params)
    updates32, _ = tx.update(jax.tree.map(jnp.ones_like, params32), tx.init(params32), params32)
    for u, u32 in zip(jax.tree.leaves(updates), jax.tree.leaves(updates32)):
        np.testing.assert_allclose(np.asarray(u, np.float32), np.asarray(u32), rtol=2e-2, atol=1e-6)


def test_bf16_accumulators_halve_the_momenta_bytes_and_keep_second_moments_f32():
    params = mixed_params()
    f32 = learned_opt.to_optax(ARCH, THETA).init(params)
    bf16 = learned_opt.to_optax(learned_opt.MLPLOpt(hidden_sizes=(8,), accumulator_dtype="bfloat16"), THETA).init(params)
    is_acc = lambda x: isinstance(x, learned_opt.accumulators.LeafAccumulators)  # noqa: E731
    accs = lambda s: jax.tree.leaves(s.accumulators, is_leaf=is_acc)  # noqa: E731
    nbytes = lambda s, field: sum(getattr(a, field).nbytes for a in accs(s))  # noqa: E731
    assert nbytes(bf16, "momentum_MxRxC") * 2 == nbytes(f32, "momentum_MxRxC")
    for field in ("rms_RxC", "row_AxR", "col_AxC"):
        assert nbytes(bf16, field) == nbytes(f32, field) > 0
        assert all(getattr(a, field).dtype == jnp.float32 for a in accs(bf16))
