"""Small named pytree helpers used across learned_opt."""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np


def path_str(path: tuple[Any, ...]) -> str:
    """'layers/0/w' for a pytree key path; the key format of checkpoints and error messages."""
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(k.name)
        elif isinstance(k, jax.tree_util.FlattenedIndexKey):
            parts.append(str(k.key))
        else:
            parts.append(str(k))
    return "/".join(parts)


def flatten_with_paths(tree: Any) -> dict[str, Any]:
    """{path_str: leaf} in flattening order."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {path_str(p): leaf for p, leaf in leaves}


def num_params(tree: Any) -> int:
    """Total number of scalars in a pytree of arrays (or ShapeDtypeStructs)."""
    return int(sum(math.prod(np.shape(x)) for x in jax.tree.leaves(tree)))


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """The (rows, cols) view of a tensor used for factored statistics and fan-in.

    Kernels follow the flax/haiku convention: the last axis is the output, everything before it
    is fan-in, so a dense kernel (in, out) stays (in, out) and a conv kernel (H, W, in, out)
    becomes (H*W*in, out). Vectors and scalars become (n, 1): their "row" statistic is the full
    per-element second moment, so factoring them loses nothing.
    """
    if len(shape) >= 2:
        return math.prod(shape[:-1]), shape[-1]
    return max(math.prod(shape), 1), 1
