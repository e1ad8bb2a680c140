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


def test_cnn_family_draws_cnns_and_leaves_out_the_held_out_cnn(data_dir):
    from tasks.families import CNNFamily
    from tasks.models.cnn import CNNConfig

    family = CNNFamily(data_dir=data_dir, batch_sizes=(32,))
    specs = [family.sample_spec(jax.random.key(i)) for i in range(30)]
    assert all(isinstance(s.model, CNNConfig) and s.dataset == "digits" for s in specs)
    assert not any(s.model.width == 32 and s.model.depth == 3 for s in specs)
    assert len({(s.model.width, s.model.depth) for s in specs}) > 3
    population = family.sample_population(jax.random.key(1), 2)
    params = jax.vmap(lambda t, k: t.init(k))(population, jax.random.split(jax.random.key(0), 2))
    assert jax.tree.leaves(params)[0].shape[0] == 2
    with pytest.raises(ValueError, match="mnist1d"):
        CNNFamily(datasets=("mnist1d",))


def test_mixture_draws_each_member_by_weight_and_rejects_bad_weights(data_dir):
    from tasks.families import CNNFamily, MixtureFamily

    mlp, cnn = MLPFamily(data_dir=data_dir), CNNFamily(data_dir=data_dir)
    mixture = MixtureFamily(members=(mlp, cnn), weights=(3.0, 1.0))
    drawn = [mixture.member(jax.random.key(i)) for i in range(400)]
    assert mixture.member(jax.random.key(5)) is drawn[5]
    share_cnn = sum(m is cnn for m in drawn) / len(drawn)
    assert 0.17 < share_cnn < 0.33, share_cnn
    assert MixtureFamily(members=(mlp, cnn), weights=(1.0, 1e-9)).member(jax.random.key(0)) is mlp
    with pytest.raises(ValueError, match="weights"):
        MixtureFamily(members=(mlp, cnn), weights=(1.0,))
    with pytest.raises(ValueError, match="weights"):
        MixtureFamily(members=(mlp, cnn), weights=(1.0, 0.0))


def test_recipe_mixture_builds_members_and_explains_bad_entries(data_dir):
    from meta_train.families import leaf_families, make_family
    from tasks.families import CNNFamily

    family = make_family("mixture", {"members": [
        {"family": "mlp", "weight": 2, "kwargs": {"data_dir": data_dir, "widths": [32]}},
        {"family": "cnn", "kwargs": {"data_dir": data_dir}}]})
    members = leaf_families(family)
    assert members[0].widths == (32,) and isinstance(members[1], CNNFamily)
    assert family.weights == (2.0, 1.0)
    with pytest.raises(ValueError, match="members"):
        make_family("mixture", {"members": []})
    with pytest.raises(ValueError, match="wieght"):
        make_family("mixture", {"members": [{"family": "mlp", "wieght": 2}]})


def test_lm_family_draws_small_transformers_on_the_generated_language(data_dir):
    from meta_train.families import make_family
    from tasks.families import LanguageModelFamily
    from tasks.language_model import LanguageModelTask

    family = make_family("lm", {"data_dir": data_dir, "widths": [16, 32], "seq_lens": [16]})
    assert isinstance(family, LanguageModelFamily)
    specs = [family.sample_spec(jax.random.key(i)) for i in range(30)]
    assert {s.dataset for s in specs} == {"synth_chars"}  # the held-out stdlib text stays out
    assert {s.model.width for s in specs} == {16, 32} and {s.model.max_len for s in specs} == {16}
    assert len({(s.model.depth, s.model.num_heads, s.batch_size) for s in specs}) > 3
    population = family.sample_population(jax.random.key(2), 2)
    assert isinstance(population, LanguageModelTask) and population.init_scale.shape == (2,)

    @jax.jit
    def losses(task, key):
        def one(t, k):
            params = t.init(k)
            return t.loss(params, t.sample_batch(k)), t.eval_loss(params)
        return jax.vmap(one)(task, jax.random.split(key, 2))

    train, held_out = losses(population, jax.random.key(0))
    assert bool(jnp.all(jnp.isfinite(train))) and bool(jnp.all(jnp.isfinite(held_out)))
    with pytest.raises(ValueError, match="divisible by num_heads"):
        LanguageModelFamily(widths=(30,), num_heads=(4,))
    with pytest.raises(ValueError, match="digits"):
        LanguageModelFamily(datasets=("digits",))
