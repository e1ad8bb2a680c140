"""Adapters: turn a user's haiku, flax linen or flax nnx model plus its loss and data into a Task.

Each returns a `FunctionTask` (see `tasks.function_task`): data on the device, batches sampled
inside jit, `init(key)` re-initializing the user's model from a key. For plain functions over a
pytree use `tasks.function_task.from_loss_fn`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

from tasks.function_task import FunctionTask, from_loss_fn, make_array_data

__all__ = ["from_haiku", "from_linen", "from_loss_fn", "from_nnx"]


@dataclasses.dataclass(frozen=True)
class _HaikuInit:
    transformed: Any

    def __call__(self, key, example_batch):
        return self.transformed.init(key, example_batch)


@dataclasses.dataclass(frozen=True)
class _HaikuLoss:
    transformed: Any

    def __call__(self, params, batch, state):
        return self.transformed.apply(params, None, batch)


def from_haiku(transformed, *, train: dict, test: dict, batch_size: int, horizon: int,
               name: str, eval_size: int = 1000) -> FunctionTask:
    """`transformed = hk.transform(f)` where `f(batch)` returns the scalar loss.

    `apply` is called with rng=None, so `f` must be deterministic (no dropout); stateful
    transforms (`hk.transform_with_state`) are not supported.
    """
    import haiku as hk

    if not isinstance(transformed, hk.Transformed):
        raise TypeError(f"from_haiku needs hk.transform(f) with f(batch) -> loss; got "
                        f"{type(transformed).__name__}. For batch norm state use a plain "
                        "loss function with from_loss_fn.")
    return FunctionTask(
        data=make_array_data(train, test), state=None, init_fn=_HaikuInit(transformed),
        loss_fn=_HaikuLoss(transformed), batch_size=batch_size, horizon=horizon, name=name,
        eval_size=eval_size)


@dataclasses.dataclass(frozen=True)
class _LinenInit:
    module: Any
    input_key: str

    def __call__(self, key, example_batch):
        return self.module.init(key, example_batch[self.input_key])["params"]


@dataclasses.dataclass(frozen=True)
class _LinenLoss:
    module: Any
    input_key: str
    loss_fn: Callable

    def __call__(self, params, batch, state):
        outputs = self.module.apply({"params": params}, batch[self.input_key])
        return self.loss_fn(outputs, batch)


def from_linen(module, loss_fn: Callable[[Any, dict], jax.Array], *, train: dict, test: dict,
               batch_size: int, horizon: int, name: str, input_key: str = "x",
               eval_size: int = 1000) -> FunctionTask:
    """A flax linen `module` applied to `batch[input_key]`; `loss_fn(outputs, batch)` -> scalar.

    Only the "params" collection is trained; modules needing other collections (batch stats)
    are not supported.
    """
    import flax.linen as nn

    if not isinstance(module, nn.Module):
        raise TypeError(f"from_linen needs a flax.linen.Module, got {type(module).__name__}.")
    if input_key not in train:
        raise ValueError(f"input_key {input_key!r} not in train data keys {sorted(train)}; "
                         "pass input_key= naming the model input.")
    return FunctionTask(
        data=make_array_data(train, test), state=None, init_fn=_LinenInit(module, input_key),
        loss_fn=_LinenLoss(module, input_key, loss_fn), batch_size=batch_size, horizon=horizon,
        name=name, eval_size=eval_size)


@dataclasses.dataclass(frozen=True)
class _NnxInit:
    model_fn: Callable

    def __call__(self, key, example_batch):
        from flax import nnx

        _, params, _ = nnx.split(self.model_fn(nnx.Rngs(key)), nnx.Param, ...)
        return params


@dataclasses.dataclass(frozen=True)
class _NnxLoss:
    graphdef: Any
    loss_fn: Callable

    def __call__(self, params, batch, state):
        from flax import nnx

        return self.loss_fn(nnx.merge(self.graphdef, params, state), batch)


def from_nnx(model_fn: Callable, loss_fn: Callable[[Any, dict], jax.Array], *, train: dict,
             test: dict, batch_size: int, horizon: int, name: str,
             eval_size: int = 1000) -> FunctionTask:
    """A flax nnx model built by `model_fn(rngs: nnx.Rngs)`; `loss_fn(model, batch)` -> scalar.

    Trained parameters are the `nnx.Param` variables; any other variables are taken from one
    construction with `nnx.Rngs(0)` and held fixed in `task.state`.
    """
    from flax import nnx

    model = model_fn(nnx.Rngs(0))
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model_fn must return an nnx.Module, got {type(model).__name__}.")
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    return FunctionTask(
        data=make_array_data(train, test), state=rest, init_fn=_NnxInit(model_fn),
        loss_fn=_NnxLoss(graphdef, loss_fn), batch_size=batch_size, horizon=horizon, name=name,
        eval_size=eval_size)
