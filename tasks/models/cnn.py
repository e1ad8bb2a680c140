"""A small convolutional classifier in standard or mu-P parametrization (see `mup`).

`depth` 3x3 SAME convolutions of `width` channels (the first named `input`, stride 1; the rest
stride 2), global average pooling, then a mu-P `Readout`. Kernels are (H, W, in, out).

The convolutions are `PatchConv`: the same parameters and result as `flax.linen.Conv`, computed
as image patches times the kernel matrix. Meta-training vmaps a task over members with their own
kernels; a vmapped `lax.conv` becomes a grouped convolution, which XLA:CPU runs ~20x below its
matmul speed, while patches (one ordinary convolution with a fixed kernel) times per-member
kernels is a batched matmul.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from tasks.models.activations import get_activation
from tasks.models.classifier import ClassifierConfig
from tasks.models.mup import Readout


class PatchConv(nn.Module):
    """`nn.Conv(features, kernel_size, strides, padding="SAME")` (same "kernel" (H, W, in, out)
    and "bias" parameters, same initializers, same output) as patches @ kernel."""

    features: int
    kernel_size: tuple[int, int]
    strides: int = 1

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        c = x_BxHxWxC.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (kh, kw, c, self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        # (B, H', W', C * kh * kw), channel-major: feature c * kh * kw + i * kw + j.
        patches = jax.lax.conv_general_dilated_patches(
            x_BxHxWxC, (kh, kw), (self.strides, self.strides), "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        kernel_PxF = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(c * kh * kw, self.features)
        return patches @ kernel_PxF + bias


class CNN(nn.Module):
    config: "CNNConfig"

    @nn.compact
    def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
        c = self.config
        act = get_activation(c.activation)
        h = x_BxHxWxC
        for i in range(c.depth):
            h = PatchConv(c.width, (3, 3), strides=1 if i == 0 else 2,
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
