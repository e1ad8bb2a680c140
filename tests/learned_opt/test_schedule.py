"""The learned schedule (`MLPLOpt.fraction_offsets`): horizon-aware, once per step, in every impl."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import learned_opt
from learned_opt import features as feat_lib

OFFSETS = (0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1)
ARCH = dataclasses.replace(learned_opt.ARCHITECTURES["mlp_small"], fraction_offsets=OFFSETS, normalize_adam_features=False)
PARAMS = {"w": jax.random.normal(jax.random.key(0), (6, 5)), "b": jnp.zeros((5,))}


def test_fraction_features_switch_at_their_offsets():
    f = feat_lib.fraction_features(jnp.int32(40), 100, (0.1, 0.4, 0.9))
    np.testing.assert_allclose(f, np.tanh(10 * (0.4 - np.array([0.1, 0.4, 0.9]))), rtol=1e-6)
    assert float(f[0]) > 0.99 and float(f[1]) == 0.0 and float(f[2]) < -0.99


def test_missing_num_steps_is_a_clear_error():
    tx = learned_opt.to_optax(ARCH, ARCH.init_theta(jax.random.key(0)))
    with pytest.raises(ValueError, match="needs it: learned_opt.load\\(name, num_steps=N\\)"):
        tx.update(PARAMS, tx.init(PARAMS), PARAMS)
    with pytest.raises(ValueError, match="num_steps=0: expected a positive int"):
        learned_opt.to_optax(ARCH, ARCH.init_theta(jax.random.key(0)), num_steps=0)


def test_architectures_without_a_schedule_ignore_num_steps():
    arch = learned_opt.ARCHITECTURES["mlp_small"]
    theta = arch.init_theta(jax.random.key(0))
    a, b = (learned_opt.to_optax(arch, theta, num_steps=n) for n in (None, 10))
    ua, _ = a.update(PARAMS, a.init(PARAMS), PARAMS)
    ub, _ = b.update(PARAMS, b.init(PARAMS), PARAMS)
    np.testing.assert_array_equal(ua["w"], ub["w"])


def _decaying_theta():
    """log_mult = -2 - 2 tanh(3 tanh(10 (t/T - 0.6))): full steps early, ~e^-4 at the end."""
    theta = ARCH.init_theta(jax.random.key(0))
    w = jnp.zeros_like(theta["schedule"]["w"]).at[OFFSETS.index(0.6), 0].set(3.0)
    sched = dict(theta["schedule"], w=w, w_out=jnp.zeros_like(theta["schedule"]["w_out"]).at[0].set(-2.0),
                 b_out=jnp.float32(-2.0))
    return {**theta, "schedule": sched}


@pytest.mark.parametrize("impl", ["reference", "fused", "native"])
def test_step_size_follows_the_schedule_over_the_fraction_of_training(impl):
    """Same gradients at every step: the update's size tracks exp(schedule(t / T)) for the
    given T, so the same optimizer decays at step 90 of 100 but not at step 90 of 1000."""
    arch = dataclasses.replace(ARCH, impl=impl)
    base, decaying = arch.init_theta(jax.random.key(0)), _decaying_theta()
    sizes = {}
    for num_steps in (100, 1000):
        for name, theta in (("base", base), ("decaying", decaying)):
            tx = learned_opt.to_optax(arch, theta, num_steps=num_steps)
            step = jax.jit(tx.update)
            state, out = tx.init(PARAMS), []
            for _ in range(91):
                u, state = step(PARAMS, state, PARAMS)
                out.append(float(jnp.sqrt(jnp.mean(u["w"] ** 2))))
            sizes[name, num_steps] = np.array(out)
    for num_steps in (100, 1000):
        ratio = sizes["decaying", num_steps] / sizes["base", num_steps]
        frac = np.arange(91) / num_steps
        want = np.exp(-2.0 - 2.0 * np.tanh(3.0 * np.tanh(10 * (frac - 0.6))))
        np.testing.assert_allclose(ratio, want, rtol=2e-3)
    assert sizes["decaying", 100][90] / sizes["base", 100][90] < 0.03  # near the end: decayed
    assert sizes["decaying", 1000][90] / sizes["base", 1000][90] > 0.95  # early: full


def test_learned_decay_follows_the_remaining_fraction_to_the_end():
    """schedule_decay's power p scales the step by ((T - t) / T)^p, the same for any T; p <= 0
    is off (a decay that cannot turn into growth at the end); it needs the fraction schedule."""
    arch = dataclasses.replace(ARCH, schedule_decay=1.0)
    theta = arch.init_theta(jax.random.key(0))
    assert float(theta["schedule_decay"]) == 1.0

    def sizes(power, num_steps, steps):
        tx = learned_opt.to_optax(arch, {**theta, "schedule_decay": jnp.float32(power)}, num_steps=num_steps)
        step, state, out = jax.jit(tx.update), tx.init(PARAMS), []
        for _ in range(steps):
            u, state = step(PARAMS, state, PARAMS)
            out.append(float(jnp.sqrt(jnp.mean(u["w"] ** 2))))
        return np.array(out)

    base = sizes(0.0, 40, 45)
    np.testing.assert_allclose(sizes(-1.0, 40, 45), base, rtol=1e-6)
    remaining = np.maximum(40 - np.arange(45), 1) / 40
    np.testing.assert_allclose(sizes(2.0, 40, 45) / base, remaining**2, rtol=2e-3)
    with pytest.raises(ValueError, match="give it fraction_offsets too"):
        dataclasses.replace(learned_opt.ARCHITECTURES["mlp_small"], schedule_decay=1.0)
    with pytest.raises(TypeError, match="schedule_decay=True: expected None or the initial decay power"):
        dataclasses.replace(ARCH, schedule_decay=True)
