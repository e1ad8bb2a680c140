"""Every optimizer shipped in `checkpoints/`: loads by name with only `num_steps`, trains a model
it has never seen, and says where it came from (recipe, commit, meta-training compute)."""

import jax
import jax.numpy as jnp
import optax
import pytest

import learned_opt
from tests.learned_opt.conftest import train

NAMES = learned_opt.list_pretrained()


def test_something_is_shipped():
    assert NAMES, "checkpoints/ ships no pretrained optimizer"


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_loads_by_name_and_trains(name):
    tx = learned_opt.load(name, num_steps=60)
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x_BxD = jax.random.normal(k1, (128, 10))
    y_B = (x_BxD @ jax.random.normal(k2, (10,)) > 0).astype(jnp.int32)
    params = {"w1": jax.random.normal(k3, (10, 32)) / jnp.sqrt(10.0), "b1": jnp.zeros(32),
              "w2": jnp.zeros((32, 2)), "b2": jnp.zeros(2)}

    def loss_fn(p):
        logits = jax.nn.relu(x_BxD @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y_B).mean()

    p = train(tx, loss_fn, params, 60)
    assert float(loss_fn(p)) < 0.5 * float(loss_fn(params))


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_says_where_it_came_from(name):
    _, _, meta = learned_opt.load_theta(name)
    assert meta["recipe"]["optimizer"]["architecture"]
    assert meta["git_commit"] and meta["compute"]["inner_steps"] > 0 and meta["compute"]["wall_s"] > 0
    assert meta["standing"]  # the measured result against tuned AdamW, docs/pretrained.md
