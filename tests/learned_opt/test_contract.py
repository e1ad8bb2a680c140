"""One contract, every registered architecture (as optax's alias_test does for its optimizers)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import learned_opt
from tests.learned_opt.conftest import mixed_params

ARCH_NAMES = sorted(learned_opt.ARCHITECTURES)


def _structure_and_dtypes(tree):
    return jax.tree.structure(tree), [x.dtype for x in jax.tree.leaves(tree)]


@pytest.fixture(scope="module", params=ARCH_NAMES)
def setup(request):
    """(arch, tx, jitted step, trace counter), compiled once per architecture."""
    arch = learned_opt.ARCHITECTURES[request.param]
    # Every architecture accepts num_steps; those that read the horizon need it.
    tx = learned_opt.to_optax(arch, arch.init_theta(jax.random.key(0)), num_steps=100)
    traces = []

    @jax.jit
    def step(params, state, grads):
        traces.append(None)  # runs only while tracing
        updates, state = tx.update(grads, state, params, loss=jnp.float32(1.5))
        return optax.apply_updates(params, updates), state, updates

    return arch, tx, step, traces


def test_state_structure_stable_and_no_recompile(setup):
    arch, tx, step, traces = setup
    params = mixed_params()
    state = tx.init(params)
    before = _structure_and_dtypes(state)
    grads = jax.tree.map(jnp.ones_like, params)
    for _ in range(3):
        params, state, _ = step(params, state, grads)
        assert _structure_and_dtypes(state) == before
    assert len(traces) == 1, f"{arch!r}: the step was traced {len(traces)} times, expected once"
    assert int(state.count) == 3


@pytest.mark.parametrize("magnitude", [0.0, 1e-30, 1e30])
def test_updates_finite_for_extreme_gradients(setup, magnitude):
    arch, tx, step, _ = setup
    params = mixed_params()
    state = tx.init(params)
    signs = jax.tree.map(lambda p: jnp.sign(jax.random.normal(jax.random.key(3), p.shape)), params)
    grads = jax.tree.map(lambda s: (s * magnitude).astype(jnp.float32), signs)
    for _ in range(3):
        params, state, updates = step(params, state, grads)
        for leaf in jax.tree.leaves((updates, params, state)):
            assert np.all(np.isfinite(np.asarray(leaf, np.float32))), f"{arch!r}: non-finite at |g|={magnitude}"


def test_updates_match_param_structure_and_dtype(setup):
    _, tx, step, _ = setup
    params = mixed_params()
    _, _, updates = step(params, tx.init(params), jax.tree.map(jnp.ones_like, params))
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
        assert u.shape == p.shape and u.dtype == p.dtype


@pytest.mark.parametrize("name", ARCH_NAMES)
def test_init_theta_deterministic(name):
    arch = learned_opt.ARCHITECTURES[name]
    a, b = arch.init_theta(jax.random.key(7)), arch.init_theta(jax.random.key(7))
    c = arch.init_theta(jax.random.key(8))
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(c)))


@pytest.mark.parametrize("name", [n for n in ARCH_NAMES if isinstance(learned_opt.ARCHITECTURES[n], learned_opt.MLPLOpt)])
def test_mlp_theta_counted(name):
    arch = learned_opt.ARCHITECTURES[name]
    a = arch.init_theta(jax.random.key(7))
    sizes = (arch.num_features, *arch.hidden_sizes, 2)
    expected = sum(i * o + o for i, o in zip(sizes[:-1], sizes[1:])) + arch.num_tensor_features + 1
    assert learned_opt.num_params(a) == expected


def test_default_network_is_39_32_32_2():
    arch = learned_opt.ARCHITECTURES["mlp"]
    assert arch.num_features == 39 == len(arch.feature_names())
    shapes = [layer["w"].shape for layer in arch.init_theta(jax.random.key(0))["mlp"]]
    assert shapes == [(39, 32), (32, 32), (32, 2)]
