"""Small datasets held on the device; batches are gathered inside jit (no host round trip).

`ArrayData` is a pytree of two dicts of arrays (train/test), each leaf with a leading example
axis. Batches are drawn i.i.d. with replacement (`jax.random.randint` rows): cheap under
`vmap`/`scan`, and independent across population members given independent keys.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

SPLITS = ("train", "test")


class ArrayData(struct.PyTreeNode):
    """Device-resident examples: `train` and `test` map a feature name to a [N, ...] array."""

    train: dict[str, jax.Array]
    test: dict[str, jax.Array]

    def split(self, split: str) -> dict[str, jax.Array]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
        return self.train if split == "train" else self.test

    def num_examples(self, split: str) -> int:
        return jax.tree.leaves(self.split(split))[0].shape[0]

    def sample(self, key: jax.Array, batch_size: int, *, split: str = "train"):
        """`batch_size` rows drawn uniformly with replacement from `split`."""
        arrays = self.split(split)
        rows_B = jax.random.randint(key, (batch_size,), 0, self.num_examples(split))
        return jax.tree.map(lambda a: jnp.take(a, rows_B, axis=0), arrays)

    def head(self, n: int, *, split: str = "test"):
        """The first `n` rows of `split` (a fixed evaluation slice)."""
        n = min(n, self.num_examples(split))
        return jax.tree.map(lambda a: a[:n], self.split(split))


_DEVICE_COPIES: dict[int, tuple[np.ndarray, jax.Array]] = {}


def to_device(array: np.ndarray) -> jax.Array:
    """`jnp.asarray` that reuses one device buffer for the same (read-only, cached) host array.

    Tasks sampled on the same dataset then share device memory until they are stacked.
    """
    if array.flags.writeable:
        return jnp.asarray(array)
    hit = _DEVICE_COPIES.get(id(array))
    if hit is None or hit[0] is not array:
        hit = _DEVICE_COPIES[id(array)] = (array, jnp.asarray(array))  # keeps `array` alive
    return hit[1]
