"""Coordinate check (Tensor Programs V, Fig. 5 style) at two widths.

Each model trains a few Adam steps on one fixed batch; we measure the RMS of a hidden
activation at init, and the RMS *change* of that activation and of the outputs. mu-P (model
parametrization + Adam learning rates scaled by `learned_opt.mup.update_scales`) keeps all of
them about width-independent; standard parametrization with plain Adam lets the changes grow with width.
"""

import jax
import jax.numpy as jnp
import optax
import pytest

from learned_opt.mup import update_scales
from tasks.models import mup
from tasks.models.cnn import CNNConfig
from tasks.models.mlp import MLPConfig
from tasks.models.transformer import TransformerConfig

NARROW, WIDE = 64, 512  # 8x
STEPS, LR = 3, 1e-2


def mlp(width, parametrization):
    return MLPConfig(width, 2, 10, parametrization=parametrization, base_width=NARROW)


def cnn(width, parametrization):
    return CNNConfig(width // 4, 2, 10, parametrization=parametrization, base_width=NARROW // 4)


def transformer(width, parametrization):
    return TransformerConfig(width, 1, num_heads=2, max_len=8, parametrization=parametrization,
                             base_width=NARROW)


def xent(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


MODELS = {  # name: (config fn, inputs, targets, hidden module whose output we watch)
    "mlp": (mlp, lambda k: jax.random.normal(k, (32, 40)),
            lambda k: jax.random.randint(k, (32,), 0, 10), "hidden_1"),
    "cnn": (cnn, lambda k: jax.random.normal(k, (16, 8, 8, 1)),
            lambda k: jax.random.randint(k, (16,), 0, 10), "conv_1"),
    "transformer": (transformer, lambda k: jax.random.randint(k, (8, 8), 0, 256),
                    lambda k: jax.random.randint(k, (8, 8), 0, 256), "block_0"),
}


def rms(x):
    return float(jnp.sqrt(jnp.mean(jnp.square(x))))


def coordinate_check(name, width, parametrization):
    config_fn, x_fn, y_fn, hidden = MODELS[name]
    module = config_fn(width, parametrization).module()
    x, y = x_fn(jax.random.key(1)), y_fn(jax.random.key(2))
    params = module.init(jax.random.key(0), x)["params"]

    def forward(p):
        out, state = module.apply({"params": p}, x, capture_intermediates=True)
        return out, state["intermediates"][hidden]["__call__"][0]

    lr_mult = (update_scales(params, mup.param_roles(params), base_fan_in=NARROW) if parametrization == "mup"
               else jax.tree.map(lambda _: 1.0, params))
    opt = optax.adam(LR)

    @jax.jit
    def train(params):
        def step(carry, _):
            p, state = carry
            grads = jax.grad(lambda p: xent(forward(p)[0], y))(p)
            updates, state = opt.update(grads, state, p)
            updates = jax.tree.map(lambda u, m: u * m, updates, lr_mult)
            return (optax.apply_updates(p, updates), state), None

        (new, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=STEPS)
        return forward(params), forward(new)

    (out0, h0), (out1, h1) = train(params)
    return {"hidden": rms(h0), "d_hidden": rms(h1 - h0), "d_out": rms(out1 - out0)}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_mup_keeps_scales_width_independent_and_standard_does_not(name):
    ratios = {}
    for parametrization in ("mup", "standard"):
        narrow = coordinate_check(name, NARROW, parametrization)
        wide = coordinate_check(name, WIDE, parametrization)
        ratios[parametrization] = {k: wide[k] / narrow[k] for k in narrow}
    for key, ratio in ratios["mup"].items():
        assert 0.5 < ratio < 2.0, (name, key, ratios)
    # Standard parametrization: update scales grow with width (8x wider here). In the
    # transformer the final LayerNorm damps the output change, so the residual stream shows it.
    assert max(ratios["standard"]["d_hidden"], ratios["standard"]["d_out"]) > 3.0, (name, ratios)


def test_equal_to_standard_at_base_width():
    x = jax.random.normal(jax.random.key(0), (4, 40))
    outs = [mlp(NARROW, p).module().init_with_output(jax.random.key(0), x)[0]
            for p in ("mup", "standard")]
    assert jnp.allclose(outs[0], outs[1])


def test_param_roles_and_lr_multipliers():
    params = mlp(WIDE, "mup").module().init(jax.random.key(0), jnp.zeros((1, 40)))["params"]
    roles = mup.param_roles(params)
    assert roles["input"]["kernel"] == "input" and roles["hidden_1"]["kernel"] == "hidden"
    assert roles["readout"]["dense"]["kernel"] == "output"
    assert roles["hidden_1"]["bias"] == "vector"
    mult = update_scales(params, roles, base_fan_in=NARROW)
    assert mult["hidden_1"]["kernel"] == NARROW / WIDE
    assert mult["input"]["kernel"] == mult["readout"]["dense"]["kernel"] == 1.0


def test_bad_parametrization_is_rejected():
    with pytest.raises(ValueError, match="'mu-p'"):
        MLPConfig(64, 2, 10, parametrization="mu-p")
