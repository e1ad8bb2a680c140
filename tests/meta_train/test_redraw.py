"""tasks.redraw_every: each worker draws a new task pool every N outer steps (deterministic in
the seed, worker and round), and a run stopped anywhere in a round resumes bit for bit."""

import jax
import numpy as np
import pytest
from tests.meta_train.test_learner import toy_config
from tests.meta_train.toy_lopt import MomentumLOpt

from meta_train import recipe
from meta_train.train import build_run, meta_train


def _leaves_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_workers_move_to_a_new_pool_each_round_and_never_back():
    config = toy_config("tasks.redraw_every=2")
    run = build_run(config, arch=MomentumLOpt())
    worker, theta, key = run.workers[0], run.learner.theta, jax.random.PRNGKey(0)
    first = worker.pool
    assert _leaves_equal(first, recipe.make_task_pool(config, recipe.make_components(config, MomentumLOpt()), 0))
    worker.compute(theta, key, 1)
    assert worker.round == 0 and worker.pool is first
    worker.compute(theta, key, 2)
    second = worker.pool
    assert worker.round == 1 and not _leaves_equal(first, second)
    assert _leaves_equal(second, recipe.make_task_pool(config, recipe.make_components(config, MomentumLOpt()), 0, 1))
    worker.compute(theta, key, 1)  # a stale (async) call runs in the current round
    assert worker.round == 1 and worker.pool is second
    with pytest.raises(ValueError, match="tasks.redraw_every=-1; expected an int >= 0"):
        toy_config("tasks.redraw_every=-1")


class _Crash(Exception):
    pass


def _crash_at(step):
    def on_step(s, _metrics):
        if s == step:
            raise _Crash

    return on_step


@pytest.fixture(scope="module")
def static_theta(tmp_path_factory):
    config = toy_config("run.num_steps=5", "run.log_every=1")
    return meta_train(config, str(tmp_path_factory.mktemp("static")), arch=MomentumLOpt()).theta


@pytest.mark.parametrize("redraw_every", [2, 3])
def test_resume_at_a_rounds_start_or_middle_is_bit_exact(tmp_path, static_theta, redraw_every):
    """Stopped after 4 outer steps (the exit checkpoint): with N = 2 the next step starts a
    round, with N = 3 it is in the middle of one. The resumed run ends where the uninterrupted
    one does."""
    config = toy_config("run.num_steps=5", "run.log_every=1", f"tasks.redraw_every={redraw_every}")
    full = meta_train(config, str(tmp_path / "full"), arch=MomentumLOpt())
    assert not _leaves_equal(full.theta, static_theta)  # the new pools change the meta-gradients
    with pytest.raises(_Crash):
        meta_train(config, str(tmp_path / "cut"), arch=MomentumLOpt(), on_step=_crash_at(4))
    resumed = meta_train(config, str(tmp_path / "cut"), arch=MomentumLOpt(), resume=True)
    assert resumed.step == 5 and _leaves_equal(full.theta, resumed.theta)
