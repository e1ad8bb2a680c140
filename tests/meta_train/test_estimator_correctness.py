"""The estimators against the exact meta-gradient of a noiseless quadratic over a short horizon.

Setup: one quadratic (4 coordinates, curvatures 0.5..4, start at 0, no gradient noise), inner
optimizer = momentum SGD with a learnable learning rate per coordinate and a learnable momentum
(theta has 5 numbers, so the cosine is a real test of direction). Horizon T = 16 inner steps.
The exact gradient of the full-horizon meta-loss comes from a plain Python unroll written here,
independently of meta_train. For truncation length K, the K/T-weighted sum of the T/K
per-truncation estimates over one episode estimates that same gradient.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests.meta_train.toy_lopt import MomentumLOpt

from meta_train.estimators import ESTIMATORS
from meta_train.unroll import UnrollConfig
from tasks.quadratic import QuadraticTask
from tasks.stacking import stack_tasks

HORIZON = 16
DIM = 4
ARCH = MomentumLOpt(init_lr=0.3, lr_shape=(DIM,))


def flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


@pytest.fixture(scope="module")
def problem():
    # Fixed numbers (not sampled), so the test does not depend on the PRNG implementation.
    task = QuadraticTask(
        curvature=jnp.array([0.5, 1.0, 2.0, 4.0]), target=jnp.array([1.0, -1.0, 0.5, 2.0]),
        init_scale=jnp.float32(0.0), noise_std=jnp.float32(0.0), dim=DIM,
    )
    pool = stack_tasks([task])
    task = jax.tree.map(lambda x: x[0], pool)
    theta = ARCH.init_theta(None)

    def full_horizon_meta_loss(theta):
        params = task.init(jax.random.PRNGKey(0))
        momentum = ARCH.init_state(params)
        batch = {"noise": jnp.zeros(DIM)}
        scale = task.loss(params, batch)
        total = 0.0
        for _ in range(HORIZON):
            loss, grads = jax.value_and_grad(task.loss)(params, batch)
            beta = jax.nn.sigmoid(theta["logit_beta"])
            momentum = jax.tree.map(lambda m, g: beta * m + g, momentum, grads)
            params = jax.tree.map(lambda p, m: p - jnp.exp(theta["log_lr"]) * m, params, momentum)
            total = total + loss
        return total / HORIZON / scale

    exact = flat(jax.grad(full_horizon_meta_loss)(theta))
    return pool, theta, exact


def episode_estimate(problem, name, truncation_length, num_pairs, seed=0, **kwargs):
    """K/T * sum of the per-truncation estimates over one whole episode."""
    pool, theta, _ = problem
    cfg = UnrollConfig(
        truncation_length=truncation_length, min_horizon=HORIZON, max_horizon=HORIZON,
        stagger=False,
    )
    estimator = ESTIMATORS[name](arch=ARCH, unroll=cfg, num_pairs=num_pairs, sigma=0.01, **kwargs)
    states = estimator.init_states(theta, pool, jax.random.PRNGKey(seed))
    estimate = jax.jit(estimator.estimate)
    total = 0.0
    for i in range(HORIZON // truncation_length):
        grad, states, metrics = estimate(theta, pool, states, jax.random.PRNGKey(100 * seed + i))
        assert float(metrics["grad/dropped"]) == 0.0
        total = total + flat(grad)
    return total * truncation_length / HORIZON


def cosine(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def rel_err(a, exact):
    return float(np.linalg.norm(a - exact) / np.linalg.norm(exact))


def test_exact_gradient_is_informative(problem):
    """Guards the test set-up: the gradient is non-trivial in direction, not just one axis."""
    _, _, exact = problem
    assert np.all(np.isfinite(exact))
    assert np.linalg.norm(exact) > 1e-3
    assert np.max(np.abs(exact)) < 0.95 * np.linalg.norm(exact)


def test_tbptt_over_full_horizon_is_exact(problem):
    _, _, exact = problem
    estimate = episode_estimate(problem, "tbptt", HORIZON, num_pairs=2)
    np.testing.assert_allclose(estimate, exact, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", ["pes", "es"])
def test_antithetic_estimators_average_to_exact_gradient_over_full_horizon(problem, name):
    _, _, exact = problem
    estimate = episode_estimate(problem, name, HORIZON, num_pairs=2048)
    assert cosine(estimate, exact) > 0.9
    assert rel_err(estimate, exact) < 0.15


def test_pes_unbiased_where_truncated_backprop_is_biased(problem):
    """Truncations of 4 steps over a 16-step horizon: PES still recovers the full gradient;
    truncated backprop (and truncated ES) miss how theta shaped each truncation's start state."""
    _, _, exact = problem
    k = 4
    pes = episode_estimate(problem, "pes", k, num_pairs=2048)
    tbptt = episode_estimate(problem, "tbptt", k, num_pairs=2)
    es = episode_estimate(problem, "es", k, num_pairs=2048)
    assert cosine(pes, exact) > 0.9
    assert rel_err(pes, exact) < 0.15
    assert rel_err(tbptt, exact) > 0.2
    assert rel_err(es, exact) > 0.2
    assert rel_err(pes, exact) < 0.5 * rel_err(tbptt, exact)


def test_pes_error_shrinks_with_more_pairs(problem):
    """The PES error is variance, not bias: 16x the samples cuts it substantially."""
    _, _, exact = problem
    few = np.mean([rel_err(episode_estimate(problem, "pes", 4, 16, seed=s), exact) for s in (1, 2, 3)])
    many = rel_err(episode_estimate(problem, "pes", 4, 2048, seed=4), exact)
    assert many < 0.6 * few


def test_pes_forgets_the_previous_episode_at_a_reset(problem):
    """At the first truncation of a new episode PES's accumulated noise is that truncation's
    noise alone, so its estimate equals truncated ES's from the same state and key, exactly.
    Keeping the old episode's noise would credit this episode's loss to perturbations that
    never shaped it (more variance, and no longer the estimator the papers analyse)."""
    pool, theta, _ = problem
    k = 4
    cfg = UnrollConfig(truncation_length=k, min_horizon=HORIZON, max_horizon=HORIZON, stagger=False)
    pes = ESTIMATORS["pes"](arch=ARCH, unroll=cfg, num_pairs=8, sigma=0.01)
    es = ESTIMATORS["es"](arch=ARCH, unroll=cfg, num_pairs=8, sigma=0.01)
    states = pes.init_states(theta, pool, jax.random.PRNGKey(0))
    estimate = jax.jit(pes.estimate)
    for i in range(HORIZON // k):  # one whole episode: the next call resets every member
        _, states, _ = estimate(theta, pool, states, jax.random.PRNGKey(i))
    assert float(jnp.max(jnp.abs(flat(states.accum)))) > 0  # it did accumulate
    key = jax.random.PRNGKey(99)
    pes_grad, _, metrics = estimate(theta, pool, states, key)
    es_grad, _, _ = jax.jit(es.estimate)(theta, pool, states.unroll, key)
    assert float(metrics["unroll/resets"]) > 0
    np.testing.assert_allclose(flat(pes_grad), flat(es_grad), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name, k", [("es", HORIZON), ("pes", HORIZON), ("pes", 4)])
def test_sign_of_the_difference_keeps_the_direction(problem, name, k):
    """E[sign(eps . g) eps] is along g: the sign-only estimate points where the exact gradient
    does (its scale is not the gradient's), over a whole horizon and across PES truncations."""
    _, _, exact = problem
    estimate = episode_estimate(problem, name, k, num_pairs=2048, difference="sign")
    assert cosine(estimate, exact) > 0.9


def test_sign_weighs_every_pair_alike_and_value_does_not():
    """One pair with a loss difference a million times the other's: by value it sets the
    estimate, by sign both pairs count the same."""
    from meta_train.estimators.antithetic import gradient
    from meta_train.unroll import TruncationOutput

    cfg = UnrollConfig(truncation_length=4, min_horizon=16, max_horizon=16)
    out = TruncationOutput(meta_loss=jnp.array([[1e3, 0.0], [0.0, 1e-3]]), raw_loss=jnp.zeros((2, 2)),
                           diverged=jnp.zeros((2, 2), bool))
    direction = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}  # pair 0 credits w[0], pair 1 w[1]
    by_value, _ = gradient(direction, out, jnp.zeros(2, bool), 0.1, cfg)
    by_sign, _ = gradient(direction, out, jnp.zeros(2, bool), 0.1, cfg, "sign")
    assert abs(float(by_value["w"][0])) > 1e5 * abs(float(by_value["w"][1]))
    np.testing.assert_allclose(np.asarray(by_sign["w"]), [2.5, -2.5])  # +-1 / (2 sigma) / 2 pairs


def test_difference_must_be_value_or_sign():
    cfg = UnrollConfig(truncation_length=4, min_horizon=16, max_horizon=16)
    with pytest.raises(ValueError, match="difference='sgn'"):
        ESTIMATORS["pes"](arch=ARCH, unroll=cfg, difference="sgn")
