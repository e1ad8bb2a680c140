import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tasks.base import Task
from tasks.models.mlp import MLPConfig
from tasks.specs import ClassificationSpec


@pytest.fixture(scope="module")
def task(data_dir):
    return ClassificationSpec("mnist1d", MLPConfig(32, 2, 10), batch_size=64,
                              horizon=100).build(data_dir)


def test_task_protocol_and_info(task):
    assert isinstance(task, Task)
    info = task.info
    assert info.name == "mlp_w32_d2_relu_mup_mnist1d_bs64" and info.horizon == 100
    assert info.num_params == 40 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10


def test_batches_are_sampled_inside_jit_without_recompiling(task):
    traces = []

    @jax.jit
    def batch(t, key):
        traces.append(1)
        return t.sample_batch(key), t.sample_batch(key, split="test")

    train, test = batch(task, jax.random.key(0))
    assert train["x"].shape == (64, 40) and train["x"].dtype == jnp.float32
    assert train["y"].shape == (64,) and train["y"].dtype == jnp.int32
    assert test["x"].shape == (64, 40)
    other = task.replace(init_scale=jnp.float32(3.0))
    again, _ = batch(other, jax.random.key(1))
    assert len(traces) == 1
    assert not np.array_equal(train["y"], again["y"])


def test_bad_split_is_rejected(task):
    with pytest.raises(ValueError, match="'valid'"):
        task.sample_batch(jax.random.key(0), split="valid")


def test_adam_training_lowers_train_and_held_out_loss(task):
    opt = optax.adam(3e-3)

    @jax.jit
    def step(carry, key):
        params, state = carry
        loss, grads = jax.value_and_grad(task.loss)(params, task.sample_batch(key))
        updates, state = opt.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), loss

    params = task.init(jax.random.key(0))
    before = task.eval_loss(params)
    (params, _), losses = jax.lax.scan(step, (params, opt.init(params)),
                                       jax.random.split(jax.random.key(1), 200))
    assert losses[-20:].mean() < 0.8 * losses[:20].mean()
    assert task.eval_loss(params) < 0.8 * before
