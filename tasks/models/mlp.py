"""A multilayer perceptron classifier in standard or mu-P parametrization (see `mup`)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from tasks.models.activations import get_activation
from tasks.models.classifier import ClassifierConfig
from tasks.models.mup import Readout


def dense_stack(h_BxD: jax.Array, width: int, depth: int, act, first: str, prefix: str) -> jax.Array:
    """`depth` Dense(width) + activation layers named `first`, `{prefix}1`, ..., created in the
    calling module's scope (the MLP's layers, an autoencoder's encoder and decoder)."""
    for i in range(depth):
        h_BxD = act(nn.Dense(width, name=first if i == 0 else f"{prefix}{i}")(h_BxD))
    return h_BxD


class MLP(nn.Module):
    """x -> flatten -> `depth` Dense+activation layers of `width` -> Readout(num_classes).

    Layers are named `input`, `hidden_1`, ..., `readout` so `mup.param_roles` can read them.
    """

    config: "MLPConfig"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        act = get_activation(c.activation)
        h_BxD = dense_stack(jnp.reshape(x, (x.shape[0], -1)), c.width, c.depth, act, "input", "hidden_")
        return Readout(c.num_classes, c.parametrization, c.base_width, name="readout")(h_BxD)


@dataclasses.dataclass(frozen=True)
class MLPConfig(ClassifierConfig):
    """An MLP classifier (fields: `ClassifierConfig`; base_width 64)."""

    kind: ClassVar[str] = "mlp"

    def module(self) -> MLP:
        return MLP(self)
