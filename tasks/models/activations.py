"""Activation functions by name: a plain dict that families sample from and tests iterate."""

from __future__ import annotations

import jax

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "tanh": jax.numpy.tanh,
    "silu": jax.nn.silu,
}


def get_activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"Unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}.")
    return ACTIVATIONS[name]
