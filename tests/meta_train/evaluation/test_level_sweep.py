"""benchmarks/level_sweep.py: factor 1 is the learned optimizer as `lopt evaluate` runs it, and a
factor k multiplies its every update by k."""

import importlib.util
from pathlib import Path

import jax
import numpy as np
import pytest

from learned_opt import checkpoint
from meta_train.evaluation.harness import ProgramCache, RunSchedule, run_grid
from meta_train.evaluation.specs import parse_optimizer
from meta_train.evaluation.suites import QuadraticSpec

NAME = "adam_schedule_v2"
SCHEDULE = RunSchedule(num_steps=20, num_seeds=2, num_evals=2)


def _load_benchmark():
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "level_sweep.py"
    spec = importlib.util.spec_from_file_location("level_sweep", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def level_sweep():
    return _load_benchmark()


def test_factor_one_is_the_untuned_optimizer_and_k_scales_the_update(level_sweep):
    task = QuadraticSpec(8, 1.0, 10.0, horizon=20).build()
    arch, theta, _ = checkpoint.load_theta(NAME)
    scaled = level_sweep.scaled_spec(NAME, arch, theta, [1.0, 0.0625])
    cache = ProgramCache()
    swept = run_grid(scaled, task, SCHEDULE, cache=cache)
    plain = run_grid(parse_optimizer(NAME), task, SCHEDULE, cache=cache)
    np.testing.assert_allclose(swept.train_loss[0], plain.train_loss[0], rtol=1e-5)
    # A 16x smaller step leaves the loss higher after 20 steps on every seed.
    assert np.all(swept.train_loss[1, :, -1] > swept.train_loss[0, :, -1])

    # The first update, directly: exactly k times the unscaled one.
    params = task.init(jax.random.PRNGKey(0))
    grads = jax.grad(lambda p: task.loss(p, task.sample_batch(jax.random.PRNGKey(1))))(params)
    updates = []
    for k in (1.0, 0.0625):
        tx = scaled.make(k, params, task, 20)
        u, _ = tx.update(grads, tx.init(params), params, loss=1.0)
        updates.append(u)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(b, 0.0625 * a, rtol=1e-6), *updates)


def test_bad_arguments_name_the_value(level_sweep):
    arch, _, _ = checkpoint.load_theta(NAME)
    with pytest.raises(ValueError, match="no_such_field"):
        level_sweep.parse_field(arch, "no_such_field=1")
    with pytest.raises(ValueError, match="positive"):
        level_sweep.main(["--optimizer", NAME, "--suite", "in_distribution", "--factors", "0"])


def test_probe_families_parses_and_holds_no_evaluation_task():
    from meta_train.evaluation.suites import resolve_suite

    root = Path(__file__).resolve().parents[3]
    probe = resolve_suite(str(root / "configs" / "probe_families.yaml"))
    kinds = sorted({e.name.split("_")[0] for e in probe.entries})
    assert kinds == ["cnn", "mlp", "transformer"] and len(probe.entries) == 6
    evaluation = {e.name for s in ("in_distribution", str(root / "configs" / "heldout_cpu.yaml"))
                  for e in resolve_suite(s).entries}
    assert not evaluation & {e.name for e in probe.entries}
