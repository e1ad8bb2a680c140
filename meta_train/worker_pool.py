"""A pool of workers behind one small interface, so the learner never knows where they run.

    handle = pool.put(theta)                       # once per theta version
    pool.submit(index, handle, version, key)       # start worker `index` on that version
    outcome = pool.wait()                          # the next finished call, any worker
    pool.get_states() / pool.set_states(states)    # for checkpoints (one entry per worker)

`LocalPool` runs the workers in this process (the default; a call runs when it is waited for,
in submission order, so async mode is deterministic in-process); `meta_train.ray_workers.RayPool`
runs each as a Ray actor. `meta_train.dispatch` drives either.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp

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


class WorkerPool(Protocol):
    num_workers: int

    def put(self, theta: Any) -> Any: ...

    def submit(self, index: int, theta_handle: Any, version: int, key: jax.Array) -> None: ...

    def wait(self) -> Outcome: ...

    def busy(self) -> set[int]: ...

    def discard_in_flight(self) -> None: ...

    def get_states(self) -> list[Any]: ...

    def set_states(self, states: list[Any]) -> None: ...

    def close(self) -> None: ...


class LocalPool:
    """In-process workers. Exceptions propagate (fail fast: nothing restarts a local worker)."""

    def __init__(self, workers: list[Any]):
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
        grad, metrics = self.workers[index].compute(theta, key)
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

    def close(self) -> None:
        self._queue.clear()
