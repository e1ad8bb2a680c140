"""normalize_adam_features=False: every implementation agrees, and the untrained optimizer is
Adam-like, so its steps shrink when gradients turn to noise (normalized, they cannot)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import learned_opt
from tests.learned_opt.conftest import mixed_params
from tests.learned_opt.test_fused import BASE, _random_theta, _run

RAW = dataclasses.replace(BASE, normalize_adam_features=False)


def test_raw_adam_features_agree_across_impls():
    """On a grid of 10 samples (every tensor but the scalar gridded): the harder path."""
    params = mixed_params(jnp.float32)
    theta = _random_theta(RAW)
    ref = dataclasses.replace(RAW, impl="reference", normalizer_samples=10)
    ups_r, _ = _run(ref, theta, params)
    for impl in ("fused", "native"):
        ups_i, _ = _run(dataclasses.replace(ref, impl=impl), theta, params)
        for ui, ur in zip(ups_i, ups_r):
            for a, b in zip(jax.tree.leaves(ui), jax.tree.leaves(ur)):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)
    ups_n, _ = _run(dataclasses.replace(ref, normalize_adam_features=True), theta, params)
    differ = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(ups_r[-1]), jax.tree.leaves(ups_n[-1]))]
    assert max(differ) > 1e-4  # the option changes the step: the agreement above means something


def _update_rms_after(arch, grads_T):
    """RMS of the last update of a (64, 32) tensor fed the gradients grads_T in turn."""
    theta = arch.init_theta(jax.random.key(0))
    params = {"w": jnp.zeros((64, 32))}
    state = arch.init_state(params)
    step = jax.jit(arch.update)
    for g in grads_T:
        updates, state = step(theta, {"w": g}, state, params)
    return float(jnp.sqrt(jnp.mean(jnp.square(updates["w"]))))


@pytest.mark.parametrize("impl", ["reference", "native"])
def test_untrained_raw_optimizer_shrinks_its_steps_on_noise(impl):
    """200 steps of a steady gradient, then 300 of zero-mean noise of the same size: Adam's
    m / sqrt(v) falls several-fold; per-tensor-normalized features keep the step's RMS."""
    base = learned_opt.MLPLOpt(hidden_sizes=(4,), momentum_decays=(0.5, 0.9, 0.99), impl=impl,
                               out_init_scale=0.0)
    keys = jax.random.split(jax.random.key(1), 500)
    steady = jax.random.normal(keys[0], (64, 32))
    grads = [steady] * 200 + [jax.random.normal(k, (64, 32)) for k in keys[200:]]
    raw, normalized = dataclasses.replace(base, normalize_adam_features=False), base
    raw_steady, raw_noise = _update_rms_after(raw, grads[:200]), _update_rms_after(raw, grads)
    norm_steady, norm_noise = _update_rms_after(normalized, grads[:200]), _update_rms_after(normalized, grads)
    assert raw_noise < raw_steady / 2.5
    np.testing.assert_allclose(norm_noise, norm_steady, rtol=0.05)
    np.testing.assert_allclose(norm_steady, base.step_mult, rtol=0.05)  # RMS step_mult, always


def test_checkpoints_without_the_field_load_as_normalized(tmp_path):
    """Files written before the option existed have no such key in their config: the default."""
    arch = learned_opt.MLPLOpt(hidden_sizes=(4,))
    path = learned_opt.save(tmp_path / "a.safetensors", arch, arch.init_theta(jax.random.key(0)))
    loaded, _, _ = learned_opt.load_theta(path)
    assert loaded.normalize_adam_features is True
    raw = dataclasses.replace(arch, normalize_adam_features=False)
    path = learned_opt.save(tmp_path / "b.safetensors", raw, raw.init_theta(jax.random.key(0)))
    assert learned_opt.load_theta(path)[0].normalize_adam_features is False


def test_non_bool_option_is_refused():
    with pytest.raises(TypeError, match="normalize_adam_features='no'.*true / false"):
        learned_opt.MLPLOpt(normalize_adam_features="no")


@pytest.mark.parametrize("impl", ["reference", "fused", "native"])
def test_bf16_state_second_moment_still_decays(impl):
    """With bfloat16 accumulators the momenta are bf16 but the second moment is f32: after 50
    steps of unit gradients and 300 of zero, v has decayed by 0.999^300 = 0.74 as in f32. Stored
    in bf16, 0.999 v rounds back to v and v would stay at its peak for good: the stall that made
    late training crawl (accumulators.py)."""
    arch = learned_opt.MLPLOpt(hidden_sizes=(4,), momentum_decays=(0.5, 0.9, 0.99), impl=impl,
                               accumulator_dtype="bfloat16", normalize_adam_features=False)
    theta, params = arch.init_theta(jax.random.key(0)), {"w": jnp.zeros((64, 32))}
    grads_T = jnp.concatenate([jnp.ones((50, 64, 32)), jnp.zeros((300, 64, 32))])

    def step(state, g):
        return arch.update(theta, {"w": g}, state, params)[1], state.accumulators["w"].rms_RxC.mean()

    state, v_T = jax.jit(lambda s: jax.lax.scan(step, s, grads_T))(arch.init_state(params))
    acc = state.accumulators["w"]
    assert acc.momentum_MxRxC.dtype == jnp.bfloat16 and acc.rms_RxC.dtype == jnp.float32
    peak = float(v_T[50])
    np.testing.assert_allclose(float(acc.rms_RxC.mean()) / peak, 0.999 ** 300, rtol=1e-3)


def test_factored_ratio_of_a_quiet_row_and_column_is_clipped_in_every_impl():
    """Gradients of 1e3 only in the block [:4, :4] for 30 steps, then 1e-3 in element (5, 7):
    the factored second moment there (its row's times its column's, over the large mean row) is
    ~1e-21, so g * rsqrt(factored v) is ~1e7 where Adam's own ratio is ~3. With the ratio
    features clipped at features.RATIO_CLIP, the raw (unnormalized) network's step stays the
    size of an ordinary one, the same in every impl. Unclipped, mu_velo moved single weights of
    a depth-8 MLP by 1e3 in one step."""
    mask = jnp.zeros((64, 32)).at[:4, :4].set(1.0)
    grads_T = [1e3 * mask * jax.random.normal(jax.random.key(t), (64, 32)) for t in range(30)]
    spike = jnp.zeros((64, 32)).at[5, 7].set(1e-3)
    arch = dataclasses.replace(RAW, loss_features=False, mup=False)
    theta = _random_theta(arch)
    params = {"w": jax.random.normal(jax.random.key(3), (64, 32))}
    last = {}
    for impl in ("reference", "fused", "native"):
        a = dataclasses.replace(arch, impl=impl)
        state, step = a.init_state(params), jax.jit(a.update)
        for g in grads_T:
            _, state = step(theta, {"w": g}, state, params)
        updates, _ = step(theta, {"w": spike}, state, params)
        last[impl] = np.asarray(updates["w"])
    for impl in ("fused", "native"):
        np.testing.assert_allclose(last[impl], last["reference"], rtol=1e-4, atol=1e-7)
    ordinary = np.max(np.abs(np.delete(last["reference"], 5, axis=0)))
    # Unclipped, this theta's network saturates on the 1e7 input and gives exactly 0 here;
    # another theta's gives a step of 1e3 (the depth-8 run).
    assert np.isfinite(last["reference"]).all() and 0.01 * ordinary < abs(last["reference"][5, 7]) < 20 * ordinary
