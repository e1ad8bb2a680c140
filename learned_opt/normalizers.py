"""Per-tensor feature normalizers: 1 / RMS of each feature over its tensor, cheaply.

An exact RMS needs every feature of every element before the network can run: a pass of its
own over the tensor, with the features stored or recomputed. On XLA:CPU that pass costs several
times the network itself (the update of a 1.86M-parameter MLP with the default 33 -> 4 -> 2:
26 ms exact, 5 ms from a grid). So a large tensor's normalizers are estimated on a strided grid
of its elements, with an exact fallback where the grid is not representative (`grid_or_exact`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from learned_opt import accumulators as acc_lib
from learned_opt.features import GRAD_CLIP, NORMALIZE_EPS

# The grid is trusted while its means (see `grid_or_exact`) are within this factor of the exact
# ones, i.e. its RMS estimates within about 2x. Measured while training a width-1024 MLP on
# MNIST-1D (300 steps), its 1024 x 1024 kernels fell back to exact normalizers in 1-3% of steps
# with 65536 samples and this tolerance; 10-22% with 16384 samples or tolerance 2; 35-61% with
# both.
GRID_TOLERANCE = 4.0


def normalizer_strides(rows: int, cols: int, max_samples: int) -> tuple[int, int]:
    """Row and column strides of a grid of at most `max_samples` elements of an (R, C) tensor.

    (1, 1), i.e. every element, when the tensor is small enough or `max_samples` is 0. Rows
    are thinned first and columns only as far as one row must be: a grid of whole rows reads
    contiguous memory, where a grid strided along both axes touches every cache line of the
    tensor (measured: the grid statistics of a 1024 x 1024 tensor took ~1 ms that way, most
    of the native step's time besides the kernel).
    """
    if max_samples <= 0 or rows * cols <= max_samples:
        return 1, 1
    sc = -(-cols // max_samples)
    n_cols = -(-cols // sc)
    sr = -(-rows // (max_samples // n_cols))
    while -(-rows // sr) * n_cols > max_samples:
        sr += 1
    return sr, sc


def inverse_rms(feat_NxF: jax.Array) -> jax.Array:
    """(F,) 1 / RMS of each feature channel over the N rows: the per-tensor normalizers."""
    return jax.lax.rsqrt(jnp.mean(jnp.square(feat_NxF), axis=0) + NORMALIZE_EPS)


def stacked_mean_squares(feats: list[jax.Array]) -> jax.Array:
    """(F,) mean(f * f) of each same-shaped feature, by stacking them (the reference form)."""
    return jnp.mean(jnp.square(jnp.stack([f.reshape(-1) for f in feats], axis=-1)), axis=0)


def _within(grid_mean, exact_mean):
    """A grid mean of a non-negative statistic within GRID_TOLERANCE of the exact one (or both 0)."""
    close = (grid_mean <= GRID_TOLERANCE * exact_mean) & (grid_mean * GRID_TOLERANCE >= exact_mean)
    return jnp.all(close | (exact_mean == 0.0))


def grid_or_exact(statistics, full_inputs, row_stride: int, col_stride: int, *, g2_row_means=None, strided=False):
    """`statistics(p, g, acc)` on the strided grid of the inputs, or on all of them where the
    grid is not representative. With strides (1, 1) the grid is the tensor: no choice to make.

    Trusting the grid is decided from exact statistics that cost no pass over the tensor: the
    mean square of g (its row means are computed for the accumulators anyway) and the means of
    Adafactor's row and column statistics, which remember every past gradient, against their
    means over the grid's rows and columns. A sparse gradient (an embedding's few active rows)
    or a few elements with a huge past gradient (which dominate the momenta's RMS) move those
    by more than GRID_TOLERANCE, and every element is used instead. The grid's inputs are
    sliced, not its features: slicing features would give every full-size feature a second
    user, and XLA would store them all; for the same reason the exact branch reads its inputs
    through an optimization barrier. Under vmap both branches run. `g2_row_means` (R,), the
    per-row mean of clip(g)^2 where the caller already has it, saves a pass over g.

    strided: `statistics(p, g, acc, row_stride, col_stride)` reads the grid from the full
    inputs itself (called with strides (1, 1) for every element), instead of being given it.
    """
    if (row_stride, col_stride) == (1, 1):
        return statistics(*full_inputs, 1, 1) if strided else statistics(*full_inputs)
    p_RxC, g_RxC, acc = full_inputs
    g_RxC = jnp.clip(g_RxC.astype(jnp.float32), -GRAD_CLIP, GRAD_CLIP)
    if g2_row_means is None:
        g2_row_means = jnp.mean(jnp.square(g_RxC), axis=1)
    if col_stride == 1:  # whole rows: the grid's mean square is its rows' mean
        grid_g2 = jnp.mean(g2_row_means[::row_stride])
    else:
        grid_g2 = jnp.mean(jnp.square(g_RxC[::row_stride, ::col_stride]))
    if strided:
        grid = statistics(*full_inputs, row_stride, col_stride)
    else:
        grid_acc = acc_lib.on_grid(acc, row_stride, col_stride)
        grid = statistics(p_RxC[::row_stride, ::col_stride], g_RxC[::row_stride, ::col_stride], grid_acc)
    row_AxR, col_AxC = acc.row_AxR.astype(jnp.float32), acc.col_AxC.astype(jnp.float32)
    trusted = (
        _within(grid_g2, jnp.mean(g2_row_means))
        & _within(jnp.mean(row_AxR[:, ::row_stride], axis=1), jnp.mean(row_AxR, axis=1))
        & _within(jnp.mean(col_AxC[:, ::col_stride], axis=1), jnp.mean(col_AxC, axis=1))
    )

    def exact(_):
        inputs = jax.lax.optimization_barrier(full_inputs)
        return statistics(*inputs, 1, 1) if strided else statistics(*inputs)

    return jax.lax.cond(trusted, lambda _: grid, exact, None)
