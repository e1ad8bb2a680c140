import jax
import jax.numpy as jnp
import pytest

from tasks.models.mlp import MLPConfig
from tasks.specs import ClassificationSpec
from tasks.stacking import stack_tasks


def spec(**overrides):
    fields = dict(dataset="digits", model=MLPConfig(32, 2, 10), batch_size=16, horizon=10)
    return ClassificationSpec(**{**fields, **overrides})


def test_stacks_equal_static_fields_and_vmaps(data_dir):
    tasks = [spec(init_scale=s).build(data_dir) for s in (0.5, 1.0, 2.0)]
    population = stack_tasks(tasks)
    assert population.init_scale.shape == (3,)
    assert population.data.train["x"].shape == (3, 1437, 8, 8, 1)
    keys = jax.random.split(jax.random.key(0), 3)
    params = jax.vmap(lambda t, k: t.init(k))(population, keys)
    kernels = params["hidden_1"]["kernel"]
    # same key -> init differs only by the per-member scale
    same = jax.vmap(lambda t: t.init(jax.random.key(1)))(population)["hidden_1"]["kernel"]
    assert jnp.allclose(same[2], 4 * same[0], rtol=1e-5)
    losses = jax.vmap(lambda t, p, k: t.loss(p, t.sample_batch(k)))(population, params, keys)
    assert losses.shape == (3,) and bool(jnp.all(jnp.isfinite(losses)))
    assert kernels.shape == (3, 32, 32)


@pytest.mark.parametrize("overrides, field", [
    (dict(model=MLPConfig(64, 2, 10)), "model"),
    (dict(batch_size=32), "batch_size"),
    (dict(dataset="mnist1d"), "dataset"),
    (dict(horizon=20), "horizon"),
])
def test_stack_error_names_the_differing_static_field(overrides, field, data_dir):
    with pytest.raises(ValueError, match=f"static field {field}:"):
        stack_tasks([spec().build(data_dir), spec(**overrides).build(data_dir)])


def test_stack_rejects_empty_list():
    with pytest.raises(ValueError, match="empty"):
        stack_tasks([])
