"""The VeLO-style optimizer (learned_opt.velo): its inputs, its step scale, its implementations."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import learned_opt
from learned_opt.velo import VeLOLOpt
from tests.learned_opt.conftest import train

VELO = learned_opt.ARCHITECTURES["velo"]
MU_VELO = learned_opt.ARCHITECTURES["mu_velo"]


def _params(width=16, scale=0.3):
    k1, k2 = jax.random.split(jax.random.key(1))
    return {
        "w1": scale * jax.random.normal(k1, (8, width)),
        "b1": jnp.zeros((width,)),
        "w2": scale * jax.random.normal(k2, (width, 1)),
    }


def _grads(params, seed=9):
    return jax.tree.map(lambda p: jax.random.normal(jax.random.key(seed), p.shape), params)


def _active_theta(arch, seed=5):
    """Untrained theta with nonzero controller heads, so the controller's outputs matter."""
    theta = arch.init_theta(jax.random.key(0))
    k1, k2 = jax.random.split(jax.random.key(seed))
    lr_head = {**theta["lr_head"], "w": jax.random.normal(k1, theta["lr_head"]["w"].shape)}
    mix_head = {**theta["mix_head"], "w": jax.random.normal(k2, theta["mix_head"]["w"].shape)}
    return {**theta, "lr_head": lr_head, "mix_head": mix_head}


def _updates(arch, theta, params, grads, *, num_steps=100, steps=3, losses=None):
    tx = learned_opt.to_optax(arch, theta, num_steps=num_steps)
    state = tx.init(params)
    for t in range(steps):
        u, state = tx.update(grads, state, params, loss=1.0 if losses is None else losses[t])
    return u, state


def test_num_steps_and_loss_are_required_with_clear_errors():
    params = _params()
    tx = learned_opt.to_optax(VELO, VELO.init_theta(jax.random.key(0)))
    with pytest.raises(ValueError, match="num_steps=N"):
        tx.update(_grads(params), tx.init(params), params, loss=1.0)
    tx = learned_opt.to_optax(VELO, VELO.init_theta(jax.random.key(0)), num_steps=10)
    with pytest.raises(ValueError, match="loss=loss_value"):
        tx.update(_grads(params), tx.init(params), params)
    quiet = VeLOLOpt(num_loss_emas=0)
    u, _ = _updates(quiet, quiet.init_theta(jax.random.key(0)), params, _grads(params), steps=1, losses=[None])
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(u))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_basis": 0}, "num_basis=0"),
        ({"lstm_hidden": 2.5}, "lstm_hidden=2.5"),
        ({"num_loss_emas": 1}, "num_loss_emas=1"),
        ({"param_scale": False, "mup": False}, "param_scale=True"),
        ({"param_scale_floor": 0.0}, "param_scale_floor=0.0"),
        ({"fraction_offsets": ()}, "fraction_offsets"),
        ({"impl": "cuda"}, "impl='cuda'"),
        ({"hidden_sizes": (64, 64)}, "impl='reference'"),
        ({"schedule_decay": -1.0}, "schedule_decay=-1.0"),
        ({"schedule_decay": True}, "schedule_decay=True"),
        ({"bias_correction": "yes"}, "bias_correction='yes'"),
        ({"early_head": 1}, "early_head=1"),
        ({"direct_head": "on"}, "direct_head='on'"),
    ],
)
def test_bad_config_names_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VeLOLOpt(**kwargs)


def test_schedule_decay_takes_every_step_to_zero_at_the_end():
    """With schedule_decay p, step t of T is ((T - t) / T)^p times the step without it, in every
    tensor; the last step is 1 / T^p of it (the remaining fraction is floored at 1 / T)."""
    params, grads, T = _params(), _grads(_params()), 8
    decaying = dataclasses.replace(MU_VELO, schedule_decay=1.5)
    theta = decaying.init_theta(jax.random.key(0))
    assert float(theta["schedule_decay"]) == 1.5
    flat = {k: v for k, v in theta.items() if k != "schedule_decay"}
    for steps in (1, 4, T):
        got, _ = _updates(decaying, theta, params, grads, num_steps=T, steps=steps)
        ref, _ = _updates(MU_VELO, flat, params, grads, num_steps=T, steps=steps)
        t = steps - 1  # the count before the last update
        want = (max(T - t, 1) / T) ** 1.5
        for name in params:
            np.testing.assert_allclose(np.asarray(got[name]), want * np.asarray(ref[name]), rtol=1e-4, atol=1e-9)


def test_bias_correction_makes_the_untrained_mu_velo_adam():
    """With the basis's MLP output zeroed, untrained mu_velo is Adam on m_0.9 / sqrt(v) at the
    base step: with bias_correction the steps of optax.adam at lr = step_mult (mu-P factor 1 at
    width 64), without it (1 - 0.9^t) / sqrt(1 - 0.999^t) times them (6.5x by step 10)."""
    params = {"w": 0.1 * jax.random.normal(jax.random.key(1), (64, 64))}
    arch = dataclasses.replace(MU_VELO, accumulator_dtype="float32")
    theta = arch.init_theta(jax.random.key(0))
    last = theta["basis"]["mlp"][-1]
    theta["basis"]["mlp"][-1] = {"w": jnp.zeros_like(last["w"]), "b": jnp.zeros_like(last["b"])}
    corrected = dataclasses.replace(arch, bias_correction=True)
    adam = optax.adam(arch.step_mult)
    states = {a: learned_opt.to_optax(a, theta, num_steps=100) for a in (arch, corrected)}
    states = {a: (tx, tx.init(params)) for a, tx in states.items()}
    adam_state = adam.init(params)
    for t in range(1, 13):
        g = {"w": jax.random.normal(jax.random.key(t), (64, 64))}
        want, adam_state = adam.update(g, adam_state, params)
        got = {}
        for a, (tx, st) in states.items():
            got[a], st = tx.update(g, st, params, loss=1.0)
            states[a] = (tx, st)
        np.testing.assert_allclose(got[corrected]["w"], want["w"], rtol=2e-3, atol=1e-8)
        ratio = (1 - 0.9**t) / np.sqrt(1 - 0.999**t)
        np.testing.assert_allclose(got[arch]["w"], ratio * want["w"], rtol=2e-3, atol=1e-8)


def test_early_head_sets_a_per_tensor_share_of_the_bias_correction():
    """At zero the early head changes nothing; a bias of 1 is the full correction; a weight on
    the LSTM state gives tensors different early steps, which meet later as the correction
    fades (1.001 at step 5000 for beta2 0.999)."""
    params, grads = _params(), _grads(_params())
    arch = dataclasses.replace(MU_VELO, early_head=True)
    theta = _active_theta(arch)
    assert set(theta["early_head"]) == {"w", "b"} and not np.any(theta["early_head"]["w"])
    plain = {k: v for k, v in theta.items() if k != "early_head"}
    for steps in (1, 3):
        got, _ = _updates(arch, theta, params, grads, steps=steps)
        want, _ = _updates(MU_VELO, plain, params, grads, steps=steps)
        for k in params:
            np.testing.assert_array_equal(got[k], want[k])
    full = {**theta, "early_head": {**theta["early_head"], "b": jnp.float32(1.0)}}
    got, _ = _updates(arch, full, params, grads)
    want, _ = _updates(dataclasses.replace(MU_VELO, bias_correction=True), plain, params, grads)
    for k in params:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-12)
    tilted = {**theta, "early_head": {"w": jnp.ones_like(theta["early_head"]["w"]), "b": jnp.float32(0.0)}}
    u_tilted, s_tilted = _updates(arch, tilted, params, grads)
    u_plain, _ = _updates(MU_VELO, plain, params, grads)
    ratio = {k: float(jnp.linalg.norm(u_tilted[k]) / jnp.linalg.norm(u_plain[k])) for k in params}
    share = np.asarray(s_tilted.lstm_h_NxH.sum(axis=1))  # each tensor's k, flattening order
    log_bc = float(jnp.log(jnp.sqrt(1 - 0.999**3) / (1 - 0.9**3)))
    log_ratio = np.log([ratio[k] for k in sorted(params)])  # dict leaves flatten in key order
    np.testing.assert_allclose(log_ratio, share * log_bc, rtol=1e-3)
    assert np.ptp(share) > 0.01  # the tensors' early steps differ


def test_direct_head_is_a_clipped_linear_term_of_the_controller_inputs():
    """At zero the direct head changes nothing. A weight on the remaining-fraction input is a
    decay power: step t of T is ((T - t) / T)^p times the step without it. A weight on the rank
    inputs moves matrices and vectors apart; the term is clipped, so a huge weight raises no
    step more than e^2-fold."""
    params, grads, T = _params(), _grads(_params()), 8
    arch = dataclasses.replace(MU_VELO, direct_head=True)
    names = arch.direct_features()
    assert names[-1] == "log_remaining_fraction" and "log_rms_p/5" in names and "mean_state0" not in names
    theta = _active_theta(arch)
    assert theta["direct_head"]["w"].shape == (len(names),) and not np.any(theta["direct_head"]["w"])
    plain = {k: v for k, v in theta.items() if k != "direct_head"}
    for steps in (1, 3):
        got, _ = _updates(arch, theta, params, grads, num_steps=T, steps=steps)
        want, _ = _updates(MU_VELO, plain, params, grads, num_steps=T, steps=steps)
        for k in params:
            np.testing.assert_array_equal(got[k], want[k])

    def with_weight(name, value):
        w = np.zeros(len(names), np.float32)
        w[names.index(name)] = value
        return {**theta, "direct_head": {"w": jnp.asarray(w)}}

    for steps in (1, 4, T):
        got, _ = _updates(arch, with_weight("log_remaining_fraction", 1.5), params, grads, num_steps=T, steps=steps)
        want, _ = _updates(MU_VELO, plain, params, grads, num_steps=T, steps=steps)
        factor = (max(T - (steps - 1), 1) / T) ** 1.5
        for k in params:
            np.testing.assert_allclose(got[k], factor * np.asarray(want[k]), rtol=1e-4, atol=1e-9)
    want, _ = _updates(MU_VELO, plain, params, grads)
    got, _ = _updates(arch, with_weight("is_matrix", -1.0), params, grads)
    np.testing.assert_allclose(got["w1"], np.exp(-1.0) * np.asarray(want["w1"]), rtol=1e-4)
    np.testing.assert_allclose(got["b1"], want["b1"], rtol=1e-6)
    got, _ = _updates(arch, with_weight("is_vector", 50.0), params, grads)
    np.testing.assert_allclose(got["b1"], np.exp(2.0) * np.asarray(want["b1"]), rtol=1e-4)


def test_implementations_agree():
    params = _params(width=300)
    grads = _grads(params)
    theta = _active_theta(VELO)
    out = {impl: _updates(dataclasses.replace(VELO, impl=impl, accumulator_dtype="float32"), theta, params, grads)
           for impl in ("reference", "fused", "native")}
    ref_u, ref_s = out["reference"]
    for impl in ("fused", "native"):
        u, s = out[impl]
        for k in params:
            np.testing.assert_allclose(u[k], ref_u[k], rtol=2e-5, atol=1e-6 * float(jnp.max(jnp.abs(ref_u[k]))))
        np.testing.assert_allclose(s.stats_NxS, ref_s.stats_NxS, atol=2e-4)
        np.testing.assert_allclose(s.lstm_h_NxH, ref_s.lstm_h_NxH, atol=1e-5)


def test_step_is_relative_to_the_parameter_scale_with_a_floor():
    """Every feature is normalized per tensor, so scaling a tensor scales its velo step alike
    (zero heads: the controller, which reads log RMS(p), adds nothing)."""
    theta = VELO.init_theta(jax.random.key(0))
    params = _params(scale=0.3)
    big = {**params, "w1": 10.0 * params["w1"]}
    u, _ = _updates(VELO, theta, params, _grads(params), steps=1)
    u_big, _ = _updates(VELO, theta, big, _grads(params), steps=1)
    np.testing.assert_allclose(u_big["w1"], 10.0 * u["w1"], rtol=1e-3, atol=1e-9)
    # b1 is all zeros: its step is taken relative to the floor, not to 0.
    assert float(jnp.sqrt(jnp.mean(u["b1"] ** 2))) > 1e-2 * VELO.step_mult * VELO.param_scale_floor


def test_controller_reads_the_fraction_of_training_and_the_horizon():
    params = _params()
    grads = _grads(params)
    theta = _active_theta(VELO)

    def rms_update(num_steps, steps):
        u, _ = _updates(VELO, theta, params, grads, num_steps=num_steps, steps=steps)
        return float(jnp.sqrt(jnp.mean(u["w1"] ** 2)))

    # Same step count, another horizon: another step size.
    assert abs(np.log(rms_update(10, 8) / rms_update(1000, 8))) > 0.01
    untrained = VELO.init_theta(jax.random.key(0))  # zero heads: no dependence at all
    a, _ = _updates(VELO, untrained, params, grads, num_steps=10, steps=8)
    b, _ = _updates(VELO, untrained, params, grads, num_steps=1000, steps=8)
    np.testing.assert_allclose(a["w1"], b["w1"], rtol=1e-6)


def test_loss_features_are_relative_and_zero_for_the_first_steps():
    arch = VeLOLOpt(num_loss_emas=4)
    state = arch.init_state(_params())
    feats = []
    for scale in (1.0, 10.0):
        s, out = state, []
        for t, loss in enumerate([2.0, 1.8, 1.5, 1.2, 1.0]):
            parts, rel = arch._loss_features(s, scale * loss, 100)
            s = s._replace(count=s.count + 1, loss_ema_E=parts[0], loss_min=parts[1], loss_max=parts[2])
            out.append(np.asarray(rel))
        feats.append(np.stack(out))
    np.testing.assert_array_equal(feats[0][:2], 0.0)
    assert np.all(feats[0][2:] < 0), "a falling loss: the faster EMA sits below the slower one"
    np.testing.assert_allclose(feats[0], feats[1], atol=1e-5)  # the loss's scale does not matter


def _hidden_coordinate_change(arch, width):
    """RMS over a batch and coordinates of x @ dW for the hidden matrix after one step of a
    3-layer MLP (input 8 -> width -> width -> 1, mu-P readout x 1/width) on a regression."""
    k = jax.random.split(jax.random.key(width), 4)
    params = {
        "w_in": jax.random.normal(k[0], (8, width)) / np.sqrt(8),
        "w_hidden": jax.random.normal(k[1], (width, width)) / np.sqrt(width),
        "w_out": jax.random.normal(k[2], (width, 1)),
    }
    roles = {"w_in": "input", "w_hidden": "hidden", "w_out": "output"}
    x = jax.random.normal(jax.random.key(0), (64, 8))
    y = jnp.sin(x[:, :1])

    def hidden_in(p):
        return jax.nn.relu(x @ p["w_in"])

    def loss_fn(p):
        out = jax.nn.relu(hidden_in(p) @ p["w_hidden"]) @ p["w_out"] / width
        return jnp.mean((out - y) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    tx = learned_opt.to_optax(arch, arch.init_theta(jax.random.key(0)), roles=roles, num_steps=100)
    u, _ = tx.update(grads, tx.init(params), params, loss=loss)
    return float(jnp.sqrt(jnp.mean((hidden_in(params) @ u["w_hidden"]) ** 2)))


def test_mu_velo_keeps_the_coordinate_size_of_updates_across_widths():
    """The mu-P coordinate check with the learned optimizer itself: mu_velo's change of the
    hidden layer's pre-activations stays the same size from width 64 to 1024; velo's steps,
    relative to RMS(p) ~ 1/sqrt(width), make it grow ~sqrt(width)."""
    mu = [_hidden_coordinate_change(MU_VELO, n) for n in (64, 256, 1024)]
    velo = [_hidden_coordinate_change(VELO, n) for n in (64, 256, 1024)]
    assert 0.6 < mu[-1] / mu[0] < 1.6, mu
    assert velo[-1] / velo[0] > 2.5, velo


def test_untrained_velo_trains_and_round_trips_through_a_checkpoint(tmp_path):
    params = _params()
    x = jax.random.normal(jax.random.key(3), (32, 8))
    y = jnp.sin(x[:, :1])

    def loss_fn(p):
        return jnp.mean((jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] - y) ** 2)

    theta = _active_theta(VELO)
    path = learned_opt.save(tmp_path / "velo.safetensors", VELO, theta, metadata={"recipe": "test"})
    arch, loaded, _ = learned_opt.load_theta(path)
    assert arch == VELO

    a = train(learned_opt.to_optax(VELO, theta, num_steps=50), loss_fn, params, 50)
    b = train(learned_opt.load(path, num_steps=50), loss_fn, params, 50)
    for k in params:
        np.testing.assert_array_equal(a[k], b[k])
    assert float(loss_fn(a)) < 0.5 * float(loss_fn(params))


def test_weight_decay_is_adamw_form_with_each_tensors_own_step_on_matrices_only():
    """The update gains -wd * exp(log step) * p for matrices (the tensor's step is AdamW's
    learning rate there) and nothing for vectors; relative steps refuse it."""
    params, grads = _params(), _grads(_params())
    theta = _active_theta(MU_VELO)
    decayed = dataclasses.replace(MU_VELO, weight_decay=0.1)
    got, state = _updates(decayed, theta, params, grads, steps=2)
    want, _ = _updates(MU_VELO, theta, params, grads, steps=2)
    np.testing.assert_array_equal(got["b1"], want["b1"])
    log_lr = np.asarray(MU_VELO.log_lr(theta, state.lstm_h_NxH))  # each tensor's, flattening order
    for i, k in enumerate(sorted(params)):
        if params[k].ndim < 2:
            continue
        scale = learned_opt.mup.update_scale(params[k].shape, "hidden", MU_VELO.base_fan_in)
        lr = np.exp(float(theta["log_step"]) + np.log(MU_VELO.step_mult * scale) + log_lr[i])
        np.testing.assert_allclose(got[k] - want[k], -0.1 * lr * params[k], rtol=2e-3, atol=1e-9)
    with pytest.raises(ValueError, match="weight_decay=-1"):
        dataclasses.replace(MU_VELO, weight_decay=-1.0)
    with pytest.raises(ValueError, match="needs absolute steps"):
        dataclasses.replace(VELO, weight_decay=0.1)
