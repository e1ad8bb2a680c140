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


CTRL = dataclasses.replace(ARCH, controller_hidden=4, accumulator_dtype="float32")  # exact statistics


def _controller_theta(feature: str, scale: float = 1.0):
    """A controller whose term is tanh(scale * feature): one hidden unit reads one input."""
    theta = CTRL.init_theta(jax.random.key(0))
    c = theta["controller"]
    i = CTRL.controller_features().index(feature)
    w = jnp.zeros_like(c["w"]).at[i, 0].set(scale)
    return {**theta, "controller": dict(c, w=w, w_out=jnp.zeros_like(c["w_out"]).at[0].set(1.0))}


def _update_sizes(arch, theta, grads_fn, steps, num_steps=100, params=PARAMS):
    tx = learned_opt.to_optax(arch, theta, num_steps=num_steps)
    step, state, out = jax.jit(tx.update), tx.init(params), []
    for t in range(steps):
        u, state = step(grads_fn(t), state, params)
        out.append({k: float(jnp.sqrt(jnp.mean(v**2))) for k, v in u.items()})
    return out


def test_controller_starts_as_a_no_op():
    """Its output layer starts at 0: a trained theta plus a fresh controller steps as before."""
    theta, without = CTRL.init_theta(jax.random.key(0)), dataclasses.replace(CTRL, controller_hidden=0)
    assert set(theta) - set(without.init_theta(jax.random.key(0))) == {"controller"}
    no_ctrl = {k: v for k, v in theta.items() if k != "controller"}
    a = _update_sizes(CTRL, theta, lambda t: PARAMS, 3)
    b = _update_sizes(without, no_ctrl, lambda t: PARAMS, 3)
    assert a == b


@pytest.mark.parametrize("impl", ["reference", "fused", "native"])
def test_controller_reads_each_tensors_gradient_consistency(impl):
    """With the term tanh(log RMS(m_0.99 / sqrt(v))), a constant gradient gives, at step t,
    the ratio (1 - 0.99^t) / sqrt(1 - 0.999^t) (no bias correction) in every tensor, and a
    gradient that flips sign every step (pure noise to a slow momentum) a far smaller one."""
    arch = dataclasses.replace(CTRL, impl=impl)
    theta = _controller_theta("log_rms_m0.99*rsqrt_v")
    base = {k: v for k, v in theta.items()}
    base["controller"] = dict(theta["controller"], w_out=jnp.zeros_like(theta["controller"]["w_out"]))
    steps = 6
    grads = {"w": PARAMS["w"], "b": jnp.linspace(0.5, 1.5, 5)}  # PARAMS' bias is 0: no gradient
    const = lambda t: grads  # noqa: E731
    ratio = [
        {k: c[k] / b[k] for k in c}
        for c, b in zip(_update_sizes(arch, theta, const, steps), _update_sizes(arch, base, const, steps))
    ]
    t = np.arange(1, steps + 1)
    want = np.exp(np.tanh(np.log((1 - 0.99**t) / np.sqrt(1 - 0.999**t))))
    for name in ("w", "b"):
        np.testing.assert_allclose([r[name] for r in ratio], want, rtol=1e-3)
    flip = lambda t: jax.tree.map(lambda x: x * (-1.0) ** t, grads)  # noqa: E731
    flipped = [c["w"] / b["w"] for c, b in zip(_update_sizes(arch, theta, flip, steps), _update_sizes(arch, base, flip, steps))]
    assert flipped[-1] < 0.8 * ratio[-1]["w"]


def test_controller_reads_the_horizon():
    """log T is an input: the same step of the same run gets a different size for another T."""
    theta = _controller_theta("log_horizon", scale=1.0)
    sizes = {n: _update_sizes(CTRL, theta, lambda t: PARAMS, 1, num_steps=n)[0]["w"] for n in (600, 6000)}
    base = _update_sizes(CTRL, CTRL.init_theta(jax.random.key(0)), lambda t: PARAMS, 1, num_steps=600)[0]["w"]
    np.testing.assert_allclose(sizes[600] / base, 1.0, rtol=1e-5)  # log(600 / 600) = 0
    np.testing.assert_allclose(sizes[6000] / base, np.exp(np.tanh(0.5 * np.log(10.0))), rtol=1e-4)


def test_controller_config_errors():
    with pytest.raises(ValueError, match="controller_hidden=4\\) reads the fraction of training"):
        dataclasses.replace(learned_opt.ARCHITECTURES["mlp_small"], controller_hidden=4)
    with pytest.raises(ValueError, match="controller_hidden=-1: expected an int >= 0"):
        dataclasses.replace(ARCH, controller_hidden=-1)
    with pytest.raises(ValueError, match="schedule_decay=-1.0: expected a finite power >= 0"):
        dataclasses.replace(ARCH, schedule_decay=-1.0)
    with pytest.raises(ValueError, match="controller_linear=True\\) reads the fraction of training"):
        dataclasses.replace(learned_opt.ARCHITECTURES["mlp_small"], controller_linear=True)
    with pytest.raises(ValueError, match="choose one per-tensor controller"):
        dataclasses.replace(CTRL, controller_linear=True)
    with pytest.raises(ValueError, match="controller_linear=1: expected true or false"):
        dataclasses.replace(ARCH, controller_linear=1)


LINEAR = dataclasses.replace(ARCH, controller_linear=True, accumulator_dtype="float32")


@pytest.mark.parametrize("impl", ["reference", "fused", "native"])
def test_linear_controller_is_a_power_of_the_consistency_and_the_horizon(impl):
    """The linear controller starts as a no-op (w = 0, b = 0: v2 warm-starts exactly). With
    weight a on log RMS(m_0.99 / sqrt(v)) and c on log T, a constant gradient's step is
    multiplied by ((1 - 0.99^t) / sqrt(1 - 0.999^t))^a x (T / 600)^(c / 2), in every tensor."""
    arch = dataclasses.replace(LINEAR, impl=impl)
    assert arch.controller_features() == ["log_horizon", "log_rms_m0.5*rsqrt_v", "log_rms_m0.9*rsqrt_v",
                                          "log_rms_m0.99*rsqrt_v", "is_vector"]
    base = arch.init_theta(jax.random.key(0))
    without = dataclasses.replace(arch, controller_linear=False)
    no_ctrl = {k: v for k, v in base.items() if k != "controller"}
    steps, grads = 4, {"w": PARAMS["w"], "b": jnp.linspace(0.5, 1.5, 5)}
    const = lambda t: grads  # noqa: E731
    ref = _update_sizes(arch, base, const, steps, num_steps=6000)
    assert ref == _update_sizes(without, no_ctrl, const, steps, num_steps=6000)
    w = jnp.zeros(5).at[0].set(1.0).at[3].set(2.0)
    theta = {**base, "controller": {"w_out": w, "b_out": jnp.asarray(0.0)}}
    got = _update_sizes(arch, theta, const, steps, num_steps=6000)
    t = np.arange(1, steps + 1)
    want = ((1 - 0.99**t) / np.sqrt(1 - 0.999**t)) ** 2 * np.sqrt(10.0)
    for name in ("w", "b"):
        np.testing.assert_allclose([g[name] / r[name] for g, r in zip(got, ref)], want, rtol=1e-3)


def test_linear_controller_decay_terms_change_the_decay_power_per_tensor():
    """With weight c on log((T - t) / T) x log RMS(m_0.99 / sqrt(v)), the step is multiplied by
    ((T - t) / T)^(c x log RMS): more decay where gradients are noise (c < 0, log RMS < 0)."""
    arch = dataclasses.replace(LINEAR, controller_decay_terms=True)
    names = arch.controller_features()
    assert names[5:] == [f"log_remaining*log_rms_m{d}*rsqrt_v" for d in (0.5, 0.9, 0.99)]
    base = arch.init_theta(jax.random.key(0))
    steps, T, grads = 4, 8, {"w": PARAMS["w"], "b": jnp.linspace(0.5, 1.5, 5)}
    const = lambda t: grads  # noqa: E731
    ref = _update_sizes(arch, base, const, steps, num_steps=T)
    w = jnp.zeros(len(names)).at[names.index("log_remaining*log_rms_m0.99*rsqrt_v")].set(-1.0)
    got = _update_sizes(arch, {**base, "controller": {"w_out": w, "b_out": jnp.asarray(0.0)}}, const, steps, num_steps=T)
    t = np.arange(steps)  # the count before each step
    log_rms = np.log((1 - 0.99 ** (t + 1)) / np.sqrt(1 - 0.999 ** (t + 1)))
    want = np.exp(-np.log((T - t) / T) * log_rms)
    np.testing.assert_allclose([g["w"] / r["w"] for g, r in zip(got, ref)], want, rtol=1e-3)
    with pytest.raises(ValueError, match="set controller_linear=True too"):
        dataclasses.replace(ARCH, controller_decay_terms=True)



@pytest.mark.parametrize("impl", ["reference", "native"])
def test_linear_controller_depth_input_is_a_power_of_the_number_of_matrices(impl):
    """With weight c on log(M / 3), every tensor's step is multiplied by (M / 3)^c: the same
    gradients give a smaller step in a model with more weight matrices (c < 0), and the input
    counts matrices, not vectors."""
    arch = dataclasses.replace(LINEAR, controller_decay_terms=True, controller_depth=True, impl=impl)
    names = arch.controller_features()
    assert names[-1] == "log_num_matrices" and len(names) == 9
    base = arch.init_theta(jax.random.key(0))
    w = jnp.zeros(len(names)).at[-1].set(-0.5)
    deep = {**base, "controller": {"w_out": w, "b_out": jnp.asarray(0.0)}}
    ratios = {}
    for num_matrices in (1, 3, 12):
        params = {f"w{i}": PARAMS["w"] for i in range(num_matrices)} | {"b": PARAMS["b"]}
        grads = lambda t, params=params: params  # noqa: E731
        got = _update_sizes(arch, deep, grads, 1, params=params, num_steps=100)[0]
        ref = _update_sizes(arch, base, grads, 1, params=params, num_steps=100)[0]
        ratios[num_matrices] = (got["w0"] / ref["w0"], got["b"] / ref["b"])
    for m, (r_w, r_b) in ratios.items():
        np.testing.assert_allclose([r_w, r_b], (m / 3.0) ** -0.5, rtol=1e-4)
    with pytest.raises(ValueError, match="controller_depth=True\\) adds an input .* set controller_linear=True"):
        dataclasses.replace(ARCH, controller_depth=True)
