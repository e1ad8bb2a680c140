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
* Before any actor is created the cluster is checked to hold all of them (`check_resources`),
  and a cluster address is probed (`connect`): both fail with one ClusterError line, not a hang.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable

import jax
import numpy as np
import ray

from meta_train import compile_cache, population_devices
from meta_train.config import ClusterError, DistributedConfig, MetaTrainConfig, num_workers
from meta_train.distribution.dispatch import FAILED, LOST, OK, Outcome
from meta_train.recipe import make_components, make_worker, theta_template

_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours its tracebacks; the log file wants text


PROBE_TIMEOUT_S = 5.0  # a reachable head answers a TCP connect at once; Ray itself retries for minutes


def connect(address: str) -> bool:
    """Join (or start) a Ray cluster; True when this call started Ray (the caller shuts it down).

    address: "local" starts a private single-node cluster on this machine; "auto" joins the
    cluster this host belongs to (`ray start` / `ray up` / inside `ray job submit`); anything
    else is a cluster address such as "10.0.0.1:6379" or "ray://head:10001", which is first
    probed with one TCP connect (`PROBE_TIMEOUT_S`). Failures raise ClusterError (one line).
    """
    if ray.is_initialized():
        return False
    if not address:
        raise ClusterError("--ray ''; expected 'auto', 'local' or a cluster address such as 10.0.0.1:6379.")
    if address not in ("auto", "local"):
        probe(address)
    try:
        ray.init(address=address)
    except (ConnectionError, RuntimeError, ValueError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ClusterError(
            f"--ray {address!r}: cannot join the Ray cluster ({reason}); check the address with "
            "`ray status` on the head node, or use --ray local for a cluster on this machine."
        ) from None
    return True


def probe(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """ClusterError unless `address` (HOST:PORT or ray://HOST:PORT) accepts a TCP connection."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit():
        raise ClusterError(f"--ray {address!r}; expected 'auto', 'local' or HOST:PORT such as "
                           "10.0.0.1:6379 or ray://head:10001.")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except socket.gaierror as err:
        raise ClusterError(f"--ray {address!r}: unknown host {host!r} ({err.strerror}); give the "
                           "head node's name or IP, or use --ray local.") from None
    except OSError as err:  # refused, unreachable, timed out
        reason = f"no answer within {timeout_s:g} s" if isinstance(err, TimeoutError) else err.strerror
        raise ClusterError(f"--ray {address!r}: cannot reach {host}:{port} ({reason}); is Ray running "
                           "there (`ray start --head`) and the port open? Or use --ray local.") from None


def worker_request(cfg: DistributedConfig) -> dict[str, float]:
    """The Ray resources one worker actor reserves (zero amounts left out)."""
    request = {"CPU": cfg.num_cpus_per_worker, "GPU": cfg.num_gpus_per_worker, **cfg.resources_per_worker}
    return {k: float(v) for k, v in request.items() if v > 0}


def placeable(nodes: list[dict[str, float]], request: dict[str, float]) -> int:
    """How many actors asking `request` the nodes (each a dict of total resources) can hold at once."""
    if not request:
        return 2**31
    return sum(min(int(node.get(k, 0.0) / v + 1e-9) for k, v in request.items()) for node in nodes)


def _alive_nodes() -> list[dict[str, float]]:
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def _started_here() -> bool:
    """True when this process started the cluster (--ray local): its nodes never change."""
    node = getattr(ray._private.worker, "_global_node", None)
    return bool(getattr(node, "head", False))


def check_resources(config: MetaTrainConfig, *, wait_s: float | None = None) -> None:
    """ClusterError unless the cluster's nodes can hold all `num_workers` actors at once.

    Ray would otherwise leave the actors pending forever with nothing in the log. A cluster this
    process joined may be growing (an autoscaler adding nodes), so it is polled for up to
    `distributed.resource_wait_s`; one this process started is checked once.
    """
    import time

    cfg = config.distributed
    request, wanted = worker_request(cfg), num_workers(config)
    wait_s = (0.0 if _started_here() else cfg.resource_wait_s) if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    while True:
        nodes = _alive_nodes()
        fits = placeable(nodes, request)
        if fits >= wanted:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(min(2.0, max(deadline - time.monotonic(), 0.0)))
    largest = max(nodes, key=lambda n: n.get("CPU", 0.0), default={})
    shown = {k: largest.get(k, 0.0) for k in sorted({"CPU", "GPU", *request})}
    waited = f" after waiting {wait_s:g} s" if wait_s > 0 else ""
    asked = f"num_cpus_per_worker={cfg.num_cpus_per_worker:g}, num_gpus_per_worker={cfg.num_gpus_per_worker:g}"
    if cfg.resources_per_worker:
        asked += f", resources_per_worker={dict(cfg.resources_per_worker)}"
    raise ClusterError(
        f"distributed: {wanted} worker(s) with {asked} do not fit the Ray cluster: room for "
        f"{fits} ({len(nodes)} node(s), the largest with {shown}){waited}; lower distributed."
        "num_workers or the per-worker resources, or add nodes."
    )


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
        # Before JAX starts in this process: the actor's own cores as host devices (0 = auto).
        cpus = max(1, int(config.distributed.num_cpus_per_worker))
        population_devices.request_cpu_devices(config.run.population_devices or cpus)
        compile_cache.enable(config.run.compilation_cache)
        parts = make_components(config, arch)
        self.worker = worker_factory(config, parts, index)
        self.worker.warm_up(theta_template(config, parts.arch), jax.random.PRNGKey(0))

    def compute(self, theta: Any, key: np.ndarray, version: int = 0) -> tuple[Any, dict[str, Any], int]:
        grad, metrics = self.worker.compute(theta, key, version)
        return jax.device_get(grad), jax.device_get(metrics), self.pid

    def get_states(self) -> Any:
        return jax.device_get(self.worker.get_states())

    def set_states(self, states: Any) -> None:
        self.worker.set_states(jax.device_put(states))

    def set_round(self, round: int) -> None:
        self.worker.set_round(round)

    def get_pid(self) -> int:
        return self.pid


def _retrying(method):
    """Idempotent calls (states, pid) wait out an actor's restart instead of failing."""
    return method.options(max_task_retries=-1)


class RayPool:
    """`distributed.num_workers` actors behind the `meta_train.distribution.dispatch.WorkerPool` interface."""

    def __init__(self, config: MetaTrainConfig, arch: Any = None, *, worker_factory: Callable = make_worker):
        if not ray.is_initialized():
            raise RuntimeError("RayPool needs a Ray cluster: call ray_workers.connect(...) or ray.init() first.")
        cfg = config.distributed
        self.num_workers = num_workers(config)
        check_resources(config)
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
        ref = method.remote(theta_handle, np.asarray(key), version)
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

    def set_round(self, round: int) -> None:
        ray.get([_retrying(a.set_round).remote(round) for a in self.actors])

    def pids(self) -> list[int]:
        return ray.get([_retrying(a.get_pid).remote() for a in self.actors])

    def close(self) -> None:
        self._pending.clear()
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
