"""Input features of the per-parameter network: per-tensor normalization and global features.

Per-tensor features (gradient, momenta, ...) vary over orders of magnitude between tensors and
over training; dividing each feature channel by its root-mean-square over the tensor makes the
network see O(1) inputs everywhere (the "second moment normalizer" of learned_optimization).
Global features (training step, loss) are the same for every parameter.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

# Below this mean square a feature channel is treated as zero: gradients with RMS under 1e-8
# still produce O(1) inputs, exactly-zero ones stay zero instead of dividing by zero.
NORMALIZE_EPS = 1e-16
# Gradients are clipped to this magnitude before squaring so that g^2 and its sums over up to
# ~1e12 elements stay finite in f32 (a 1e30 gradient would otherwise overflow to inf).
GRAD_CLIP = 1e12
# Added to second moments before rsqrt: smaller than any square of a representable gradient
# that matters, so it only guards exact zeros (including underflowed 1e-30 gradients).
RSQRT_EPS = 1e-30


class TensorFeatures(NamedTuple):
    """One tensor's features on its (R, C) view, grouped by how they vary over it.

    Per-row and per-column features (Adafactor's factored statistics) are kept as vectors: the
    fused network folds them into a per-row and a per-column bias instead of repeating their
    multiply-adds for every element. The network's input order is elementwise, rows, columns.
    """

    elementwise: list  # E arrays of shape (R, C)
    rows_KxR: jax.Array  # features constant along each row
    cols_KxC: jax.Array  # features constant along each column

    def broadcast(self) -> list[jax.Array]:
        """Every feature as an (R, C) array, in input order (for the stacked reference)."""
        shape = self.elementwise[0].shape
        return (
            list(self.elementwise)
            + [jnp.broadcast_to(r[:, None], shape) for r in self.rows_KxR]
            + [jnp.broadcast_to(c[None, :], shape) for c in self.cols_KxC]
        )


def inverse_rms(feat_NxF: jax.Array) -> jax.Array:
    """(F,) 1 / RMS of each feature channel over the N rows: the per-tensor normalizers."""
    return jax.lax.rsqrt(jnp.mean(jnp.square(feat_NxF), axis=0) + NORMALIZE_EPS)


def normalizer_strides(rows: int, cols: int, max_samples: int) -> tuple[int, int]:
    """Row and column strides of a grid of at most `max_samples` elements of an (R, C) tensor.

    (1, 1), i.e. every element, when the tensor is small enough or `max_samples` is 0. The
    longer side is thinned first, so a grid stays as square as the tensor allows.
    """
    sr, sc = 1, 1
    if max_samples <= 0:
        return sr, sc
    while -(-rows // sr) * -(-cols // sc) > max_samples:
        if -(-rows // sr) >= -(-cols // sc):
            sr += 1
        else:
            sc += 1
    return sr, sc


def time_features(step: jax.Array, time_scales: tuple[float, ...]) -> jax.Array:
    """tanh(step / tau) for each time scale: where in training we are, bounded in [0, 1)."""
    scales = jnp.asarray(time_scales, jnp.float32)
    return jnp.tanh(step.astype(jnp.float32) / scales)


def loss_features(loss: jax.Array, loss_ema_L: jax.Array) -> jax.Array:
    """Relative change of the loss against its running averages, squashed to (-1, 1).

    Relative, so a loss scaled by a constant gives the same features.
    """
    loss = loss.astype(jnp.float32)
    return jnp.tanh((loss - loss_ema_L) / (jnp.abs(loss_ema_L) + 1e-8))
