"""A small convolutional classifier in standard or mu-P parametrization (see `mup`).

`depth` 3x3 SAME convolutions of `width` channels (the first named `input`, stride 1; the rest
stride 2), global average pooling, then a mu-P `Readout`. Kernels are (H, W, in, out).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax

from tasks.models.activations import get_activation
from tasks.models.mup import Readout, check_parametrization, param_roles


class CNN(nn.Module):
    config: "CNNConfig"

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
        c = self.config
        act = get_activation(c.activation)
        h = x_BxHxWxC
        for i in range(c.depth):
            h = nn.Conv(c.width, (3, 3), strides=1 if i == 0 else 2, padding="SAME",
                        name="input" if i == 0 else f"conv_{i}")(h)
            h = act(h)
        h_BxD = h.mean(axis=(1, 2))
        return Readout(c.num_classes, c.parametrization, c.base_width, name="readout")(h_BxD)


@dataclasses.dataclass(frozen=True)
class CNNConfig:
    """Static description of a CNN; hashable, so it can be a static field of a Task."""

    width: int
    depth: int
    num_classes: int
    activation: str = "relu"
    parametrization: str = "mup"
    base_width: int = 16

    def __post_init__(self):
        if self.width < 1 or self.depth < 1:
            raise ValueError(f"CNN width and depth must be >= 1, got width={self.width}, "
                             f"depth={self.depth}.")
        check_parametrization(self.parametrization)
        get_activation(self.activation)

    @property
    def name(self) -> str:
        return f"cnn_w{self.width}_d{self.depth}_{self.activation}_{self.parametrization}"

    def module(self) -> CNN:
        return CNN(self)

    def param_roles(self, params):
        """The mu-P role of each tensor, by layer name (`mup.param_roles`)."""
        return param_roles(params)
