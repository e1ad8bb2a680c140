import jax
import jax.numpy as jnp
import pytest

from tasks import suites
from tasks.families import MLPFamily


def test_meta_train_small_matches_the_issue():
    family = suites.FAMILIES["meta_train_small"]()
    assert isinstance(family, MLPFamily)
    assert min(family.widths) == 32 and max(family.widths) == 256
    assert set(family.depths) == {2, 3, 4} and set(family.datasets) == {"mnist1d", "digits"}
    assert len(family.batch_sizes) > 1


@pytest.mark.parametrize("suite", sorted(suites.SUITES))
def test_suite_entries_are_plain_data_with_horizons(suite):
    entries = suites.SUITES[suite]()
    assert len({e.name for e in entries}) == len(entries)
    for entry in entries:
        assert entry.horizon >= 1 and entry.multipliers.horizon > 0
    if suite == "in_distribution":
        assert all(e.multipliers.width <= 1 and e.multipliers.depth <= 1 for e in entries)


def test_generalization_covers_the_required_shifts():
    entries = suites.generalization()
    widths = {e.multipliers.width for e in entries}
    assert {8.0, 16.0} <= widths
    assert any(e.multipliers.depth == 2.0 for e in entries)
    assert any(e.multipliers.horizon == 10.0 for e in entries)
    kinds = {type(e.spec.model).__name__ for e in entries}
    assert {"MLPConfig", "CNNConfig", "TransformerConfig"} <= kinds
    assert any(e.held_out_dataset and e.available() for e in entries)


def test_offline_generalization_entries_build_and_evaluate(data_dir):
    """Every entry that needs no download builds; cheap ones get a finite held-out loss."""
    for entry in suites.generalization():
        if not entry.available(data_dir):
            assert entry.spec.dataset in ("mnist", "fashion_mnist")
            continue
        task = entry.build(data_dir)
        assert task.info.horizon == entry.horizon
        shapes = jax.eval_shape(task.init, jax.random.key(0))
        assert sum(x.size for x in jax.tree.leaves(shapes)) == task.info.num_params
        if task.info.num_params < 300_000:
            loss = jax.jit(lambda t: t.eval_loss(t.init(jax.random.key(0))))(task)
            assert jnp.isfinite(loss)
