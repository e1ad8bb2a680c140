"""The fused form of MLPLOpt's per-parameter network: elementwise, no stacked feature tensor.

The reference (`MLPLOpt(impl="reference")`) stacks each tensor's F features into an (N, F)
array and multiplies it by the first-layer weights. On XLA:CPU that stack is the cost: it writes
and re-reads F floats per parameter, and dot kernels with inner size ~30 run far below peak.
Here the features stay a list of arrays and the MLP is written out as elementwise
multiply-adds, `h_j = relu(sum_f w_fj * x_f + b_j)`, so XLA fuses feature computation,
normalization, every layer and the output into one loop per tensor: each parameter's inputs are
read once and its update written once. The per-tensor normalizers come from one variadic
reduction per tensor (all F mean squares in a single pass).

Measured on the 2-core CPU (benchmarks/step_time.py; update of a 1.86M-parameter MLP, hidden
(4,)): reference 289 ms, fused 76 ms. Flattening all leaves into one vector first (concatenate,
then split the updates) measured slower on XLA:CPU (234 ms): the concatenation materializes
every feature. The unrolled form grows the program with hidden size squared, so it is meant
for small networks (see MLPLOpt's validation); large hidden sizes use the reference.

Numerically this is the reference computation with sums in a different order: the two agree to
float tolerance (tests/learned_opt/test_fused.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from learned_opt import features as feat_lib

# Largest number of first/hidden-layer multiply-adds per parameter (sum of in*out over layers)
# that the unrolled form accepts: XLA's compile time and memory grow fast with it. Measured:
# 39->8 (312) meta-trains fine; 39->16 (624) ran out of 24 GB compiling the quickstart's PES
# truncation; 39->32->32 (2,336) took over a minute to compile a single update.
MAX_UNROLLED_MACS = 384


@jax.custom_jvp
def mean_squares(feats: tuple[jax.Array, ...]) -> jax.Array:
    """(F,) vector of mean(f * f) over each of F same-shaped arrays, in one variadic reduction.

    Separate `jnp.mean` calls cost one pass each (and a recomputation of the fused feature
    graph each): normalization then cost 2-3x the whole MLP. The reduction keeps a unit axis so
    its F outputs concatenate into one vector in one op instead of F scalar kernels (which
    dominate on small tensors). A variadic `lax.reduce` has no derivative rule, hence the custom
    JVP (plain sums, linear and transposable, so truncated backprop through the optimizer works).
    """
    squares = tuple(jnp.reshape(f * f, (1, -1)) for f in feats)
    zeros = tuple(jnp.zeros((), f.dtype) for f in feats)
    sums = jax.lax.reduce(squares, zeros, lambda xs, ys: tuple(x + y for x, y in zip(xs, ys)), (1,))
    return jnp.concatenate(sums) / feats[0].size


@mean_squares.defjvp
def _mean_squares_jvp(primals, tangents):
    (feats,), (dfeats,) = primals, tangents
    return mean_squares(feats), 2.0 * jnp.stack([jnp.mean(f * df) for f, df in zip(feats, dfeats)])


def _dense(x_list: list[jax.Array], w_IxO: jax.Array, b_O: jax.Array) -> list[jax.Array]:
    """x @ w + b with x given as a list of I arrays: O sums of I elementwise products."""
    n_in, n_out = w_IxO.shape
    return [sum(x_list[i] * w_IxO[i, o] for i in range(n_in)) + b_O[o] for o in range(n_out)]


def network(theta, first_bias_H: jax.Array, feats: list[jax.Array], num_tensor_features: int):
    """(direction, log_magnitude) for every element of one tensor, from its unnormalized features."""
    # One (F,) vector op for all normalizers, not F scalar kernels (they dominate small tensors).
    inv_F = jax.lax.rsqrt(mean_squares(tuple(feats)) + feat_lib.NORMALIZE_EPS)
    x = [f * inv_F[k] for k, f in enumerate(feats)]
    layers = theta["mlp"]
    h = [jax.nn.relu(v) for v in _dense(x, layers[0]["w"][:num_tensor_features], first_bias_H)]
    for layer in layers[1:-1]:
        h = [jax.nn.relu(v) for v in _dense(h, layer["w"], layer["b"])]
    direction, log_mag = _dense(h, layers[-1]["w"], layers[-1]["b"])
    skip_F = theta["skip"]
    direction = direction + sum(x[k] * skip_F[k] for k in range(num_tensor_features))
    return direction, log_mag
