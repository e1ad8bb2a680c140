"""mu-P update scaling: shape inference, explicit roles, and a coordinate check of a learned optimizer."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import learned_opt
from learned_opt import mup


def test_shape_inference_and_scales():
    assert mup.infer_role((5,)) == "vector" and mup.infer_role(()) == "vector"
    assert mup.infer_role((4, 8)) == "hidden" and mup.infer_role((3, 3, 4, 8)) == "hidden"
    assert mup.update_scale((64, 8), "hidden", 32) == 0.5
    assert mup.update_scale((3, 3, 4, 8), "hidden", 4) == 1.0  # width = in channels, not 3*3*4
    assert mup.update_scale((3, 3, 16, 8), "hidden", 4) == 0.25
    assert mup.update_scale((64, 8), "input", 32) == 1.0
    assert mup.update_scale((64, 8), "output", 32) == 1.0  # the readout's multiplier does the scaling
    assert mup.update_scale((1000, 8), "embedding", 32) == 1.0
    assert mup.update_scale((64,), "hidden", 32) == 1.0  # vectors are never scaled


def test_explicit_roles_are_a_prefix():
    params = {"embed": jnp.zeros((10, 4)), "blocks": [{"w": jnp.zeros((4, 4)), "b": jnp.zeros(4)}], "head": jnp.zeros((4, 10))}
    assert mup.resolve_roles(params) == ["vector", "hidden", "hidden", "hidden"]
    roles = {"embed": "embedding", "blocks": None, "head": "output"}
    # Flattening order is sorted dict keys: blocks/0/b, blocks/0/w, embed, head.
    assert mup.resolve_roles(params, roles) == ["vector", "hidden", "embedding", "output"]


def test_bad_roles_are_clear_errors():
    params = {"a": jnp.zeros((3, 3)), "b": jnp.zeros(3)}
    with pytest.raises(ValueError, match=r"Unknown mu-P role 'hiden' for parameter 'a'"):
        mup.resolve_roles(params, {"a": "hiden", "b": None})
    with pytest.raises(ValueError, match="pytree prefix of params"):
        mup.resolve_roles(params, {"a": "hidden"})


# ---- coordinate check (Tensor Programs V, Yang et al. 2022, section 7 / Fig. 5) ----------------
# Train a mu-P MLP (LeCun init, readout multiplier base/width, as in tasks.models) for a few steps
# of a learned optimizer at widths 64..512, then measure the RMS change of each layer's
# pre-activations on the training batch. Under mu-P it is the same at every width; without the
# optimizer's mu-P scaling, each hidden matrix's per-entry update stays the same size while the
# number of inputs it sums over grows, so the change of a hidden layer grows ~ width.

WIDTHS = (64, 128, 256, 512)  # 64 = the optimizers' base_fan_in: mu-P changes nothing there
D_IN, CLASSES, BATCH, STEPS = 16, 8, 32, 4
LAYERS = ("input", "hidden_1", "hidden_2", "readout")
# Named like tasks.models.mup.param_roles names a tasks MLP's tensors (biases are vectors anyway).
MLP_ROLES = {"input": "input", "hidden_1": "hidden", "hidden_2": "hidden", "readout": "output"}


def _mlp_init(width, key):
    dims = [(D_IN, width), (width, width), (width, width), (width, CLASSES)]
    return {
        name: {"kernel": jax.random.normal(k, shape) / np.sqrt(shape[0]), "bias": jnp.zeros(shape[1])}
        for name, k, shape in zip(LAYERS, jax.random.split(key, len(LAYERS)), dims)
    }


def _preactivations(params, x_BxD, base_width):
    """Each layer's output before its ReLU; the readout's carries the mu-P multiplier base / width."""
    out, h = {}, x_BxD
    for name in LAYERS[:-1]:
        out[name] = h @ params[name]["kernel"] + params[name]["bias"]
        h = jax.nn.relu(out[name])
    out["readout"] = (h @ params["readout"]["kernel"] + params["readout"]["bias"]) * (base_width / h.shape[-1])
    return out


def _teacher_batch():
    """A learnable classification batch: labels from a fixed random linear teacher."""
    kx, kt = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (BATCH, D_IN))
    return x, jnp.argmax(x @ jax.random.normal(kt, (D_IN, CLASSES)), axis=-1)


def _coordinate_change(arch, theta, width):
    """RMS over batch and units of each layer's pre-activation change after STEPS steps."""
    tx = learned_opt.to_optax(arch, theta, roles=MLP_ROLES, num_steps=100)
    x, y = _teacher_batch()

    def loss_fn(params):
        logits = _preactivations(params, x, arch.base_fan_in)["readout"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    # Eight small programs per test: XLA's backend optimizations would cost more than they save.
    @functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
    def run(params0):
        def step(carry, _):
            params, state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, state = tx.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), loss

        (params, _), losses = jax.lax.scan(step, (params0, tx.init(params0)), None, length=STEPS)
        before, after = _preactivations(params0, x, arch.base_fan_in), _preactivations(params, x, arch.base_fan_in)
        return {k: jnp.sqrt(jnp.mean((after[k] - before[k]) ** 2)) for k in LAYERS}, losses

    change, losses = run(_mlp_init(width, jax.random.key(1)))
    assert losses[-1] < losses[0], f"width {width}: loss did not go down: {losses}"
    return {k: float(v) for k, v in change.items()}


def _shipped():
    arch, theta, _ = learned_opt.load_theta("adam_schedule_v1")
    return arch, theta


def _mlp_small_mup():
    arch = dataclasses.replace(learned_opt.ARCHITECTURES["mlp_small"], mup=True)
    return arch, arch.init_theta(jax.random.key(0))


@pytest.mark.parametrize("make", [_shipped, _mlp_small_mup], ids=["adam_schedule_v1", "mlp_small_mup"])
def test_coordinate_check_mup_keeps_hidden_activation_changes_width_independent(make):
    arch, theta = make()
    assert arch.mup and arch.base_fan_in == WIDTHS[0]
    mup_on = {w: _coordinate_change(arch, theta, w) for w in WIDTHS}
    mup_off = {w: _coordinate_change(dataclasses.replace(arch, mup=False), theta, w) for w in WIDTHS}

    # At the base width the mu-P factor is 1: the same training either way.
    np.testing.assert_allclose(list(mup_on[64].values()), list(mup_off[64].values()), rtol=1e-4)
    for layer in ("input", "hidden_1", "hidden_2"):
        on = [mup_on[w][layer] for w in WIDTHS]
        assert max(on) / min(on) < 2.0, f"mu-P: {layer} pre-activation change across widths {WIDTHS}: {on}"
    for layer in ("hidden_1", "hidden_2"):
        off = [mup_off[w][layer] for w in WIDTHS]
        assert off[-1] / off[0] > 3.0, f"without mu-P: {layer} change should grow with width {WIDTHS}: {off}"


def test_roles_reach_the_update_through_to_optax():
    arch = learned_opt.ARCHITECTURES["mulo"]
    theta = arch.init_theta(jax.random.key(0))
    params = {"embed": jnp.ones((256, 16)), "head": jnp.ones((256, 16))}
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(2), p.shape), params)
    tx = learned_opt.to_optax(arch, theta, roles={"embed": "embedding", "head": "hidden"})
    u, _ = tx.update(grads, tx.init(params), params)
    # Same gradient, same features: the only difference is the mu-P factor base / width.
    factor = arch.base_fan_in / 256
    np.testing.assert_allclose(np.asarray(u["head"]), np.asarray(u["embed"]) * factor, rtol=1e-5, atol=1e-12)
