"""Sync and async outer steps over a worker pool: the one loop body for in-process and Ray.

`Dispatcher.step(learner) -> (learner, metrics)` does exactly one outer update:

* sync: theta is put once, every worker computes on it, the finished results are averaged
  (in worker order, so a Ray run equals the in-process run of the same recipe) and applied.
* async: every idle worker is started on the current theta; results are applied one at a time
  as they arrive; a result more than `max_staleness` versions old is dropped.

Either way a worker that raised (FAILED) or died mid-call (LOST) contributes nothing: its
result is dropped, counted, logged with the worker id, and the worker is given new work (Ray
has restarted it by then). Counts go to the metrics as `dist/*` and into the learner's totals.
Timing: `perf/wait_s` is the time blocked on workers, `perf/learner_s` everything else the
driver did for the update (averaging, the outer step, putting theta, submitting calls).

The dispatcher sees its workers through one small interface, so it never knows where they run:

    handle = pool.put(theta)                       # once per theta version
    pool.submit(index, handle, version, key)       # start worker `index` on that version
    outcome = pool.wait()                          # the next finished call, any worker
    pool.get_states() / pool.set_states(states)    # for checkpoints (one entry per worker)
    pool.set_round(r)                              # task round r's pools (resume, before states)

`LocalPool` runs `LocalWorker`s in this process (the default; a call runs when it is waited for,
in submission order, so async mode is deterministic in-process);
`meta_train.distribution.ray_workers.RayPool` runs the same `LocalWorker` inside Ray actors.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from meta_train import learner as learner_lib
from meta_train import population_devices


# ---- workers and the pool interface ----------------------------------------------------------

OK, FAILED, LOST = "ok", "failed", "lost"


@dataclasses.dataclass
class Outcome:
    """One finished call. status: OK; FAILED (the worker raised; `error` holds its traceback);
    LOST (the worker's process died before answering; Ray restarts it)."""

    index: int
    version: int
    status: str = OK
    grad: Any = None
    metrics: dict[str, Any] | None = None
    error: str | None = None
    pid: int | None = None


class LocalWorker:
    """Holds one share of the population; `compute` runs one truncation for all of it.

    A worker owns unroll states and turns a theta into estimator output; nothing else. The whole
    truncation (K steps for every member and antithetic branch) is one jitted call; the
    unroll-state buffers are donated, so they are updated in place. A Ray actor wraps the same
    class, so the learner only ever sees `(meta_grad, metrics)` per worker.

    With `redraw_every` N > 0 the worker moves on to task round version // N when a call's
    theta version reaches it (never back: a stale async call runs in the current round):
    `pool_for_round(r)` gives the new task pool and the members start fresh (from `key`, with r
    folded in). The round follows from the version alone, so a restarted Ray actor lands in the
    right round at its next call.
    """

    def __init__(self, estimator: Any, pool: Any, theta: Any, key: jax.Array, *, redraw_every: int = 0,
                 pool_for_round: Callable[[int], Any] | None = None, mesh: Any = None):
        if redraw_every and pool_for_round is None:
            raise ValueError(f"LocalWorker(redraw_every={redraw_every}) needs pool_for_round.")
        self.estimator = estimator
        self.mesh = mesh  # population_devices.population_mesh: the pairs split over devices, or None
        self.round = 0
        self._theta, self._key = theta, key
        self._redraw_every, self._pool_for_round = redraw_every, pool_for_round
        self._start(pool, key)

    def _start(self, pool: Any, key: jax.Array) -> None:
        """`pool` and fresh unroll states; a new jit object, so the executables of an earlier
        round's shapes are released, not cached forever."""
        self._estimate = jax.jit(self.estimator.estimate, donate_argnums=(2,))
        states = jax.jit(self.estimator.init_states)(self._theta, pool, key)
        if self.mesh is None:
            self.pool, self.states = pool, states
        else:
            self.pool = population_devices.replicated(self.mesh, pool)
            self.states = population_devices.sharded(self.mesh, states)

    def compute(self, theta: Any, key: jax.Array, version: int = 0) -> tuple[Any, dict[str, jax.Array]]:
        if self._redraw_every:
            self.set_round(max(self.round, version // self._redraw_every))
        if self.mesh is None:
            grad, self.states, metrics = self._estimate(theta, self.pool, self.states, key)
            return grad, metrics
        # The learner's theta and key live on one device: copied to every device of the mesh.
        theta, key = population_devices.replicated(self.mesh, (theta, key))
        with jax.set_mesh(self.mesh):
            grad, self.states, metrics = self._estimate(theta, self.pool, self.states, key)
        # Back to the default device, where the learner's theta and other workers' results are.
        return jax.device_put((grad, metrics), jax.devices()[0])

    def set_round(self, round: int) -> None:
        """Task round `round`: its pool and fresh unroll states (nothing to do if already there)."""
        if round == self.round:
            return
        if self._pool_for_round is None:
            raise ValueError(f"set_round({round}): this worker has no pool_for_round (tasks.redraw_every = 0).")
        self._start(self._pool_for_round(round), jax.random.fold_in(self._key, round) if round else self._key)
        self.round = round
        LOG.info("task round %d: %s", round, self.task_name)

    @property
    def task_name(self) -> str:
        """The name of the task configuration this worker unrolls now (its pool's)."""
        return str(getattr(self.pool, "name", type(self.pool).__name__))

    def warm_up(self, theta: Any, key: jax.Array) -> None:
        """Compile the truncation by running it once on a copy of the states (left unchanged),
        so a new (or restarted) Ray actor is ready at full speed when its first call comes."""
        states = jax.tree.map(lambda x: x.copy(), self.states)
        self.compute(theta, key)
        jax.block_until_ready(self.states)
        self.states = states

    def get_states(self) -> Any:
        return self.states

    def set_states(self, states: Any) -> None:
        self.states = states if self.mesh is None else population_devices.sharded(self.mesh, states)


class WorkerPool(Protocol):
    num_workers: int

    def put(self, theta: Any) -> Any: ...

    def submit(self, index: int, theta_handle: Any, version: int, key: jax.Array) -> None: ...

    def wait(self) -> Outcome: ...

    def busy(self) -> set[int]: ...

    def discard_in_flight(self) -> None: ...

    def get_states(self) -> list[Any]: ...

    def set_states(self, states: list[Any]) -> None: ...

    def set_round(self, round: int) -> None: ...

    def close(self) -> None: ...


class LocalPool:
    """In-process workers. Exceptions propagate (fail fast: nothing restarts a local worker)."""

    def __init__(self, workers: list[LocalWorker]):
        self.workers = workers
        self.num_workers = len(workers)
        self._queue: collections.deque = collections.deque()

    def put(self, theta: Any) -> Any:
        # A snapshot: the learner donates its theta buffers to the next outer step, while an
        # async call queued on this version still has to read them.
        return jax.tree.map(jnp.copy, theta)

    def submit(self, index: int, theta_handle: Any, version: int, key: jax.Array) -> None:
        self._queue.append((index, theta_handle, version, key))

    def wait(self) -> Outcome:
        if not self._queue:
            raise RuntimeError("LocalPool.wait() with no submitted call; submit one first.")
        index, theta, version, key = self._queue.popleft()
        grad, metrics = self.workers[index].compute(theta, key, version)
        jax.block_until_ready(grad)  # so the driver's timing splits compute from learner work
        return Outcome(index, version, OK, grad, metrics)

    def busy(self) -> set[int]:
        return {item[0] for item in self._queue}

    def discard_in_flight(self) -> None:
        self._queue.clear()

    def get_states(self) -> list[Any]:
        return [w.get_states() for w in self.workers]

    def set_states(self, states: list[Any]) -> None:
        for worker, s in zip(self.workers, states):
            worker.set_states(s)

    def set_round(self, round: int) -> None:
        for worker in self.workers:
            worker.set_round(round)

    def close(self) -> None:
        self._queue.clear()


# ---- the dispatcher --------------------------------------------------------------------------

# Estimator metrics that are counts: summed over workers (everything else is averaged).
SUMMED = ("unroll/resets", "unroll/diverged", "grad/dropped", "unroll/inner_steps")
# Dropped-result counters, per outer step.
DROP_COUNTS = ("dist/stale_dropped", "dist/failed", "dist/lost")

LOG = logging.getLogger("meta_train.learner")


def worker_key(rng: jax.Array, version: int, index: int) -> jax.Array:
    """The key worker `index` uses on theta version `version` (in-process and Ray alike)."""
    return jax.random.fold_in(jax.random.fold_in(rng, version), index)


def merge_worker_metrics(per_worker: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for k in per_worker[0]:
        values = [m[k] for m in per_worker]
        out[k] = sum(values) if k in SUMMED else sum(values) / len(values)
    return out


def combine(outcomes: list[Outcome]) -> tuple[Any, dict[str, Any]]:
    """Average meta-gradients and merge metrics of successful results, in worker order."""
    ordered = sorted(outcomes, key=lambda o: (o.index, o.version))
    grad = learner_lib.mean_over_workers([o.grad for o in ordered])
    return grad, merge_worker_metrics([o.metrics for o in ordered])


class Dispatcher:
    """Owns the in-flight bookkeeping between outer steps (nothing here is checkpointed: on
    resume every worker simply starts on the restored theta)."""

    def __init__(
        self,
        pool: WorkerPool,
        outer_step: Callable,
        *,
        mode: str = "sync",
        max_staleness: int = 1,
        max_consecutive_failures: int = 3,
        log: logging.Logger = LOG,
    ):
        if mode not in ("sync", "async"):
            raise ValueError(f"mode={mode!r}; expected 'sync' or 'async'.")
        self.pool = pool
        self.outer_step = outer_step
        self.mode = mode
        self.max_staleness = max_staleness
        self.max_consecutive_failures = max_consecutive_failures
        self.log = log
        self._handle = None
        self._handle_version: int | None = None
        self._failures = [0] * pool.num_workers
        self._pids: dict[int, int] = {}

    # ---- shared pieces -------------------------------------------------------------------
    def _theta_handle(self, learner: learner_lib.LearnerState, version: int) -> Any:
        if self._handle_version != version:  # once per version, however many workers use it
            self._handle = self.pool.put(learner.theta)
            self._handle_version = version
        return self._handle

    def _submit(self, learner, index: int, version: int) -> None:
        self.pool.submit(index, self._theta_handle(learner, version), version,
                         worker_key(learner.rng, version, index))

    def _wait(self, timing: dict[str, float]) -> Outcome:
        start = time.perf_counter()
        out = self.pool.wait()
        timing["wait"] += time.perf_counter() - start
        return out

    def _triage(self, out: Outcome, version: int, counts: dict[str, float]) -> bool:
        """True when `out` may be applied; otherwise count, log, and return False."""
        if out.pid is not None:
            old = self._pids.get(out.index)
            if old is not None and old != out.pid:
                counts["dist/restarts"] += 1
                self.log.warning("worker %d restarted (pid %d -> %d); it rebuilt its unroll "
                                 "states from the recipe", out.index, old, out.pid)
            self._pids[out.index] = out.pid
        if out.status == OK:
            self._failures[out.index] = 0
            staleness = version - out.version
            if staleness > self.max_staleness:
                counts["dist/stale_dropped"] += 1
                self.log.debug("worker %d: result on version %d is %d versions stale; dropped",
                               out.index, out.version, staleness)
                return False
            return True
        self._failures[out.index] += 1
        if out.status == FAILED:
            counts["dist/failed"] += 1
            self.log.error("worker %d raised on theta version %d; its result is dropped:\n%s",
                           out.index, out.version, out.error)
        elif out.status == LOST:
            counts["dist/lost"] += 1
            self.log.warning("worker %d died during its call on theta version %d; its result is "
                             "dropped and Ray restarts it (%s)", out.index, out.version, out.error)
        if self._failures[out.index] >= self.max_consecutive_failures:
            raise RuntimeError(
                f"worker {out.index} failed {self._failures[out.index]} calls in a row "
                f"(last: {out.status}: {out.error}). Fix the cause (see learner.log), then "
                "continue from the last checkpoint with --resume."
            )
        return False

    def _apply(self, learner, good: list[Outcome], version: int, counts):
        grad, est_metrics = combine(good)
        est_metrics.update({k: np.float32(counts[k]) for k in DROP_COUNTS})
        learner, metrics = self.outer_step(learner, grad, est_metrics)
        metrics = dict(metrics)
        metrics["dist/restarts"] = counts["dist/restarts"]
        metrics["dist/results"] = float(len(good))
        metrics["dist/staleness"] = float(np.mean([version - o.version for o in good]))
        return learner, metrics

    # ---- one outer step --------------------------------------------------------------------
    def step(self, learner: learner_lib.LearnerState) -> tuple[learner_lib.LearnerState, dict[str, Any]]:
        start = time.perf_counter()
        timing = {"wait": 0.0}
        counts = {k: 0.0 for k in DROP_COUNTS + ("dist/restarts",)}
        if self.mode == "sync":
            learner, metrics = self._sync(learner, counts, timing)
        else:
            learner, metrics = self._async(learner, counts, timing)
        metrics["perf/wait_s"] = timing["wait"]
        metrics["perf/learner_s"] = time.perf_counter() - start - timing["wait"]
        return learner, metrics

    def _sync(self, learner, counts, timing):
        version = int(learner.step)
        while True:
            for i in range(self.pool.num_workers):
                self._submit(learner, i, version)
            outs = [self._wait(timing) for _ in range(self.pool.num_workers)]
            good = [o for o in outs if self._triage(o, version, counts)]
            if good:
                return self._apply(learner, good, version, counts)
            # Every worker failed this round: run the round again (the failure limit stops it).

    def _async(self, learner, counts, timing):
        version = int(learner.step)
        busy = self.pool.busy()
        for i in range(self.pool.num_workers):
            if i not in busy:
                self._submit(learner, i, version)
        while True:
            out = self._wait(timing)
            if self._triage(out, version, counts):
                break
            self._submit(learner, out.index, version)
        learner, metrics = self._apply(learner, [out], version, counts)
        self._submit(learner, out.index, version + 1)
        return learner, metrics

    def close(self) -> None:
        self.pool.discard_in_flight()
