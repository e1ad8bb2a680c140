"""The fused form of MLPLOpt's per-parameter network: elementwise, no stacked feature tensor.

The reference (`MLPLOpt(impl="reference")`) stacks each tensor's F features into an (N, F)
array and multiplies it by the first-layer weights. On XLA:CPU that stack is the cost: it writes
and re-reads F floats per parameter, and dot kernels with inner size ~30 run far below peak.
Here the features stay a list of arrays and the MLP is written out as elementwise
multiply-adds, `h_j = relu(sum_f w_fj * x_f + b_j)`, so XLA fuses features, every layer and the
output into one loop per tensor: each parameter's inputs are read once and its update written
once. Three things keep that loop lean:
- the per-tensor normalizers come from a separate small grid (MLPLOpt.normalizer_samples), so
  no full-size feature has a second user that would make XLA store it;
- they are folded into the first layer's weights (no per-feature multiply);
- per-row and per-column features (Adafactor's row/column statistics) enter as a per-row and a
  per-column bias computed once, not as multiply-adds repeated for every element.

The unrolled form grows the program with hidden size squared, so it is meant for small
networks (see MLPLOpt's validation); large hidden sizes use the reference. Measured speeds and
the dead ends (one flat vector, segment sums, a materialized matmul) are in
docs/design_notes.md.

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
def mean_squares(feats: list[jax.Array] | tuple[jax.Array, ...]) -> jax.Array:
    """(F,) vector of mean(f * f) over each of F same-shaped arrays, in one variadic reduction.

    Separate `jnp.mean` calls cost one pass each (and a recomputation of the fused feature
    graph each). The reduction keeps a unit axis so its F outputs concatenate into one vector
    in one op instead of F scalar kernels (which dominate on small tensors). A variadic
    `lax.reduce` has no derivative rule, hence the custom JVP (plain sums, linear and
    transposable, so truncated backprop through the optimizer works).
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


def network(theta, first_bias_H: jax.Array, feats: feat_lib.TensorFeatures, inv_T: jax.Array):
    """(direction, log_magnitude) for every element of one tensor.

    feats: the tensor's unnormalized features; inv_T: their normalizers, in input order. The
    normalizers are folded into the first layer's weights, and the per-row / per-column
    features into a per-row / per-column bias, so the loop over elements does one multiply-add
    per elementwise feature and hidden unit and nothing else.
    """
    n_e, n_r = len(feats.elementwise), feats.rows_KxR.shape[0]
    layers = theta["mlp"]
    # First layer and the linear skip as one (T, H + 1) matrix acting on normalized features.
    w_TxO = jnp.concatenate([layers[0]["w"][: inv_T.shape[0]], theta["skip"][:, None]], axis=1) * inv_T[:, None]
    bias_O = jnp.concatenate([first_bias_H, jnp.zeros((1,), first_bias_H.dtype)])
    row_bias_OxR = w_TxO[n_e : n_e + n_r].T @ feats.rows_KxR + bias_O[:, None]
    col_bias_OxC = w_TxO[n_e + n_r :].T @ feats.cols_KxC
    return elementwise_mlp(feats.elementwise, w_TxO[:n_e], row_bias_OxR, col_bias_OxC, layers[1:])


def elementwise_mlp(feats_E, w_ExO, row_bias_OxR, col_bias_OxC, layers) -> tuple[jax.Array, jax.Array]:
    """(direction, log_magnitude) of every element from its E (R, C) features: the per-element
    network in XLA, written once for the fused step and the native kernel's XLA form.

    w_ExO: the first layer's weights on the elementwise features (normalizers folded in) with
    the linear skip as its last column; row_bias_OxR / col_bias_OxC: everything else of the
    first layer, per row and per column; layers: the later layers ({"w": (I, O), "b": (O,)}),
    the last giving (direction, log magnitude). The skip's output is added to the direction.

    Networks past MAX_UNROLLED_MACS (the native kernel's wide ones, e.g. muLO's 39 -> 32 -> 32,
    in its XLA form on GPU and TPU and under differentiation) run as stacked matmuls instead:
    unrolled, they would take minutes and gigabytes to compile.
    """
    macs = w_ExO.size + sum(layer["w"].size for layer in layers)
    if macs > MAX_UNROLLED_MACS:
        return _stacked_mlp(feats_E, w_ExO, row_bias_OxR, col_bias_OxC, layers)
    pre = [
        sum(f * w_ExO[e, o] for e, f in enumerate(feats_E)) + row_bias_OxR[o][:, None] + col_bias_OxC[o][None, :]
        for o in range(w_ExO.shape[1])
    ]
    *pre_hidden, skip = pre
    h = [jax.nn.relu(v) for v in pre_hidden]
    for layer in layers[:-1]:
        h = [jax.nn.relu(v) for v in _dense(h, layer["w"], layer["b"])]
    direction, log_mag = _dense(h, layers[-1]["w"], layers[-1]["b"])
    return direction + skip, log_mag


def _stacked_mlp(feats_E, w_ExO, row_bias_OxR, col_bias_OxC, layers) -> tuple[jax.Array, jax.Array]:
    """`elementwise_mlp` with the features stacked and every layer one matmul."""
    x_ExRxC = jnp.stack([jnp.asarray(f, jnp.float32) for f in feats_E])
    pre_OxRxC = (
        jnp.einsum("erc,eo->orc", x_ExRxC, w_ExO) + row_bias_OxR[:, :, None] + col_bias_OxC[:, None, :]
    )
    h_HxRxC, skip = jax.nn.relu(pre_OxRxC[:-1]), pre_OxRxC[-1]
    for layer in layers[:-1]:
        h_HxRxC = jax.nn.relu(jnp.einsum("irc,io->orc", h_HxRxC, layer["w"]) + layer["b"][:, None, None])
    out_2xRxC = jnp.einsum("irc,io->orc", h_HxRxC, layers[-1]["w"]) + layers[-1]["b"][:, None, None]
    return out_2xRxC[0] + skip, out_2xRxC[1]
