"""Per-tensor running statistics of the gradient, kept on the (rows, cols) matrix view.

Each statistic is an exponential moving average at several decay rates, stacked on a leading
axis so one fused op updates all of them (`decays_D` broadcast against `acc_DxRxC`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class LeafAccumulators(NamedTuple):
    """Running statistics of one parameter tensor, on its (R, C) view."""

    momentum_MxRxC: jax.Array  # EMA of g at each momentum decay
    rms_RxC: jax.Array  # EMA of g^2 at the single rms decay
    row_AxR: jax.Array  # Adafactor: EMA of mean_C(g^2) at each adafactor decay
    col_AxC: jax.Array  # Adafactor: EMA of mean_R(g^2)


def as_leaf_accumulators(acc) -> LeafAccumulators:
    """`acc` as a LeafAccumulators, read by field name (from any container with those attributes)."""
    return LeafAccumulators(*(getattr(acc, name) for name in LeafAccumulators._fields))


def init_leaf(rows: int, cols: int, n_momentum: int, n_adafactor: int, dtype) -> LeafAccumulators:
    return LeafAccumulators(
        momentum_MxRxC=jnp.zeros((n_momentum, rows, cols), dtype),
        rms_RxC=jnp.zeros((rows, cols), dtype),
        row_AxR=jnp.zeros((n_adafactor, rows), dtype),
        col_AxC=jnp.zeros((n_adafactor, cols), dtype),
    )


def ema(acc: jax.Array, value: jax.Array, decays: jax.Array) -> jax.Array:
    """decay * acc + (1 - decay) * value, with `decays` broadcast over acc's leading axis."""
    d = decays.reshape((-1,) + (1,) * (acc.ndim - 1))
    return d * acc + (1.0 - d) * value


def update_leaf(
    acc: LeafAccumulators,
    g_RxC: jax.Array,
    momentum_decays: jax.Array,
    rms_decay: float,
    adafactor_decays: jax.Array,
) -> LeafAccumulators:
    """All statistics after seeing gradient g (f32 math, stored back in the accumulator dtype)."""
    dtype = acc.rms_RxC.dtype
    g2 = jnp.square(g_RxC)
    return LeafAccumulators(
        momentum_MxRxC=ema(acc.momentum_MxRxC.astype(jnp.float32), g_RxC[None], momentum_decays).astype(dtype),
        rms_RxC=(rms_decay * acc.rms_RxC.astype(jnp.float32) + (1 - rms_decay) * g2).astype(dtype),
        row_AxR=ema(acc.row_AxR.astype(jnp.float32), jnp.mean(g2, axis=1)[None], adafactor_decays).astype(dtype),
        col_AxC=ema(acc.col_AxC.astype(jnp.float32), jnp.mean(g2, axis=0)[None], adafactor_decays).astype(dtype),
    )


def on_grid(acc: LeafAccumulators, row_stride: int, col_stride: int) -> LeafAccumulators:
    """The statistics of the elements on the strided grid [::row_stride, ::col_stride]."""
    return LeafAccumulators(
        momentum_MxRxC=acc.momentum_MxRxC[:, ::row_stride, ::col_stride],
        rms_RxC=acc.rms_RxC[::row_stride, ::col_stride],
        row_AxR=acc.row_AxR[:, ::row_stride],
        col_AxC=acc.col_AxC[:, ::col_stride],
    )
