"""A Task from plain functions: `init_fn(key, example_batch)` and `loss_fn(params, batch)`.

The base of every adapter (`tasks.adapters`). The user's data (a dict of [N, ...] arrays per
split) lives on the device; batches are sampled inside jit like any other task. The functions
are static fields: two tasks stack only when they hold the *same* function objects (equal by
`==`), which is true for tasks made by one adapter call's `with_data`/`replace`, or by adapters
given the same model object.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tasks.base import TaskInfo, info_from_init
from tasks.data.device_data import ArrayData


class FunctionTask(struct.PyTreeNode):
    """Wraps `init_fn(key, example_batch) -> params` and `loss_fn(params, batch, state)`.

    `state` is an optional pytree of non-trained arrays (e.g. flax nnx non-Param variables)
    passed to every loss call unchanged.
    """

    data: ArrayData
    state: Any
    init_fn: Callable = struct.field(pytree_node=False)
    loss_fn: Callable = struct.field(pytree_node=False)
    batch_size: int = struct.field(pytree_node=False)
    horizon: int = struct.field(pytree_node=False)
    name: str = struct.field(pytree_node=False)
    eval_size: int = struct.field(pytree_node=False, default=1000)

    @property
    def info(self) -> TaskInfo:
        return info_from_init(self.name, self.init, self.horizon)

    def init(self, key: jax.Array):
        return self.init_fn(key, self.data.head(self.batch_size, split="train"))

    def loss(self, params, batch) -> jax.Array:
        return jnp.asarray(self.loss_fn(params, batch, self.state), jnp.float32)

    def sample_batch(self, key: jax.Array, *, split: str = "train"):
        return self.data.sample(key, self.batch_size, split=split)

    def eval_loss(self, params) -> jax.Array:
        return self.loss(params, self.data.head(self.eval_size, split="test"))


def _check_split(data, split: str) -> dict:
    if not isinstance(data, dict) or not data:
        raise TypeError(f"{split} data must be a non-empty dict of arrays with a leading example "
                        f"axis, e.g. {{'x': x_NxD, 'y': y_N}}; got {type(data).__name__}.")
    arrays = {k: np.asarray(v) for k, v in data.items()}
    sizes = {k: (a.shape[0] if a.ndim else None) for k, a in arrays.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise ValueError(f"{split} arrays must share one leading example axis; got leading "
                         f"sizes {sizes}.")
    return arrays


def make_array_data(train: dict, test: dict) -> ArrayData:
    """Checks user data (dicts of equal-length arrays with the same keys) and puts it on device."""
    train, test = _check_split(train, "train"), _check_split(test, "test")
    if train.keys() != test.keys():
        raise ValueError(f"train and test must have the same keys; got {sorted(train)} and "
                         f"{sorted(test)}.")
    return ArrayData(train={k: jnp.asarray(v) for k, v in train.items()},
                     test={k: jnp.asarray(v) for k, v in test.items()})


@dataclasses.dataclass(frozen=True)
class _IgnoreBatch:
    init_fn: Callable

    def __call__(self, key, example_batch):
        return self.init_fn(key)


@dataclasses.dataclass(frozen=True)
class _IgnoreState:
    loss_fn: Callable

    def __call__(self, params, batch, state):
        return self.loss_fn(params, batch)


def from_loss_fn(init_fn: Callable[[jax.Array], Any], loss_fn: Callable[[Any, Any], jax.Array],
                 *, train: dict, test: dict, batch_size: int, horizon: int, name: str,
                 eval_size: int = 1000) -> FunctionTask:
    """A Task from `init_fn(key) -> params` and `loss_fn(params, batch) -> scalar`.

    `train`/`test`: dicts of arrays with a leading example axis; a batch is the same dict with
    `batch_size` rows.
    """
    if not callable(init_fn) or not callable(loss_fn):
        raise TypeError("init_fn and loss_fn must be callables: init_fn(key) -> params, "
                        "loss_fn(params, batch) -> scalar.")
    return FunctionTask(
        data=make_array_data(train, test), state=None, init_fn=_IgnoreBatch(init_fn),
        loss_fn=_IgnoreState(loss_fn), batch_size=batch_size, horizon=horizon, name=name,
        eval_size=eval_size)
