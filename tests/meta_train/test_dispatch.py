"""The dispatcher's bookkeeping without Ray: async staleness, drops, failures (deterministic,
since LocalPool answers calls in submission order)."""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from meta_train import learner as learner_lib
from meta_train.distribution.dispatch import FAILED, Dispatcher, LocalPool, Outcome


class ConstantWorker:
    """Meta-gradient 1 for every theta; remembers the thetas it was sent."""

    def __init__(self):
        self.seen = []

    def compute(self, theta, key, version=0):
        self.seen.append(float(theta["w"]))
        metrics = {"meta_loss": jnp.float32(1.0), "unroll/resets": jnp.float32(0),
                   "unroll/diverged": jnp.float32(0), "grad/dropped": jnp.float32(0),
                   "unroll/inner_steps": jnp.float32(10)}
        return {"w": jnp.ones(())}, metrics


class Worker1Fails:
    """A pool whose worker 1 raises on every call (as a RayPool reports it)."""

    def __init__(self, pool):
        self.pool, self.num_workers = pool, pool.num_workers

    def wait(self):
        out = self.pool.wait()
        if out.index == 1:
            return Outcome(1, out.version, FAILED, error="ValueError: boom")
        return out

    def __getattr__(self, name):
        return getattr(self.pool, name)


def make(pool, **kwargs):
    tx = optax.sgd(0.1)
    outer = jax.jit(functools.partial(learner_lib.outer_step, tx, 1e9))
    learner = learner_lib.init_learner(tx, {"w": jnp.zeros(())}, jax.random.PRNGKey(0))
    return Dispatcher(pool, outer, **kwargs), learner


def run_steps(dispatcher, learner, n):
    rows = []
    for _ in range(n):
        learner, metrics = dispatcher.step(learner)
        rows.append({k: float(np.asarray(v)) for k, v in metrics.items()})
    return learner, rows


@pytest.mark.parametrize("max_staleness, dropped, staleness", [
    (0, [0, 1, 1, 1], [0, 0, 0, 0]),  # worker 1 is always one version behind: all dropped
    (1, [0, 0, 0, 0], [0, 1, 1, 1]),
])
def test_async_applies_each_result_and_drops_stale_ones(max_staleness, dropped, staleness):
    workers = [ConstantWorker(), ConstantWorker()]
    dispatcher, learner = make(LocalPool(workers), mode="async", max_staleness=max_staleness)
    learner, rows = run_steps(dispatcher, learner, 4)
    assert int(learner.step) == 4
    assert [r["dist/stale_dropped"] for r in rows] == dropped
    assert [r["dist/staleness"] for r in rows] == staleness
    assert rows[-1]["total/dist_stale_dropped"] == sum(dropped)
    assert all(r["dist/results"] == 1 for r in rows)
    np.testing.assert_allclose(float(learner.theta["w"]), -0.4, rtol=1e-6)  # 4 applied steps


def test_sync_puts_theta_once_per_version_and_averages_every_worker():
    workers = [ConstantWorker(), ConstantWorker(), ConstantWorker()]
    pool = LocalPool(workers)
    puts = []
    put = pool.put
    pool.put = lambda theta: puts.append(1) or put(theta)
    dispatcher, learner = make(pool, mode="sync")
    learner, rows = run_steps(dispatcher, learner, 3)
    assert len(puts) == 3
    assert all(r["dist/results"] == 3 and r["unroll/inner_steps"] == 30 for r in rows)
    for w in workers:  # every worker saw every version
        np.testing.assert_allclose(w.seen, [0.0, -0.1, -0.2], rtol=1e-6)
    assert rows[0]["perf/wait_s"] >= 0 and rows[0]["perf/learner_s"] > 0


def test_failed_worker_is_dropped_logged_and_stops_the_run_after_three_in_a_row(caplog):
    pool = Worker1Fails(LocalPool([ConstantWorker(), ConstantWorker()]))
    dispatcher, learner = make(pool, mode="sync")
    with caplog.at_level(logging.ERROR, logger="meta_train.learner"):
        learner, rows = run_steps(dispatcher, learner, 2)
        with pytest.raises(RuntimeError, match="worker 1 failed 3 calls in a row"):
            dispatcher.step(learner)
    assert [r["dist/failed"] for r in rows] == [1, 1]
    assert [r["dist/results"] for r in rows] == [1, 1]
    assert rows[-1]["total/dist_failed"] == 2
    assert "worker 1 raised on theta version 0" in caplog.text and "boom" in caplog.text
