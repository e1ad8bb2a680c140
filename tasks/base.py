"""The Task and TaskFamily interfaces: what optimizers are trained and evaluated on.

A `Task` is a pytree (a `flax.struct.PyTreeNode`): its array leaves are the device-resident data
and any per-task scalar hyperparameters (init scale, ...); its static fields (`pytree_node=False`)
are shapes, names and other Python values. Because it is a pytree:

* it is an *argument* of jitted functions, not a closed-over constant, so swapping in a new task
  with the same shapes does not recompile, and its data is not baked into the program;
* tasks with identical static fields stack (`jax.tree.map(jnp.stack, ...)`) into a population
  that `jax.vmap` maps over, each member with its own data order, init scale and seed.

Everything a meta-training unroll needs runs inside `jit` with no host round trip:
`init(key)`, `sample_batch(key, split=...)` and `loss(params, batch)`. The held-out loss of a
training run is `eval_loss(params)`: the mean loss over a fixed slice of the test split (the
same examples every call, so curves are comparable across steps and optimizers). `eval_loss` is
optional (not part of the runtime-checked Protocol); `held_out_loss` falls back to one test batch.

A task built on a `tasks.models` model (`task.model`) describes it for mu-P: the model's
`base_width`, `parametrization` and `param_roles(params)`, the role of each tensor in
`learned_opt.mup`'s terms (which matrix is the readout, an input layer, hidden), so optimizers
that scale by mu-P need not guess from shapes. `mup_roles` reads the roles (None: infer).
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any, Protocol, runtime_checkable

import jax

Params = Any  # a pytree of arrays
Batch = Any  # a pytree of arrays, e.g. {"x": f32[B, D], "y": i32[B]}


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """Static facts about a task, recorded with every result.

    name: unique, human-readable, stable across runs (used as a key in reports).
    num_params: number of scalar parameters of `init`.
    horizon: intended number of inner training steps.
    """

    name: str
    num_params: int
    horizon: int


def info_from_init(name: str, init_fn, horizon: int) -> TaskInfo:
    """TaskInfo with the parameter count read off `init_fn(key)`'s shapes (nothing is computed)."""
    shapes = jax.eval_shape(init_fn, jax.random.key(0))
    num_params = sum(math.prod(s.shape) for s in jax.tree.leaves(shapes))
    return TaskInfo(name=name, num_params=num_params, horizon=horizon)


@runtime_checkable
class Task(Protocol):
    """A differentiable training problem. Implementations are `flax.struct.PyTreeNode`s."""

    @property
    def info(self) -> TaskInfo: ...

    def init(self, key: jax.Array) -> Params:
        """Fresh parameters; deterministic in `key`."""

    def loss(self, params: Params, batch: Batch) -> jax.Array:
        """Scalar training objective on one batch (f32)."""

    def sample_batch(self, key: jax.Array, *, split: str = "train") -> Batch:
        """A batch drawn inside jit from device-resident data; split is "train" or "test"."""


def held_out_loss(task: Task, params: Params, key: jax.Array | None = None) -> jax.Array:
    """`task.eval_loss(params)` when the task has one, else the loss on one test batch (`key`)."""
    eval_loss = getattr(task, "eval_loss", None)
    if eval_loss is not None:
        return eval_loss(params)
    if key is None:
        raise ValueError(f"{type(task).__name__} has no eval_loss; pass a key so "
                         "held_out_loss can sample a test batch.")
    return task.loss(params, task.sample_batch(key, split="test"))


def mup_roles(task: Task, params: Params) -> Any:
    """`task.model.param_roles(params)` when the task's model names its mu-P roles, else None
    (an optimizer then infers them from shapes; see `learned_opt.mup`)."""
    param_roles = getattr(getattr(task, "model", None), "param_roles", None)
    return None if param_roles is None else param_roles(params)


class TaskFamily(abc.ABC):
    """A distribution over tasks. `sample` runs on the host (it chooses static shapes)."""

    @abc.abstractmethod
    def sample(self, key: jax.Array) -> Task:
        """One task; deterministic in `key`."""

    def sample_population(self, key: jax.Array, size: int) -> Task:
        """`size` tasks sharing one static configuration, stacked along a leading axis.

        The default draws one task for the static choices and varies only what is an array
        leaf (data order comes from the keys given to `sample_batch`); families override it to
        also vary per-member scalars such as the init scale.
        """
        from tasks.stacking import stack_tasks  # local: stacking imports this module

        task = self.sample(key)
        return stack_tasks([task] * size)
