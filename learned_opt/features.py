"""Input features of the per-parameter network: per-tensor normalization and global features.

Per-tensor features (gradient, momenta, ...) vary over orders of magnitude between tensors and
over training; dividing each feature channel by its root-mean-square over the tensor makes the
network see O(1) inputs everywhere (the "second moment normalizer" of learned_optimization).
Global features (training step, loss) are the same for every parameter.
"""

from __future__ import annotations

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


def normalize_per_tensor(feat_NxF: jax.Array) -> jax.Array:
    """Each feature channel divided by its RMS over the tensor's N elements."""
    mean_sq_F = jnp.mean(jnp.square(feat_NxF), axis=0)
    return feat_NxF * jax.lax.rsqrt(mean_sq_F + NORMALIZE_EPS)


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
