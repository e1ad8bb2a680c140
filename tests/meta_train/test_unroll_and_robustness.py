"""Population mechanics (horizons, staggering, resets, shared batches) and divergence handling."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests.meta_train.toy_lopt import MomentumLOpt

from meta_train import learner as learner_lib
from meta_train import unroll as unroll_lib
from meta_train.estimators import ESTIMATORS
from meta_train.unroll import UnrollConfig
from tasks.quadratic import QuadraticFamily
from tasks.stacking import stack_tasks

FAMILY = QuadraticFamily(dim=4, min_curvature=0.5, max_curvature=2.0, noise_std=0.1)


@pytest.fixture(scope="module")
def pool():
    return unroll_lib.sample_task_pool(FAMILY, jax.random.PRNGKey(0), 8)


def test_horizons_log_uniform_multiples_of_k_and_staggered(pool):
    cfg = UnrollConfig(truncation_length=5, min_horizon=10, max_horizon=400, stagger=False)
    key = jax.random.PRNGKey(1)
    full = np.asarray(unroll_lib.init_population(MomentumLOpt(), cfg, pool, key, 512, 1).horizon[:, 0])
    assert np.all(full % 5 == 0) and full.min() >= 10 and full.max() <= 400
    # log-uniform: about half the mass below the geometric mean (63), not the arithmetic (205).
    assert 0.4 < np.mean(full < 63) < 0.6
    staggered = dataclasses.replace(cfg, stagger=True)
    states = unroll_lib.init_population(MomentumLOpt(), staggered, pool, key, 512, 1)
    horizon, step = np.asarray(states.horizon[:, 0]), np.asarray(states.step[:, 0])
    # First episodes start at step 0 and are shortened by a multiple of K, never to nothing.
    assert np.all(step == 0) and np.all(horizon % 5 == 0) and np.all((horizon >= 5) & (horizon <= full))
    kept = horizon / full
    assert np.histogram(kept, bins=4, range=(0, 1))[0].min() > 50  # resets spread over the episode
    assert len(np.unique(np.asarray(states.task_index))) == 8  # every pool task is used


def test_members_reset_at_horizon_with_new_seed(pool):
    arch = MomentumLOpt()
    cfg = UnrollConfig(truncation_length=4, min_horizon=8, max_horizon=8, stagger=False)
    est = ESTIMATORS["pes"](arch=arch, unroll=cfg, num_pairs=16, sigma=0.01)
    theta = arch.init_theta(None)
    states = est.init_states(theta, pool, jax.random.PRNGKey(0))
    estimate = jax.jit(est.estimate)
    rng0 = np.asarray(states.unroll.rng)
    resets = []
    for i in range(3):
        _, states, metrics = estimate(theta, pool, states, jax.random.PRNGKey(i))
        resets.append(float(metrics["unroll/resets"]))
    assert resets == [0.0, 0.0, 16.0]  # the third truncation starts new episodes for everyone
    assert np.all(np.asarray(states.unroll.step) == 4)
    assert not np.any(np.all(np.asarray(states.unroll.rng) == rng0, axis=-1))
    # the PES accumulator restarted: it holds only this truncation's perturbation (~sigma).
    assert float(jnp.max(jnp.abs(states.accum["log_lr"]))) < 0.05


def test_antithetic_branches_share_batches(pool):
    """With sigma=0 the + and - branches are identical runs, so PES returns exactly zero."""
    arch = MomentumLOpt()
    cfg = UnrollConfig(truncation_length=3, min_horizon=6, max_horizon=30)
    est = ESTIMATORS["pes"](arch=arch, unroll=cfg, num_pairs=4, sigma=1e-30)
    theta = arch.init_theta(None)
    states = est.init_states(theta, pool, jax.random.PRNGKey(0))
    _, states, metrics = jax.jit(est.estimate)(theta, pool, states, jax.random.PRNGKey(1))
    w = np.asarray(states.unroll.params["w"])
    np.testing.assert_array_equal(w[:, 0], w[:, 1])


def _mixed_pool():
    """Half the pool is benign, half has curvature 1e4: lr 0.05 makes those explode."""
    calm = [FAMILY.sample(jax.random.PRNGKey(i)) for i in range(4)]
    wild = [t.replace(curvature=t.curvature * 1e4) for t in calm]
    return stack_tasks(calm + wild)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_diverging_members_are_dropped_counted_and_reset(name):
    pool = _mixed_pool()
    arch = MomentumLOpt()
    cfg = UnrollConfig(truncation_length=5, min_horizon=50, max_horizon=50, stagger=False)
    est = ESTIMATORS[name](arch=arch, unroll=cfg, num_pairs=32, sigma=0.01)
    theta = arch.init_theta(None)
    states = est.init_states(theta, pool, jax.random.PRNGKey(0))
    estimate = jax.jit(est.estimate)
    grad, states, m1 = estimate(theta, pool, states, jax.random.PRNGKey(1))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grad))
    assert 0 < float(m1["unroll/diverged"]) < 32
    assert float(m1["grad/dropped"]) == float(m1["unroll/diverged"])
    assert float(m1["meta_loss"]) < 10  # diverged members do not leak into the reported loss
    assert any(float(jnp.abs(g)) > 0 for g in jax.tree.leaves(grad))  # the calm ones still count
    _, _, m2 = estimate(theta, pool, states, jax.random.PRNGKey(2))
    assert float(m2["unroll/resets"]) >= float(m1["unroll/diverged"])


def test_all_members_diverging_gives_zero_gradient():
    pool = _mixed_pool()
    pool = jax.tree.map(lambda x: x[4:], pool)  # only the wild ones
    arch = MomentumLOpt()
    cfg = UnrollConfig(truncation_length=5, min_horizon=50, max_horizon=50, stagger=False)
    est = ESTIMATORS["tbptt"](arch=arch, unroll=cfg, num_pairs=4)
    theta = arch.init_theta(None)
    states = est.init_states(theta, pool, jax.random.PRNGKey(0))
    grad, _, m = jax.jit(est.estimate)(theta, pool, states, jax.random.PRNGKey(1))
    assert float(m["grad/dropped"]) == 4
    assert all(float(jnp.abs(g)) == 0.0 for g in jax.tree.leaves(grad))


def _estimator_metrics():
    return {"unroll/resets": 0.0, "unroll/diverged": 1.0, "grad/dropped": 1.0}


def test_outer_step_skips_nonfinite_and_clips_huge_gradients():
    cfg = learner_lib.OuterConfig(learning_rate=0.1, warmup_steps=0, clip_norm=1.0)
    tx = learner_lib.make_outer_optimizer(cfg, 10)
    theta = {"a": jnp.ones(3)}
    state = learner_lib.init_learner(tx, theta, jax.random.PRNGKey(0))
    step = jax.jit(lambda s, g, m: learner_lib.outer_step(tx, cfg.clip_norm, s, g, m))

    state1, m = step(state, {"a": jnp.array([1.0, jnp.nan, 0.0])}, _estimator_metrics())
    np.testing.assert_array_equal(state1.theta["a"], theta["a"])
    assert float(m["outer/nonfinite_grad"]) == 1.0 and float(m["outer/clipped"]) == 0.0
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state1.outer_state))

    state2, m = step(state1, {"a": jnp.array([1e30, 0.0, 0.0])}, _estimator_metrics())
    assert float(m["outer/clipped"]) == 1.0
    assert np.all(np.isfinite(state2.theta["a"]))
    assert float(jnp.max(jnp.abs(state2.theta["a"] - 1.0))) <= 0.1 + 1e-6  # one AdamW step
    assert float(state2.totals["outer/nonfinite_grad"]) == 1.0
    assert float(state2.totals["outer/clipped"]) == 1.0
    assert float(state2.totals["unroll/diverged"]) == 2.0


def test_an_update_that_overflows_theta_is_skipped():
    cfg = learner_lib.OuterConfig(learning_rate=1e38, warmup_steps=0, clip_norm=1.0)
    tx = learner_lib.make_outer_optimizer(cfg, 10)
    state = learner_lib.init_learner(tx, {"a": jnp.full(3, 3e38)}, jax.random.PRNGKey(0))
    step = jax.jit(lambda s, g, m: learner_lib.outer_step(tx, cfg.clip_norm, s, g, m))
    new, m = step(state, {"a": -jnp.ones(3)}, _estimator_metrics())  # +1e38 on 3e38 overflows
    np.testing.assert_array_equal(new.theta["a"], state.theta["a"])
    assert float(m["outer/nonfinite_grad"]) == 1.0


def test_log_train_meta_loss_is_mean_log_of_normalized_train_loss(pool):
    """Same run under both objectives; the log one is the mean of logs, below log of the mean."""
    arch = MomentumLOpt()
    theta = arch.init_theta(None)
    lin_cfg = UnrollConfig(truncation_length=6, min_horizon=60, max_horizon=60, stagger=False)
    log_cfg = UnrollConfig(truncation_length=6, min_horizon=60, max_horizon=60, stagger=False,
                           meta_loss="log_train")
    state = unroll_lib.fresh_member(arch, lin_cfg, pool, jax.random.PRNGKey(3))
    task = unroll_lib.take_task(pool, state.task_index)
    _, lin = unroll_lib.truncation(arch, lin_cfg, theta, task, state)
    _, log = unroll_lib.truncation(arch, log_cfg, theta, task, state)
    assert float(lin.raw_loss) == float(log.raw_loss)  # the objective changes no inner step
    assert float(log.meta_loss) < np.log(float(lin.meta_loss))  # Jensen, strict: losses vary
    one = UnrollConfig(truncation_length=1, min_horizon=60, max_horizon=60, stagger=False,
                       meta_loss="log_train")
    _, log1 = unroll_lib.truncation(arch, one, theta, task, state)
    np.testing.assert_allclose(float(log1.meta_loss),
                               np.log(float(log1.raw_loss) / float(state.loss_scale)), rtol=1e-5)


def test_meta_loss_weights_move_the_objective_to_the_end_of_the_episode():
    """Power p weighs step t of T by (p + 1) ((t + 1/2) / T)^p: mean 1 over an episode, so the
    objective keeps its scale; 0 is the plain mean; p > 0 favours the late steps."""
    cfg = UnrollConfig(truncation_length=10, meta_loss_weight_power=2.0)
    horizon = jnp.int32(50)
    w_TK = jnp.stack([unroll_lib.step_weights(cfg, jnp.float32(s), horizon) for s in range(0, 50, 10)])
    np.testing.assert_allclose(float(jnp.mean(w_TK)), 1.0, rtol=1e-3)
    assert float(w_TK[0, 0]) < 1e-3 and float(w_TK[-1, -1]) > 2.8
    losses_K = jnp.linspace(1.0, 2.0, 10)
    early = unroll_lib._normalized_meta_loss(cfg, losses_K, jnp.float32(1.0), w_TK[0])
    late = unroll_lib._normalized_meta_loss(cfg, losses_K, jnp.float32(1.0), w_TK[-1])
    np.testing.assert_allclose(float(early), float(jnp.mean(w_TK[0] * losses_K)), rtol=1e-6)
    assert float(late) > 2 * float(early)
    with pytest.raises(ValueError, match="meta_loss_weight_power=-1.0"):
        UnrollConfig(meta_loss_weight_power=-1.0)


def test_clipped_meta_loss_bounds_each_step_and_counts_nan_as_the_clip():
    cfg = UnrollConfig(meta_loss_clip=1.5)
    losses_K = jnp.array([1.0, 4.0, jnp.nan, 0.5])
    got = unroll_lib._normalized_meta_loss(cfg, losses_K, jnp.float32(2.0))
    np.testing.assert_allclose(float(got), np.mean([0.5, 1.5, 1.5, 0.25]), rtol=1e-6)
    unclipped = unroll_lib._normalized_meta_loss(UnrollConfig(), losses_K[:2], jnp.float32(2.0))
    np.testing.assert_allclose(float(unclipped), 1.25, rtol=1e-6)
    with pytest.raises(ValueError, match="meta_loss_clip=-1.0"):
        UnrollConfig(meta_loss_clip=-1.0)
