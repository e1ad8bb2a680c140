"""A multilayer perceptron classifier in standard or mu-P parametrization (see `mup`)."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from tasks.models.activations import get_activation
from tasks.models.mup import Readout, check_parametrization, param_roles


class MLP(nn.Module):
    """x -> flatten -> `depth` Dense+activation layers of `width` -> Readout(num_classes).

    Layers are named `input`, `hidden_1`, ..., `readout` so `mup.param_roles` can read them.
    """

    config: "MLPConfig"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        act = get_activation(c.activation)
        h_BxD = jnp.reshape(x, (x.shape[0], -1))
        for i in range(c.depth):
            h_BxD = act(nn.Dense(c.width, name="input" if i == 0 else f"hidden_{i}")(h_BxD))
        return Readout(c.num_classes, c.parametrization, c.base_width, name="readout")(h_BxD)


@dataclasses.dataclass(frozen=True)
class MLPConfig:
    """Static description of an MLP; hashable, so it can be a static field of a Task."""

    width: int
    depth: int
    num_classes: int
    activation: str = "relu"
    parametrization: str = "mup"
    base_width: int = 64

    def __post_init__(self):
        if self.width < 1 or self.depth < 1:
            raise ValueError(f"MLP width and depth must be >= 1, got width={self.width}, "
                             f"depth={self.depth}.")
        check_parametrization(self.parametrization)
        get_activation(self.activation)

    @property
    def name(self) -> str:
        return f"mlp_w{self.width}_d{self.depth}_{self.activation}_{self.parametrization}"

    def module(self) -> MLP:
        return MLP(self)

    def param_roles(self, params):
        """The mu-P role of each tensor, by layer name (`mup.param_roles`)."""
        return param_roles(params)
