import jax
import jax.numpy as jnp
import optax
import pytest

from learned_opt import mup


@pytest.fixture(scope="module")
def family(data_dir):
    from meta_train.families import make_family

    return make_family("autoencoder", {"data_dir": data_dir, "widths": [32], "batch_sizes": [32]})


def test_family_draws_autoencoders_with_named_mu_p_roles(family):
    from tasks.autoencoder import AutoencoderTask

    specs = [family.sample_spec(jax.random.key(i)) for i in range(20)]
    assert {s.dataset for s in specs} == {"mnist1d", "digits"}
    assert len({(s.model.depth, s.model.code_dim) for s in specs}) > 3
    task = next(s for s in specs if s.dataset == "digits" and s.model.depth == 2).build(family.data_dir)
    assert isinstance(task, AutoencoderTask) and task.model.output_dim == 64
    params = task.init(jax.random.key(0))
    roles = dict(zip([jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]],
                     mup.resolve_roles(params, task.model.param_roles(params))))
    kernel_roles = {k: r for k, r in roles.items() if k.endswith("['kernel']")}
    assert kernel_roles == {
        "['hidden_code']['kernel']": "hidden", "['hidden_dec_1']['kernel']": "hidden",
        "['hidden_enc_1']['kernel']": "hidden", "['input']['kernel']": "input",
        "['input_decoder']['kernel']": "input", "['readout']['dense']['kernel']": "output"}


def test_adam_lowers_the_reconstruction_error_of_a_stacked_population(family):
    population = family.sample_population(jax.random.key(3), 2)
    opt = optax.adam(3e-3)

    @jax.jit
    def train(task, key):
        def one(t, k):
            params = t.init(k)

            def step(carry, kb):
                params, state = carry
                grads = jax.grad(t.loss)(params, t.sample_batch(kb))
                updates, state = opt.update(grads, state, params)
                return (optax.apply_updates(params, updates), state), None

            (end, _), _ = jax.lax.scan(step, (params, opt.init(params)), jax.random.split(k, 150))
            return t.eval_loss(params), t.eval_loss(end)
        return jax.vmap(one)(task, jax.random.split(key, 2))

    start, end = train(population, jax.random.key(0))
    assert bool(jnp.all(end < 0.7 * start)), (start, end)


def test_bad_autoencoder_configs_are_explained(data_dir):
    from tasks.autoencoder import make_autoencoder_task
    from tasks.families import AutoencoderFamily
    from tasks.models.autoencoder import AutoencoderConfig

    with pytest.raises(ValueError, match="code_dims"):
        AutoencoderFamily(code_dims=())
    with pytest.raises(ValueError, match="output_dim=40"):
        make_autoencoder_task("digits", AutoencoderConfig(32, 1, output_dim=40), batch_size=8,
                              horizon=10, data_dir=data_dir)
    with pytest.raises(ValueError, match="make_autoencoder_task"):
        AutoencoderConfig(32, 1).module()
    with pytest.raises(ValueError, match="input dataset"):
        make_autoencoder_task("stdlib_chars", AutoencoderConfig(32, 1), batch_size=8, horizon=10,
                              data_dir=data_dir)
