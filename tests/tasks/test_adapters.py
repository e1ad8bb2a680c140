import flax.linen as nn
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from tasks import adapters
from tasks.data.loading import load_arrays
from tasks.stacking import stack_tasks

STEPS = 50


@pytest.fixture(scope="module")
def digits(data_dir):
    def split(name):
        a = load_arrays("digits", name, data_dir=data_dir)
        return {"x": a["x"].reshape(len(a["y"]), -1).astype(np.float32) / 16.0, "y": a["y"]}
    return split("train"), split("test")


def xent(logits, batch):
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()


def haiku_task(train, test):
    def f(batch):
        return xent(hk.nets.MLP([32, 10])(batch["x"]), batch)
    return adapters.from_haiku(hk.transform(f), train=train, test=test, batch_size=32,
                               horizon=STEPS, name="haiku_mlp")


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.relu(nn.Dense(32)(x)))


def linen_task(train, test):
    return adapters.from_linen(LinenMLP(), xent, train=train, test=test, batch_size=32,
                               horizon=STEPS, name="linen_mlp")


class NnxMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(64, 32, rngs=rngs)
        self.out = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.hidden(x)))


def nnx_task(train, test):
    return adapters.from_nnx(NnxMLP, lambda model, batch: xent(model(batch["x"]), batch),
                             train=train, test=test, batch_size=32, horizon=STEPS,
                             name="nnx_mlp")


def plain_task(train, test):
    def init(key):
        return {"w": 0.01 * jax.random.normal(key, (64, 10)), "b": jnp.zeros(10)}
    return adapters.from_loss_fn(init, lambda p, b: xent(b["x"] @ p["w"] + p["b"], b),
                                 train=train, test=test, batch_size=32, horizon=STEPS,
                                 name="plain_linear")


ADAPTER_TASKS = {"haiku": haiku_task, "linen": linen_task, "nnx": nnx_task, "plain": plain_task}


@pytest.mark.parametrize("kind", sorted(ADAPTER_TASKS))
def test_adapter_trains_with_adam_for_50_steps(kind, digits):
    task = ADAPTER_TASKS[kind](*digits)
    opt = optax.adam(1e-2)

    @jax.jit
    def train(task, key):
        params = task.init(key)

        def step(carry, k):
            params, state = carry
            loss, grads = jax.value_and_grad(task.loss)(params, task.sample_batch(k))
            updates, state = opt.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), loss

        start = task.eval_loss(params)
        (params, _), losses = jax.lax.scan(step, (params, opt.init(params)),
                                           jax.random.split(key, STEPS))
        return start, task.eval_loss(params), losses

    start, end, losses = train(task, jax.random.key(0))
    assert losses.shape == (STEPS,)
    assert float(losses[-10:].mean()) < 0.6 * float(losses[:5].mean())
    assert float(end) < 0.6 * float(start)
    assert task.info.num_params > 0 and task.info.horizon == STEPS


@pytest.mark.parametrize("kind", sorted(ADAPTER_TASKS))
def test_adapter_tasks_stack_into_a_population(kind, digits):
    task = ADAPTER_TASKS[kind](*digits)
    population = stack_tasks([task, task])
    params = jax.vmap(lambda t, k: t.init(k))(population, jax.random.split(jax.random.key(0), 2))
    losses = jax.vmap(lambda t, p: t.eval_loss(p))(population, params)
    assert losses.shape == (2,) and losses[0] != losses[1]


def test_adapters_reject_bad_input(digits):
    train, test = digits
    with pytest.raises(TypeError, match="hk.transform"):
        adapters.from_haiku(lambda b: 0.0, train=train, test=test, batch_size=8, horizon=1,
                            name="x")
    with pytest.raises(ValueError, match="leading"):
        adapters.from_loss_fn(lambda k: {}, lambda p, b: 0.0,
                              train={"x": np.zeros((5, 2)), "y": np.zeros(4)}, test=test,
                              batch_size=2, horizon=1, name="x")
    with pytest.raises(ValueError, match="input_key 'image'"):
        adapters.from_linen(LinenMLP(), xent, train=train, test=test, batch_size=8, horizon=1,
                            name="x", input_key="image")
