"""MLPLOpt's per-tensor step for `impl="native"`: the glue between MLPLOpt's configuration and
theta and the kernel's calls (learned_opt.native), one job apart from MLPLOpt's own XLA step
(`MLPLOpt._update_leaf`, the reference and fused forms it must agree with).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from learned_opt import accumulators as acc_lib
from learned_opt import features as feat_lib
from learned_opt import mup, native
from learned_opt import normalizers as norm_lib
from learned_opt.tree_util import matrix_shape


def update_leaf(arch, theta, first_bias_H, log_step, ctrl_glob, g, p, acc, role):
    """MLPLOpt's step of one tensor (`arch._update_leaf`'s result: update, accumulators and the
    features' mean squares, to float tolerance) with the
    per-element work in one native loop (learned_opt.native).

    Here only per-tensor, per-row and per-column quantities are computed: Adafactor's
    row/column statistics, the normalizers (from a native pass over the grid's rows), and
    the first layer with the normalizers and row/column features folded in.
    """
    shape = tuple(jnp.shape(p))
    rows, cols = matrix_shape(shape)
    a_decays = jnp.asarray(arch.adafactor_decays, jnp.float32)
    spec = native.KernelSpec(len(arch.momentum_decays), len(arch.adafactor_decays), arch.hidden_sizes)
    g2_row_R, g2_col_C = native.square_means(spec, g.reshape(rows, cols))
    row_AxR = acc_lib.ema(acc.row_AxR.astype(jnp.float32), g2_row_R[None], a_decays).astype(acc.row_AxR.dtype)
    col_AxC = acc_lib.ema(acc.col_AxC.astype(jnp.float32), g2_col_C[None], a_decays).astype(acc.col_AxC.dtype)
    # Elementwise accumulators as before the step, row/column ones after it.
    acc_rc = acc._replace(row_AxR=row_AxR, col_AxC=col_AxC)
    row_mean_Ax1 = jnp.mean(row_AxR.astype(jnp.float32), axis=1, keepdims=True)
    col_mean_Ax1 = jnp.mean(col_AxC.astype(jnp.float32), axis=1, keepdims=True)

    eps = feat_lib.RSQRT_EPS

    def statistics(p_RxC, g_RxC, acc_rc, row_stride, col_stride):
        """Over a grid of the tensor: mean second moment, mean squares of the features."""
        srow_AxR = jax.lax.rsqrt(acc_rc.row_AxR.astype(jnp.float32) + eps) * jnp.sqrt(row_mean_Ax1 + eps)
        scol_AxC = jax.lax.rsqrt(acc_rc.col_AxC.astype(jnp.float32) + eps)
        m_MxRxC, v_RxC = acc_rc.momentum_MxRxC, acc_rc.rms_RxC
        if col_stride > 1:  # rows longer than the grid: columns sliced here, rows by the kernel
            p_RxC, g_RxC, v_RxC = (x[:, ::col_stride] for x in (p_RxC, g_RxC, v_RxC))
            m_MxRxC, scol_AxC = m_MxRxC[..., ::col_stride], scol_AxC[:, ::col_stride]
        # The cap slot is a multiplier here: the kernel caps at RSQRT_CAP * rsqrt(mean v).
        scal = native.pack_scalars(arch.momentum_decays, arch.rms_decay, feat_lib.RSQRT_CAP, 0.0, jnp.float32(0.0))
        return native.grid_statistics(spec, p_RxC, g_RxC, m_MxRxC, v_RxC, srow_AxR, scol_AxC, scal, row_stride)

    sr, sc = norm_lib.normalizer_strides(rows, cols, arch.normalizer_samples)
    rms_mean, ms_E = norm_lib.grid_or_exact(
        statistics, (p.reshape(rows, cols), g.reshape(rows, cols), acc_rc), sr, sc, g2_row_means=g2_row_R, strided=True
    )
    rsqrt_row_AxR = jax.lax.rsqrt(row_AxR.astype(jnp.float32) + eps)
    rsqrt_col_AxC = jax.lax.rsqrt(col_AxC.astype(jnp.float32) + eps)
    rows_KxR = feat_lib.capped_rsqrt(rsqrt_row_AxR, row_mean_Ax1)
    cols_KxC = feat_lib.capped_rsqrt(rsqrt_col_AxC, col_mean_Ax1)
    inv_T = jnp.concatenate(
        [arch._elementwise_inverse_rms(ms_E), norm_lib.inverse_rms(rows_KxR.T), norm_lib.inverse_rms(cols_KxC.T)]
    )
    layers = theta["mlp"]
    n_e, n_a = len(ms_E), len(arch.adafactor_decays)
    w_TxO = jnp.concatenate([layers[0]["w"][: inv_T.shape[0]], theta["skip"][:, None]], axis=1) * inv_T[:, None]
    bias_O = jnp.concatenate([first_bias_H, jnp.zeros((1,), jnp.float32)])
    row_bias_OxR = w_TxO[n_e : n_e + n_a].T @ rows_KxR + bias_O[:, None]
    col_bias_OxC = w_TxO[n_e + n_a :].T @ cols_KxC
    scale = mup.update_scale(shape, role, arch.base_fan_in) if arch.mup else 1.0
    log_step = log_step + arch._tensor_log_step(theta, ctrl_glob, ms_E, shape)
    out_scale = jnp.exp(log_step) * (arch.step_mult * scale)
    v_cap = feat_lib.RSQRT_CAP * jax.lax.rsqrt(rms_mean + eps)
    upd_RxC, m_MxRxC, v_RxC = native.step(
        spec,
        p.reshape(rows, cols),
        g.reshape(rows, cols),
        acc.momentum_MxRxC,
        acc.rms_RxC,
        w_TxO[:n_e],
        row_bias_OxR,
        col_bias_OxC,
        rsqrt_row_AxR * jnp.sqrt(row_mean_Ax1 + eps),
        rsqrt_col_AxC,
        native.pack_rest(layers[1:]),
        native.pack_scalars(arch.momentum_decays, arch.rms_decay, v_cap, arch.exp_mult, out_scale),
    )
    new_acc = acc_lib.LeafAccumulators(m_MxRxC, v_RxC, row_AxR, col_AxC)
    return upd_RxC.reshape(shape), new_acc, ms_E
