"""An MLP autoencoder (encoder, a narrow code, decoder) in standard or mu-P parametrization.

Layer names carry the mu-P roles (`tasks.models.mup.param_roles`): the encoder's first layer
reads the data (`input`), the decoder's first reads the fixed-size code (`input_decoder`: its
fan-in does not grow with width either), the code layer and the other width x width layers are
hidden, and the reconstruction is the mu-P `readout`.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from tasks.models.activations import get_activation
from tasks.models.mlp import dense_stack
from tasks.models.mup import Readout, check_parametrization, param_roles


class Autoencoder(nn.Module):
    """x -> `depth` Dense(width) -> Dense(code_dim) -> `depth` Dense(width) -> Readout(x's size)."""

    config: "AutoencoderConfig"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        act = get_activation(c.activation)
        h_BxD = dense_stack(jnp.reshape(x, (x.shape[0], -1)), c.width, c.depth, act, "input", "hidden_enc_")
        h_BxD = nn.Dense(c.code_dim, name="hidden_code")(h_BxD)  # linear bottleneck
        h_BxD = dense_stack(h_BxD, c.width, c.depth, act, "input_decoder", "hidden_dec_")
        out_BxD = Readout(c.output_dim, c.parametrization, c.base_width, name="readout")(h_BxD)
        return out_BxD.reshape(x.shape)


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
    """Static description of the autoencoder; `output_dim` is the flattened input size (set by
    `tasks.autoencoder.make_autoencoder_task` from the data when left at 0)."""

    width: int
    depth: int
    code_dim: int = 8
    output_dim: int = 0
    activation: str = "relu"
    parametrization: str = "mup"
    base_width: int = 64

    def __post_init__(self):
        if min(self.width, self.depth, self.code_dim) < 1 or self.output_dim < 0:
            raise ValueError(f"Autoencoder width, depth and code_dim must be >= 1 and output_dim "
                             f">= 0, got {self}.")
        check_parametrization(self.parametrization)
        get_activation(self.activation)

    @property
    def name(self) -> str:
        return f"ae_w{self.width}_d{self.depth}_c{self.code_dim}_{self.activation}_{self.parametrization}"

    def module(self) -> Autoencoder:
        if self.output_dim < 1:
            raise ValueError("AutoencoderConfig.output_dim is 0: build the task with "
                             "tasks.autoencoder.make_autoencoder_task, which sets it from the data.")
        return Autoencoder(self)

    def param_roles(self, params):
        """The mu-P role of each tensor, by layer name (`mup.param_roles`)."""
        return param_roles(params)
