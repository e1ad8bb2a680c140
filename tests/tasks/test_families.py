import jax
import jax.numpy as jnp
import pytest

from tasks.base import TaskFamily
from tasks.families import MLPFamily
from tasks.classification import ClassificationTask


@pytest.fixture(scope="module")
def family(data_dir):
    return MLPFamily(data_dir=data_dir)


def test_sample_is_deterministic_and_varied(family):
    assert isinstance(family, TaskFamily)
    specs = [family.sample_spec(jax.random.key(i)) for i in range(20)]
    assert specs[3] == family.sample_spec(jax.random.key(3))
    assert len({(s.dataset, s.model.width, s.model.depth, s.batch_size) for s in specs}) > 5
    for s in specs:
        assert s.model.width in family.widths and s.model.depth in family.depths
        assert 0.5 <= s.init_scale <= 2.0 and s.horizon in family.horizons


def test_population_stacks_and_runs_inside_jit(family):
    population = family.sample_population(jax.random.key(7), 4)
    assert isinstance(population, ClassificationTask)
    assert population.init_scale.shape == (4,)
    assert len(set(population.init_scale.tolist())) == 4

    @jax.jit
    def losses(task, key):
        def one(t, k):
            init_key, batch_key = jax.random.split(k)
            params = t.init(init_key)
            return t.loss(params, t.sample_batch(batch_key)), t.eval_loss(params)
        return jax.vmap(one)(task, jax.random.split(key, 4))

    train, held_out = losses(population, jax.random.key(0))
    assert train.shape == held_out.shape == (4,)
    assert bool(jnp.all(jnp.isfinite(train))) and bool(jnp.all(jnp.isfinite(held_out)))


def test_family_rejects_bad_config():
    with pytest.raises(ValueError, match="widths"):
        MLPFamily(widths=())
    with pytest.raises(ValueError, match="cifar10"):
        MLPFamily(datasets=("cifar10",))


def test_meta_train_small_factory_takes_overrides_and_quadratic_fallback(data_dir):
    import tasks
    from tasks.quadratic import QuadraticFamily

    family = tasks.meta_train_small(data_dir=data_dir, widths=(32,))
    assert family.widths == (32,) and family.data_dir == data_dir
    quad = QuadraticFamily().sample(jax.random.key(0))
    params = quad.init(jax.random.key(1))
    assert isinstance(quad, tasks.Task)
    with pytest.raises(ValueError, match="pass a key"):
        tasks.held_out_loss(quad, params)
    assert jnp.isfinite(tasks.held_out_loss(quad, params, jax.random.key(2)))
