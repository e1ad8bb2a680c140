"""Supervised classification tasks (MLP or CNN on an image/vector dataset) as pytrees.

Array leaves: the device-resident dataset and the per-task init scale; static fields: the model
config, dataset name, batch size, horizon. Tasks with the same static fields stack
(`tasks.stacking.stack_tasks`) and vmap.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from tasks.base import TaskInfo, info_from_init
from tasks.data.catalog import get_spec
from tasks.data.device_data import ArrayData, to_device
from tasks.data.loading import load_arrays


def scale_kernels(params, scale: jax.Array):
    """Multiplies every matrix/conv kernel/embedding (ndim >= 2) by `scale`; vectors unchanged."""
    return jax.tree.map(lambda p: p * scale.astype(p.dtype) if p.ndim >= 2 else p, params)


class ClassificationTask(struct.PyTreeNode):
    """Softmax cross-entropy of `model` on a device-resident dataset."""

    data: ArrayData
    init_scale: jax.Array  # f32[]: multiplies the model's (mu-P or standard) initial kernels
    model: Any = struct.field(pytree_node=False)  # MLPConfig, CNNConfig, ...: has .module()
    dataset: str = struct.field(pytree_node=False)
    input_shape: tuple[int, ...] = struct.field(pytree_node=False)
    batch_size: int = struct.field(pytree_node=False)
    horizon: int = struct.field(pytree_node=False)
    eval_size: int = struct.field(pytree_node=False, default=1000)
    input_scale: float = struct.field(pytree_node=False, default=1.0)
    input_offset: float = struct.field(pytree_node=False, default=0.0)

    @property
    def name(self) -> str:
        return f"{self.model.name}_{self.dataset}_bs{self.batch_size}"

    @property
    def info(self) -> TaskInfo:
        return info_from_init(self.name, self._init_unscaled, self.horizon)

    def _init_unscaled(self, key: jax.Array):
        x_1xD = jnp.zeros((1, *self.input_shape), jnp.float32)
        return self.model.module().init(key, x_1xD)["params"]

    def init(self, key: jax.Array):
        return scale_kernels(self._init_unscaled(key), self.init_scale)

    def _inputs(self, x: jax.Array) -> jax.Array:
        return x.astype(jnp.float32) * self.input_scale + self.input_offset

    def logits(self, params, x: jax.Array) -> jax.Array:
        return self.model.module().apply({"params": params}, self._inputs(x))

    def loss(self, params, batch) -> jax.Array:
        logits_BxC = self.logits(params, batch["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits_BxC, batch["y"]).mean()

    def accuracy(self, params, batch) -> jax.Array:
        return (self.logits(params, batch["x"]).argmax(-1) == batch["y"]).mean()

    def sample_batch(self, key: jax.Array, *, split: str = "train"):
        return self.data.sample(key, self.batch_size, split=split)

    def eval_batch(self):
        """The fixed held-out slice: the first `eval_size` test examples."""
        return self.data.head(self.eval_size, split="test")

    def eval_loss(self, params) -> jax.Array:
        return self.loss(params, self.eval_batch())


def load_array_data(dataset: str, *, data_dir=None, max_examples: int | None = None) -> ArrayData:
    """Both splits of `dataset` on the device, as {"x", "y"} dicts (dtype as stored)."""
    splits = {s: load_arrays(dataset, s, data_dir=data_dir, max_examples=max_examples)
              for s in ("train", "test")}
    return ArrayData(**{s: {k: to_device(v) for k, v in a.items()} for s, a in splits.items()})


def make_classification_task(dataset: str, model, *, batch_size: int, horizon: int,
                             init_scale: float = 1.0, eval_size: int = 1000, data_dir=None,
                             max_examples: int | None = None) -> ClassificationTask:
    """Loads (building local data on first use) and wraps `dataset` with `model`."""
    spec = get_spec(dataset)
    if spec.kind != "classification":
        raise ValueError(f"Dataset {dataset!r} is {spec.kind!r}; a classification task needs a "
                         "classification dataset (e.g. 'mnist1d', 'digits').")
    if getattr(model, "num_classes", spec.num_classes) != spec.num_classes:
        raise ValueError(f"model.num_classes={model.num_classes} but {dataset!r} has "
                         f"{spec.num_classes} classes; build the model with "
                         f"num_classes={spec.num_classes}.")
    if batch_size < 1 or horizon < 1:
        raise ValueError(f"batch_size and horizon must be >= 1, got {batch_size}, {horizon}.")
    data = load_array_data(dataset, data_dir=data_dir, max_examples=max_examples)
    return ClassificationTask(
        data=data, init_scale=jnp.asarray(init_scale, jnp.float32), model=model,
        dataset=dataset, input_shape=tuple(data.train["x"].shape[1:]), batch_size=batch_size,
        horizon=horizon, eval_size=eval_size, input_scale=spec.input_scale,
        input_offset=spec.input_offset)
