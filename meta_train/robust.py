"""Keeping the meta-gradient finite: drop diverged or non-finite contributions, count them."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def per_pair_finite(tree: Any) -> jax.Array:
    """bool[pairs]: every leaf of pair i is finite."""
    checks = [jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(checks), axis=0)


def masked_mean(per_pair: Any, valid: jax.Array) -> tuple[Any, jax.Array]:
    """(mean over valid pairs, number of valid pairs); non-finite pairs count as invalid.

    Uses `where`, not multiplication, so a NaN in a dropped pair cannot leak (0 * NaN = NaN).
    With no valid pair the result is exactly zero.
    """
    valid = valid & per_pair_finite(per_pair)
    count = jnp.sum(valid)
    denom = jnp.maximum(count, 1).astype(jnp.float32)

    def reduce(x):
        mask = valid.reshape((-1,) + (1,) * (x.ndim - 1))
        return jnp.sum(jnp.where(mask, x, 0.0), axis=0) / denom

    return jax.tree.map(reduce, per_pair), count


def masked_scalar_mean(x: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean of x over valid entries (NaN-safe); 0 when none is valid."""
    valid = valid & jnp.isfinite(x)
    return jnp.sum(jnp.where(valid, x, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def tree_sample_normal(key: jax.Array, tree: Any, leading: tuple[int, ...], std: float) -> Any:
    """Gaussian noise shaped leading + leaf.shape for every leaf of `tree`."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    noise = [
        std * jax.random.normal(k, leading + jnp.shape(x), jnp.result_type(x))
        for k, x in zip(keys, leaves)
    ]
    return jax.tree.unflatten(treedef, noise)


def check_trainable(theta: Any, trainable) -> None:
    """A clear error unless every name in `trainable` is a top-level key of a dict theta."""
    if not trainable:
        return
    keys = sorted(theta) if isinstance(theta, dict) else None
    unknown = [k for k in trainable if keys is None or k not in keys]
    if unknown:
        raise ValueError(
            f"optimizer.trainable={list(trainable)}: {unknown} are not top-level parts of theta "
            f"(its parts: {keys}); name some of them, or leave it empty to train all of theta."
        )


def zero_frozen(tree: Any, trainable) -> Any:
    """`tree` (theta-shaped) with every top-level part not named in `trainable` set to zeros.

    Empty `trainable` means everything is trainable: the tree comes back unchanged.
    """
    if not trainable:
        return tree
    return {k: v if k in trainable else jax.tree.map(jnp.zeros_like, v) for k, v in tree.items()}
