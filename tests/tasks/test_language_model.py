import jax
import jax.numpy as jnp
import optax
import pytest

from tasks.models.transformer import TransformerConfig
from tasks.specs import LanguageModelSpec


@pytest.fixture(scope="module")
def task(data_dir):
    model = TransformerConfig(width=32, depth=1, num_heads=2, max_len=32)
    return LanguageModelSpec("stdlib_chars", model, batch_size=16, horizon=60).build(data_dir)


def test_batches_and_info(task):
    batch = jax.jit(lambda t, k: t.sample_batch(k))(task, jax.random.key(0))
    assert batch["tokens"].shape == (16, 33) and batch["tokens"].dtype == jnp.uint8
    assert task.info.num_params > 256 * 32 * 2
    assert task.info.name.startswith("transformer_w32_d1")


def test_causal_model_ignores_future_tokens(task):
    params = task.init(jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (1, 32), 0, 256)
    changed = tokens.at[0, 20].set((tokens[0, 20] + 1) % 256)
    apply = task.model.module().apply
    a, b = apply({"params": params}, tokens), apply({"params": params}, changed)
    assert jnp.allclose(a[0, :20], b[0, :20], atol=1e-5)
    assert not jnp.allclose(a[0, 20:], b[0, 20:])


def test_adam_lowers_held_out_loss(task):
    opt = optax.adam(3e-3)

    @jax.jit
    def train(task, key):
        params = task.init(key)

        def step(carry, k):
            params, state = carry
            grads = jax.grad(task.loss)(params, task.sample_batch(k))
            updates, state = opt.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        start = task.eval_loss(params)
        (params, _), _ = jax.lax.scan(step, (params, opt.init(params)),
                                      jax.random.split(key, 60))
        return start, task.eval_loss(params)

    start, end = train(task, jax.random.key(0))
    assert float(end) < float(start) - 1.0  # nats/byte; from ~log(256)-ish at init


def test_width_must_divide_heads():
    with pytest.raises(ValueError, match="num_heads"):
        TransformerConfig(width=30, depth=1, num_heads=4)
