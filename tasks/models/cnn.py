"""A small convolutional classifier in standard or mu-P parametrization (see `mup`).

`depth` 3x3 SAME convolutions of `width` channels (the first named `input`, stride 1; the rest
stride 2), global average pooling, then a mu-P `Readout`. Kernels are (H, W, in, out).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax

from tasks.models.activations import get_activation
from tasks.models.classifier import ClassifierConfig
from tasks.models.mup import Readout


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
class CNNConfig(ClassifierConfig):
    """A CNN classifier (fields: `ClassifierConfig`; `width` is channels, base_width 16)."""

    kind: ClassVar[str] = "cnn"
    base_width: int = 16

    def module(self) -> CNN:
        return CNN(self)
