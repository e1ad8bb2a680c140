"""Ray workers against a real local Ray cluster (one per module): sync and async runs, resume,
a killed worker, a worker that raises.

The actors share a JAX persistent compilation cache (a temp dir), so only the first pool pays
for compiling; later pools and restarted actors load the executables.
"""

import os

import jax
import numpy as np
import pytest

ray = pytest.importorskip("ray")

from meta_train import metrics as metrics_lib  # noqa: E402
from meta_train import recipe  # noqa: E402
from meta_train.config import load_config  # noqa: E402
from meta_train.distribution.ray_workers import RayPool  # noqa: E402
from meta_train.train import meta_train  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(REPO, "configs", "smoke.yaml")
BASE = ["run.progress=false", "run.checkpoint_every=100", "distributed.num_workers=2",
        "distributed.num_cpus_per_worker=1"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("jax_cache"))
    env = {
        "PYTHONPATH": REPO,  # actors import tests.meta_train.test_ray for the failing worker
        "JAX_COMPILATION_CACHE_DIR": cache,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": env})
    try:
        yield
    finally:
        ray.shutdown()


def smoke(*extra):
    return load_config(SMOKE, BASE + list(extra))


def rows_of(workdir):
    return metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))


def read_log(workdir):
    with open(os.path.join(workdir, "learner.log"), encoding="utf-8") as f:
        return f.read()


def test_sync_ray_run_equals_in_process_and_resumes(cluster, tmp_path):
    """Same recipe, same workers: the sync Ray run is the in-process run, across a driver kill."""
    config = smoke("run.num_steps=4", "distributed.mode=sync")
    local = meta_train(config, str(tmp_path / "local"))

    def driver_dies_at_2(step, metrics):
        if step == 2:
            raise KeyboardInterrupt

    workdir = str(tmp_path / "ray")
    with pytest.raises(KeyboardInterrupt):
        meta_train(config, workdir, ray_address="auto", on_step=driver_dies_at_2)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]
    resumed = meta_train(config, workdir, ray_address="auto", resume=True)

    assert resumed.step == 4
    for a, b in zip(jax.tree.leaves(local.theta), jax.tree.leaves(resumed.theta)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    ray_rows, local_rows = rows_of(workdir), rows_of(str(tmp_path / "local"))
    assert [r["step"] for r in ray_rows] == [1, 2, 3, 4]
    np.testing.assert_allclose([r["meta_loss"] for r in ray_rows],
                               [r["meta_loss"] for r in local_rows], rtol=1e-4)
    assert all(r["dist/results"] == 2 for r in ray_rows)
    assert ray_rows[-1]["total/dist_lost"] == 0 and ray_rows[-1]["total/dist_failed"] == 0
    assert "RayPool, sync mode" in read_log(workdir)


def test_async_ray_run_drops_stale_results_and_learns_comparably(cluster, tmp_path):
    # max_staleness=0: of the two results computed on version 0, the second to arrive is stale.
    # (Once both workers have delivered; the pool starts them together, after compiling.)
    config = smoke("run.num_steps=16", "distributed.mode=async", "distributed.max_staleness=0")
    meta_train(config, str(tmp_path / "local"))
    result = meta_train(config, str(tmp_path / "ray"), ray_address="auto")

    local_rows = rows_of(str(tmp_path / "local"))
    assert sum(r["dist/stale_dropped"] for r in local_rows) >= 1  # in-process: deterministic
    rows = rows_of(str(tmp_path / "ray"))
    assert result.step == 16 and [r["step"] for r in rows] == list(range(1, 17))
    dropped = sum(r["dist/stale_dropped"] for r in rows)
    assert dropped >= 1
    assert rows[-1]["total/dist_stale_dropped"] == dropped
    assert all(r["dist/staleness"] == 0 and r["dist/results"] == 1 for r in rows)
    ray_loss = np.mean([r["meta_loss"] for r in rows])
    local_loss = np.mean([r["meta_loss"] for r in local_rows])
    assert np.isfinite(ray_loss) and 0.5 < ray_loss / local_loss < 2.0


def test_killed_workers_are_restarted_and_the_run_goes_on(cluster, tmp_path):
    config = smoke("run.num_steps=6", "distributed.mode=async", "distributed.max_staleness=1")
    pool = RayPool(config)
    try:
        pids_before = pool.pids()

        def kill_workers_at_2(step, metrics):
            if step == 2:  # both have a call in flight now; one was submitted a moment ago
                for actor in pool.actors:
                    ray.kill(actor, no_restart=False)

        result = meta_train(config, str(tmp_path), pool=pool, on_step=kill_workers_at_2)
        pids_after = pool.pids()
    finally:
        pool.close()
    rows = rows_of(str(tmp_path))
    assert result.step == 6 and [r["step"] for r in rows] == list(range(1, 7))
    assert rows[-1]["total/dist_lost"] >= 1
    assert sum(r["dist/restarts"] for r in rows) >= 1
    assert not set(pids_before) & set(pids_after)
    assert np.isfinite(rows[-1]["meta_loss"])
    log = read_log(str(tmp_path))
    assert "died during its call" in log and "restarted (pid" in log


class FailingWorker:
    """Worker 1 raises on its second call; everything else is the recipe's worker."""

    def __init__(self, worker, index):
        self.worker, self.index, self.calls = worker, index, 0

    def compute(self, theta, key, version=0):
        self.calls += 1
        if self.index == 1 and self.calls == 2:
            raise ValueError("injected failure in the worker's second call")
        return self.worker.compute(theta, key, version)

    def warm_up(self, theta, key):
        self.worker.warm_up(theta, key)

    def get_states(self):
        return self.worker.get_states()

    def set_states(self, states):
        self.worker.set_states(states)

    def set_round(self, round):
        self.worker.set_round(round)


def failing_worker(config, parts, index):
    return FailingWorker(recipe.make_worker(config, parts, index), index)


def test_worker_exception_reaches_the_learner_log_with_worker_id(cluster, tmp_path):
    config = smoke("run.num_steps=3", "distributed.mode=sync")
    pool = RayPool(config, worker_factory=failing_worker)
    puts = []
    put = pool.put
    pool.put = lambda theta: puts.append(1) or put(theta)
    try:
        result = meta_train(config, str(tmp_path), pool=pool)
    finally:
        pool.close()
    rows = rows_of(str(tmp_path))
    assert result.step == 3
    assert [r["dist/failed"] for r in rows] == [0, 1, 0]
    assert [r["dist/results"] for r in rows] == [2, 1, 2]
    assert rows[-1]["total/dist_failed"] == 1
    assert len(puts) == 3  # theta went to the object store once per version, not per worker
    log = read_log(str(tmp_path))
    assert "worker 1 raised on theta version 1" in log
    assert "injected failure in the worker's second call" in log


def test_cli_ray_flag_runs_the_recipe_on_actors(cluster, tmp_path, capsys):
    """With the VeLO-style optimizer (the other tests run mlp_small): actors unpickle it, run
    its LSTM controller and send back antithetic results."""
    import learned_opt
    from meta_train import cli

    workdir = str(tmp_path / "run")
    rc = cli.main(["meta-train", SMOKE, "--workdir", workdir, "--ray", "auto", "run.num_steps=2",
                   "run.progress=false", "distributed.num_workers=2", "optimizer.architecture=velo"])
    assert rc == 0 and "done" in capsys.readouterr().out
    arch, theta, _ = learned_opt.load_theta(os.path.join(workdir, "theta.safetensors"))
    assert isinstance(arch, learned_opt.VeLOLOpt) and all(np.isfinite(x).all() for x in jax.tree.leaves(theta))
    assert "2 workers (RayPool, sync mode)" in read_log(workdir)
    assert [r["dist/results"] for r in rows_of(workdir)] == [2, 2]
    assert ray.is_initialized()  # --ray auto joined the module's cluster; it is not ours to stop


@pytest.mark.parametrize("name", ["cluster_gpu.yaml", "cluster_tpu.yaml"])
def test_cluster_recipes_load(name):
    from meta_train.config import num_workers
    from meta_train.distribution.ray_workers import actor_env

    config = load_config(os.path.join(REPO, "configs", name))
    assert num_workers(config) > 1
    env = actor_env(config.distributed)
    assert env["JAX_COMPILATION_CACHE_DIR"]
    if config.distributed.num_gpus_per_worker == 0.5:
        assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
        assert "intra_op_parallelism_threads=2" in env["XLA_FLAGS"]
