"""Autoencoder tasks: reconstruct a dataset's inputs through a narrow code (mean squared error).

The same device-resident data, batches and stacking as `ClassificationTask` (labels are loaded
and ignored); only the loss differs: the mean over features of (reconstruction - x)^2, with x the
normalized input the network reads.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from tasks.classification import ClassificationTask, load_array_data
from tasks.data.catalog import get_spec


class AutoencoderTask(ClassificationTask):
    """`model` (an `AutoencoderConfig`) reconstructing the inputs of `dataset`."""

    def loss(self, params, batch) -> jax.Array:
        x = self._inputs(batch["x"])
        return jnp.mean((self.logits(params, batch["x"]) - x) ** 2)

    def accuracy(self, params, batch) -> jax.Array:
        raise TypeError("An autoencoder has no accuracy; use `loss` (mean squared error).")


def make_autoencoder_task(dataset: str, model, *, batch_size: int, horizon: int,
                          init_scale: float = 1.0, eval_size: int = 1000,
                          data_dir=None) -> AutoencoderTask:
    """Loads `dataset` (building local data on first use) and sets `model.output_dim` from it."""
    spec = get_spec(dataset)
    if spec.kind != "classification":
        raise ValueError(f"Dataset {dataset!r} is {spec.kind!r}; an autoencoder needs an input "
                         "dataset (e.g. 'mnist1d', 'digits').")
    if batch_size < 1 or horizon < 1:
        raise ValueError(f"batch_size and horizon must be >= 1, got {batch_size}, {horizon}.")
    data = load_array_data(dataset, data_dir=data_dir)
    input_shape = tuple(data.train["x"].shape[1:])
    size = math.prod(input_shape)
    if model.output_dim not in (0, size):
        raise ValueError(f"model.output_dim={model.output_dim} but {dataset!r} inputs have "
                         f"{size} features; leave it 0 to take it from the data.")
    return AutoencoderTask(
        data=data, init_scale=jnp.asarray(init_scale, jnp.float32),
        model=dataclasses.replace(model, output_dim=size), dataset=dataset,
        input_shape=input_shape, batch_size=batch_size, horizon=horizon, eval_size=eval_size,
        input_scale=spec.input_scale, input_offset=spec.input_offset)
