"""The task pool: tasks sampled on the host once, stacked into one pytree that jit indexes.

Members draw their next task from the pool inside jit, so resets cost no host round trip and
no recompile. Sampling is deterministic in the key, so a resumed run rebuilds the same pool.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def stack(tasks: list[Any]) -> Any:
    """Stack tasks with identical static fields; names the first mismatch otherwise."""
    ref = jax.tree.structure(tasks[0])
    for i, t in enumerate(tasks[1:], start=1):
        if jax.tree.structure(t) != ref:
            raise ValueError(
                f"task {i} ({type(t).__name__}) has static fields or structure "
                f"{jax.tree.structure(t)} but task 0 has {ref}; a pool needs tasks with equal "
                "static fields (same model and data shapes). Use a family that samples one shape "
                "per pool, or build several pools."
            )
        for j, (a, b) in enumerate(zip(jax.tree.leaves(tasks[0]), jax.tree.leaves(t))):
            if jnp.shape(a) != jnp.shape(b):
                raise ValueError(
                    f"task {i} leaf {j} has shape {jnp.shape(b)} but task 0 has {jnp.shape(a)}; "
                    "pool tasks must have equal array shapes."
                )
    return jax.tree.map(lambda *xs: jnp.stack(xs), *tasks)


def make_pool(family: Any, key: jax.Array, size: int) -> Any:
    """`size` tasks from `family`, stacked (leading axis = size).

    Families whose static choices vary (model width, dataset, ...) provide
    `sample_population(key, size)`: one static configuration with per-task array leaves (init
    scale, ...), which is what a pool needs. Different workers get different keys, hence
    different configurations, so the whole population still covers the family.
    """
    if size < 1:
        raise ValueError(f"pool size={size}; expected >= 1.")
    if hasattr(family, "sample_population"):
        return family.sample_population(key, size)
    keys = jax.random.split(key, size)
    return stack([family.sample(k) for k in keys])
