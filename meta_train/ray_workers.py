"""Workers as Ray actors: the same `LocalWorker` logic, one actor per share of the population.

    pool = RayPool(config)          # after ray_workers.connect("auto" | "local" | ADDRESS)
    meta_train(config, workdir, pool=pool)   # or: lopt meta-train RECIPE --ray auto

* Theta goes through the object store once per version: `put` is one `ray.put` of the host
  copy, and the same ObjectRef is passed to every actor (Ray resolves it on each host once).
* Each actor builds its worker from the recipe (`meta_train.recipe`), so it needs only the
  config and the worker index, and a restarted actor (`max_restarts`) rebuilds the same fresh
  states without the driver's help. Its in-flight call fails with `RayActorError` (LOST) and
  the dispatcher drops and counts it; calls made after the death wait for the restart.
* An actor compiles its truncation when it is built (`LocalWorker.warm_up`), and the pool
  waits for all of them, so no worker starts late (in async mode it would contribute nothing
  until it caught up). Set JAX_COMPILATION_CACHE_DIR in `distributed.env_vars` to make
  restarts and later runs load the compiled executables instead of compiling again.
* Resources per actor: `distributed.num_cpus_per_worker` / `num_gpus_per_worker` /
  `resources_per_worker` (e.g. TPU); XLA and
  OpenMP intra-op threads are capped through the actor's `runtime_env` (set before jax starts).
* States for checkpoints are fetched from the actors (`get_states`) and pushed back on resume.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable

import jax
import numpy as np
import ray

from meta_train.config import DistributedConfig, MetaTrainConfig, num_workers
from meta_train.recipe import initial_theta, make_components, make_worker
from meta_train.worker_pool import FAILED, LOST, OK, Outcome

_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours its tracebacks; the log file wants text


def connect(address: str) -> bool:
    """Join (or start) a Ray cluster; True when this call started Ray (the caller shuts it down).

    address: "local" starts a private single-node cluster on this machine; "auto" joins the
    cluster this host belongs to (`ray start` / `ray up` / inside `ray job submit`); anything
    else is a cluster address such as "10.0.0.1:6379" or "ray://head:10001".
    """
    if ray.is_initialized():
        return False
    if not address:
        raise ValueError("--ray needs 'auto', 'local' or a cluster address such as 10.0.0.1:6379.")
    ray.init(address=address)
    return True


def actor_env(cfg: DistributedConfig) -> dict[str, str]:
    """Environment variables of every worker actor (in its runtime_env, so set before jax loads)."""
    env: dict[str, str] = {}
    if cfg.threads_per_worker > 0:
        n = str(cfg.threads_per_worker)
        env["XLA_FLAGS"] = f"--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={n}"
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = n
    if 0 < cfg.num_gpus_per_worker < 1:  # several workers share a GPU: allocate on demand
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    env.update(cfg.env_vars)
    return env


class WorkerActor:
    """The body of a worker actor (wrapped by `ray.remote` in `RayPool`)."""

    def __init__(self, config: MetaTrainConfig, arch: Any, index: int, worker_factory: Callable):
        self.index = index
        self.pid = os.getpid()
        parts = make_components(config, arch)
        self.worker = worker_factory(config, parts, index)
        self.worker.warm_up(initial_theta(config, parts.arch), jax.random.PRNGKey(0))

    def compute(self, theta: Any, key: np.ndarray) -> tuple[Any, dict[str, Any], int]:
        grad, metrics = self.worker.compute(theta, key)
        return jax.device_get(grad), jax.device_get(metrics), self.pid

    def get_states(self) -> Any:
        return jax.device_get(self.worker.get_states())

    def set_states(self, states: Any) -> None:
        self.worker.set_states(jax.device_put(states))

    def get_pid(self) -> int:
        return self.pid


def _retrying(method):
    """Idempotent calls (states, pid) wait out an actor's restart instead of failing."""
    return method.options(max_task_retries=-1)


class RayPool:
    """`distributed.num_workers` actors behind the `meta_train.worker_pool` interface."""

    def __init__(self, config: MetaTrainConfig, arch: Any = None, *, worker_factory: Callable = make_worker):
        if not ray.is_initialized():
            raise RuntimeError("RayPool needs a Ray cluster: call ray_workers.connect(...) or ray.init() first.")
        cfg = config.distributed
        self.num_workers = num_workers(config)
        actor_cls = ray.remote(WorkerActor).options(
            num_cpus=cfg.num_cpus_per_worker,
            num_gpus=cfg.num_gpus_per_worker,
            resources=dict(cfg.resources_per_worker) or None,
            max_restarts=cfg.max_restarts,
            max_task_retries=0,  # at most once: a call that dies with its actor is dropped, not rerun
            runtime_env={"env_vars": actor_env(cfg)},
        )
        self.actors = [actor_cls.remote(config, arch, i, worker_factory) for i in range(self.num_workers)]
        self._pending: dict[Any, tuple[int, int]] = {}
        self._recovering: set[int] = set()  # lost a call: its next call waits out the restart
        self.pids()  # wait until every actor is built and compiled, so async starts even

    def put(self, theta: Any) -> Any:
        return ray.put(jax.device_get(theta))

    def submit(self, index: int, theta_handle: Any, version: int, key: jax.Array) -> None:
        method = self.actors[index].compute
        if index in self._recovering:  # at-least-once, so it waits while Ray restarts the actor
            self._recovering.discard(index)
            method = method.options(max_task_retries=-1)
        ref = method.remote(theta_handle, np.asarray(key))
        self._pending[ref] = (index, version)

    def wait(self) -> Outcome:
        if not self._pending:
            raise RuntimeError("RayPool.wait() with no submitted call; submit one first.")
        (ref,), _ = ray.wait(list(self._pending), num_returns=1)
        index, version = self._pending.pop(ref)
        try:
            grad, metrics, pid = ray.get(ref)
        except ray.exceptions.RayTaskError as err:  # the worker raised; the actor lives on
            return Outcome(index, version, FAILED, error=_ANSI.sub("", str(err)))
        except ray.exceptions.RayError as err:  # the actor died (killed, OOM, node lost)
            self._recovering.add(index)
            return Outcome(index, version, LOST, error=f"{type(err).__name__}: {str(err).splitlines()[0]}")
        return Outcome(index, version, OK, grad, metrics, pid=pid)

    def busy(self) -> set[int]:
        return {index for index, _ in self._pending.values()}

    def discard_in_flight(self) -> None:
        self._pending.clear()  # their results are released when the refs go out of scope

    def get_states(self) -> list[Any]:
        """Every actor's states, after its in-flight call (if any) has finished."""
        return ray.get([_retrying(a.get_states).remote() for a in self.actors])

    def set_states(self, states: list[Any]) -> None:
        ray.get([_retrying(a.set_states).remote(jax.device_get(s)) for a, s in zip(self.actors, states)])

    def pids(self) -> list[int]:
        return ray.get([_retrying(a.get_pid).remote() for a in self.actors])

    def close(self) -> None:
        self._pending.clear()
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
