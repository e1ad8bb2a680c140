"""mu-P (maximal update parametrization) of the models in `tasks.models`: their side of it.

Following "Tensor Programs V" (Yang et al. 2022), in the form of its Table 8 / the `mup`
package, with width multiplier m = fan_in / base_width:

* Every weight is initialized N(0, 1/fan_in) (LeCun normal, flax convention: kernels are
  (in, out), conv kernels (H, W, in, out) with fan_in = H*W*in); biases are zero; embeddings are
  N(0, 1) (their one-hot fan_in does not grow with width). This is the same in both
  parametrizations, so the *init-time* activations are O(1) in both.
* The readout (last layer) output is multiplied by base_width / fan_in in mu-P (1 in standard):
  logits start near zero at large width and their updates stay O(1).
* Attention logits are scaled by sqrt(base_head_dim) / head_dim in mu-P (1/sqrt(head_dim) in
  standard).
* The optimizer's side (hidden matrices' updates x base_width / fan_in, the rest unscaled) is
  `learned_opt.mup`'s rule. The models only say which tensor is which: `param_roles` names each
  tensor's role from the module names (`input...`, `embed`, `readout`), in `learned_opt.mup`'s
  vocabulary; every model config exposes it as `param_roles` (read by `tasks.base.mup_roles`).

At width == base_width, mu-P and standard parametrization are the same model.
"""

from __future__ import annotations

import math
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from learned_opt.mup import infer_role

Parametrization = Literal["standard", "mup"]
PARAMETRIZATIONS = ("standard", "mup")

# Module-name prefixes that give a tensor its role (see `param_roles`).
INPUT_PREFIXES = ("input", "embed", "pos_embed")
OUTPUT_PREFIXES = ("readout",)


def check_parametrization(parametrization: str) -> None:
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"parametrization must be one of {PARAMETRIZATIONS}, got "
                         f"{parametrization!r}.")


def readout_multiplier(parametrization: str, fan_in: int, base_width: int) -> float:
    """Output multiplier of the last layer: base_width / fan_in in mu-P, 1 in standard."""
    check_parametrization(parametrization)
    return base_width / fan_in if parametrization == "mup" else 1.0


def attention_scale(parametrization: str, head_dim: int, base_head_dim: int) -> float:
    """Attention-logit scale: 1/sqrt(d) standard; sqrt(d_base)/d mu-P (equal at d == d_base)."""
    check_parametrization(parametrization)
    if parametrization == "mup":
        return math.sqrt(base_head_dim) / head_dim
    return 1.0 / math.sqrt(head_dim)


class Readout(nn.Module):
    """Dense (in, out) with the mu-P output multiplier; LeCun-normal init in both modes."""

    features: int
    parametrization: str
    base_width: int

    @nn.compact
    def __call__(self, h_BxD: jax.Array) -> jax.Array:
        mult = readout_multiplier(self.parametrization, h_BxD.shape[-1], self.base_width)
        return nn.Dense(self.features, name="dense")(h_BxD) * mult


def _role(path, leaf) -> str:
    names = [str(getattr(k, "key", getattr(k, "name", ""))) for k in path]
    if jnp.ndim(leaf) >= 2:
        if any(n.startswith(OUTPUT_PREFIXES) for n in names):
            return "output"
        if any(n.startswith(INPUT_PREFIXES) for n in names):
            return "input"
    return infer_role(jnp.shape(leaf))  # "vector" for biases and norms, else "hidden"


def param_roles(params):
    """A tree like `params` of "input" | "hidden" | "output" | "vector" (by module name), the
    roles of `learned_opt.mup`."""
    return jax.tree_util.tree_map_with_path(_role, params)
