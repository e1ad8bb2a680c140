"""Stack tasks with identical static fields into one vmappable population.

The meta-trainer maps one unroll over many tasks with `jax.vmap`; that needs every task to have
the same tree structure and static fields (shapes, names, model config) and array leaves of the
same shapes. `stack_tasks` checks this up front and names the first difference, instead of the
opaque tree-structure mismatch `jax.tree.map` would raise.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp

from tasks.base import Task


def _static_fields(task) -> dict[str, object]:
    if not dataclasses.is_dataclass(task):
        return {}
    return {
        f.name: getattr(task, f.name)
        for f in dataclasses.fields(task)
        if not f.metadata.get("pytree_node", True)
    }


def _first_static_difference(a, b, path: str) -> str | None:
    """Walks nested dataclass tasks and returns 'path.field: a != b' for the first mismatch."""
    if type(a) is not type(b):
        return f"{path or 'task'} type: {type(a).__name__} != {type(b).__name__}"
    for name, value in _static_fields(a).items():
        other = getattr(b, name)
        if value != other:
            return f"{path + '.' if path else ''}{name}: {value!r} != {other!r}"
    if dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            if f.metadata.get("pytree_node", True):
                diff = _first_static_difference(getattr(a, f.name), getattr(b, f.name),
                                                f"{path + '.' if path else ''}{f.name}")
                if diff is not None:
                    return diff
    return None


def stack_tasks(tasks: Sequence[Task]) -> Task:
    """Stacks `tasks` leaf-wise along a new leading axis (size len(tasks)).

    Raises ValueError naming the static field (or array leaf shape) that differs; tasks that
    differ there must be run as separate populations (e.g. one per width).
    """
    tasks = list(tasks)
    if not tasks:
        raise ValueError("stack_tasks got an empty list; pass at least one task.")
    first = tasks[0]
    first_def = jax.tree.structure(first)
    for i, task in enumerate(tasks[1:], start=1):
        diff = _first_static_difference(first, task, "")
        if diff is None and jax.tree.structure(task) != first_def:
            diff = f"tree structure: {first_def} != {jax.tree.structure(task)}"
        if diff is not None:
            raise ValueError(
                f"Cannot stack task 0 with task {i}: static field {diff}. Tasks in one "
                "population must share every static field; sample them with "
                "TaskFamily.sample_population or group them by static configuration.")
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(first),
                                jax.tree.leaves(task)):
            if jnp.shape(a) != jnp.shape(b) or jnp.result_type(a) != jnp.result_type(b):
                raise ValueError(
                    f"Cannot stack task 0 with task {i}: array leaf "
                    f"{jax.tree_util.keystr(path)} has shape/dtype {jnp.shape(a)}/"
                    f"{jnp.result_type(a)} vs {jnp.shape(b)}/{jnp.result_type(b)}; "
                    "use the same dataset and batch configuration for a population.")
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *tasks)
