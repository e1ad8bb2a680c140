"""Per-tensor running statistics of the gradient, kept on the (rows, cols) matrix view.

Each statistic is an exponential moving average at several decay rates, stacked on a leading
axis so one fused op updates all of them (`decays_D` broadcast against `acc_DxRxC`).

The momenta may be stored in bfloat16; the second moments (the elementwise one and Adafactor's
row/column factors) are always float32. Their decays are slow (0.999): in bfloat16, whose
relative spacing is 2^-7, decay * v rounds back to v, so v can only grow, stays at the largest
squared gradients seen, and the normalized steps shrink with the gradients instead of staying
Adam-sized. Late in training that stalls the optimizer (measured in docs/pretrained.md: 2.8x
the final loss of the same theta with float32 second moments on a 4000-step run).
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
    """Zero statistics; `dtype` is the momenta's storage (second moments are float32)."""
    return LeafAccumulators(
        momentum_MxRxC=jnp.zeros((n_momentum, rows, cols), dtype),
        rms_RxC=jnp.zeros((rows, cols), jnp.float32),
        row_AxR=jnp.zeros((n_adafactor, rows), jnp.float32),
        col_AxC=jnp.zeros((n_adafactor, cols), jnp.float32),
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
    """All statistics after seeing gradient g (f32 math, each stored back in its own dtype)."""
    g2 = jnp.square(g_RxC)
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
    return LeafAccumulators(
        momentum_MxRxC=ema(f32(acc.momentum_MxRxC), g_RxC[None], momentum_decays).astype(acc.momentum_MxRxC.dtype),
        rms_RxC=(rms_decay * f32(acc.rms_RxC) + (1 - rms_decay) * g2).astype(acc.rms_RxC.dtype),
        row_AxR=ema(f32(acc.row_AxR), jnp.mean(g2, axis=1)[None], adafactor_decays).astype(acc.row_AxR.dtype),
        col_AxC=ema(f32(acc.col_AxC), jnp.mean(g2, axis=0)[None], adafactor_decays).astype(acc.col_AxC.dtype),
    )


def on_grid(acc: LeafAccumulators, row_stride: int, col_stride: int) -> LeafAccumulators:
    """The statistics of the elements on the strided grid [::row_stride, ::col_stride]."""
    return LeafAccumulators(
        momentum_MxRxC=acc.momentum_MxRxC[:, ::row_stride, ::col_stride],
        rms_RxC=acc.rms_RxC[::row_stride, ::col_stride],
        row_AxR=acc.row_AxR[:, ::row_stride],
        col_AxC=acc.col_AxC[:, ::col_stride],
    )
