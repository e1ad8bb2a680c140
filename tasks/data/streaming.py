"""Streaming for datasets too large for the device: the host prefetches one truncation at once.

A meta-training unroll runs K inner steps in one `lax.scan`; for a large dataset the host builds
all K batches as stacked `[K, B, ...]` arrays (optionally `[P, K, B, ...]` for a population of
P) on a background thread and `jax.device_put`s them, so the transfer of truncation t+1 overlaps
the compute of truncation t. Rows are visited in epochs of a seeded permutation (without
replacement within an epoch), so the stream is deterministic in `seed`.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator

import jax
import numpy as np


def _epoch_rows(num_examples: int, seed: int) -> Iterator[int]:
    rng = np.random.default_rng(seed)
    while True:
        yield from rng.permutation(num_examples)


class TruncationStream:
    """Iterator of dicts of `[P?, K, B, ...]` arrays; use as a context manager (or `close()`).

    arrays: dict of host arrays with a shared leading example axis (e.g. from `load_arrays`).
    """

    def __init__(self, arrays: dict[str, np.ndarray], *, batch_size: int, steps: int,
                 population: int | None = None, seed: int = 0, prefetch: int = 2,
                 device_put: bool = True):
        sizes = {k: len(v) for k, v in arrays.items()}
        if not arrays or len(set(sizes.values())) != 1:
            raise ValueError(f"arrays must be a non-empty dict with one leading size; got "
                             f"sizes {sizes}.")
        if min(batch_size, steps, prefetch, population or 1) < 1:
            raise ValueError(f"batch_size, steps, prefetch and population must be >= 1; got "
                             f"{batch_size}, {steps}, {prefetch}, {population}.")
        self._arrays = arrays
        self._shape = ((population,) if population else ()) + (steps, batch_size)
        self._rows = _epoch_rows(next(iter(sizes.values())), seed)
        self._device_put = device_put
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, daemon=True)
        self._thread.start()

    def _next_truncation(self):
        count = int(np.prod(self._shape))
        rows = np.fromiter(self._rows, dtype=np.int64, count=count).reshape(self._shape)
        batch = {k: v[rows] for k, v in self._arrays.items()}
        return jax.device_put(batch) if self._device_put else batch

    def _fill(self):
        try:
            while not self._stop.is_set():
                item = self._next_truncation()
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as error:  # surfaced to the consumer by __next__
            self._queue.put(error)

    def __iter__(self):
        return self

    def __next__(self):
        if self._stop.is_set():
            raise StopIteration
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise RuntimeError("TruncationStream producer failed") from item
        return item

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
