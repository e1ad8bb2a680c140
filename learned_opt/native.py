"""MLPLOpt's elementwise step as one native CPU loop per tensor (`MLPLOpt(impl="native")`):
the kernel's numerics and its XLA form.

XLA:CPU runs the fused step (learned_opt.fused) as two loops per tensor (it does no
multi-output fusion, so the accumulators are written by a second pass) at ~3.6 instructions
per network multiply-add (it re-broadcasts every weight per 8-wide vector). The kernel in
`native_kernel.cc` reads each parameter's inputs once and writes its update and accumulators
once, with 16-wide fused multiply-adds on broadcast weights.

Each entry point (`step`, `square_means`, `grid_statistics`) runs the kernel where
`learned_opt.native_build` could build it (an x86-64 host whose default backend is CPU, with a
C++ compiler) and the same computation as XLA (`kernel_reference`, ...) everywhere else: on GPU
and TPU hosts, on other CPUs, under differentiation (truncated backprop), and where the build
failed. LEARNED_OPT_NATIVE=0 turns the kernel off.

Everything per tensor, per row or per column (normalizers folded into the first layer,
Adafactor's factors, biases) is computed in JAX by MLPLOpt and passed in; the kernel does the
per-element work only.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from learned_opt import features as feat_lib
from learned_opt import fused, native_build
from learned_opt.native_build import KernelSpec, available

__all__ = ["KernelSpec", "available", "grid_statistics", "kernel_reference", "pack_rest", "pack_scalars",
           "square_means", "step"]


def pack_rest(layers: list[dict]) -> jax.Array:
    """The layers after the first (hidden ones, then the output) as one f32 vector, each
    layer's (in, out) weights row-major followed by its bias: the kernel's `rest` layout."""
    return jnp.concatenate([jnp.concatenate([l["w"].reshape(-1), l["b"]]) for l in layers])


def unpack_rest(spec: KernelSpec, rest: jax.Array) -> list[dict]:
    """`pack_rest`'s layers back from its vector."""
    layers, offset, width = [], 0, spec.hidden_sizes[0]
    for n_out in (*spec.hidden_sizes[1:], 2):
        w = rest[offset : offset + width * n_out].reshape(width, n_out)
        layers.append({"w": w, "b": rest[offset + width * n_out : offset + width * n_out + n_out]})
        offset, width = offset + width * n_out + n_out, n_out
    return layers


def pack_scalars(momentum_decays, rms_decay: float, v_cap, exp_mult: float, out_scale) -> jax.Array:
    """The kernel's scalar input: decays d, 1 - d (as XLA computes them), the rms decay and its
    complement, the cap of the bare rsqrt(v) feature, exp_mult and the output scale."""
    d = jnp.asarray(momentum_decays, jnp.float32)
    consts = jnp.asarray([rms_decay, 1 - rms_decay], jnp.float32)
    return jnp.concatenate(
        [d, 1.0 - d, consts, jnp.stack([v_cap, jnp.float32(exp_mult), out_scale]).astype(jnp.float32)]
    )


def _reference_features(spec: KernelSpec, p, g, m, v, srow, scol, scal):
    """(E features, new m, new v) of every element, as the kernel computes them."""
    nm, na = spec.n_momenta, spec.n_adafactor
    acc_dtype = m.dtype
    g = jnp.clip(g.astype(jnp.float32), -feat_lib.GRAD_CLIP, feat_lib.GRAD_CLIP)
    m_new = [scal[k] * m[k].astype(jnp.float32) + scal[nm + k] * g for k in range(nm)]
    v_new = scal[2 * nm] * v.astype(jnp.float32) + scal[2 * nm + 1] * (g * g)
    m_st = [mk.astype(acc_dtype).astype(jnp.float32) for mk in m_new]
    rv = jax.lax.rsqrt(v_new.astype(v.dtype).astype(jnp.float32) + feat_lib.RSQRT_EPS)
    fac = [srow[a][:, None] * scol[a][None, :] for a in range(na)]
    feats = (
        [p.astype(jnp.float32), g, jnp.clip(g, -0.1, 0.1)]
        + m_st
        + [jnp.minimum(rv, scal[2 * nm + 2])]
        + [feat_lib.clip_ratio(mk * rv) for mk in m_st]
        + [feat_lib.clip_ratio(g * f) for f in fac]
        + [feat_lib.clip_ratio(mk * fac[-1]) for mk in m_st]
    )
    return feats, jnp.stack(m_new).astype(acc_dtype), v_new.astype(v.dtype)


def kernel_reference(spec: KernelSpec, p, g, m, v, w0, rowb, colb, srow, scol, rest, scal):
    """The kernel's computation in XLA, element for element: (update, new m, new v).

    p, g: (R, C); m: (NM, R, C) and v: (R, C, float32) accumulators; w0: (E, O); rowb: (O, R);
    colb: (O, C); srow: (NA, R); scol: (NA, C); rest, scal: see pack_rest / pack_scalars.
    """
    nm = spec.n_momenta
    feats, m_new, v_new = _reference_features(spec, p, g, m, v, srow, scol, scal)
    direction, log_mag = fused.elementwise_mlp(feats, w0, rowb, colb, unpack_rest(spec, rest))
    update = direction * jnp.exp(log_mag * scal[2 * nm + 3]) * scal[2 * nm + 4]
    return update.astype(p.dtype), m_new, v_new


def _ffi_step(spec: KernelSpec, *args):
    target = native_build.target(spec)
    if target is None:
        return kernel_reference(spec, *args)
    p, _, m, v = args[:4]
    rows, cols = p.shape
    out_types = (
        jax.ShapeDtypeStruct(p.shape, p.dtype),
        jax.ShapeDtypeStruct(m.shape, m.dtype),
        jax.ShapeDtypeStruct(v.shape, v.dtype),
    )
    call = jax.ffi.ffi_call(target + "_step", out_types, vmap_method="broadcast_all", input_output_aliases={2: 1, 3: 2})
    return tuple(call(*args, rows=np.int64(rows), cols=np.int64(cols)))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def step(spec: KernelSpec, p, g, m, v, w0, rowb, colb, srow, scol, rest, scal):
    """(update, new m, new v) of one tensor: the native kernel on CPU, `kernel_reference`
    elsewhere. Differentiable: the derivative is kernel_reference's."""
    args = (p, g, m, v, w0, rowb, colb, srow, scol, rest, scal)
    return jax.lax.platform_dependent(
        *args,
        cpu=lambda *a: _ffi_step(spec, *a),
        default=lambda *a: kernel_reference(spec, *a),
    )


@step.defjvp
def _step_jvp(spec, primals, tangents):
    return jax.jvp(functools.partial(kernel_reference, spec), primals, tangents)


def square_means_reference(g):
    """(mean over columns, mean over rows) of clip(g)^2 for an (R, C) gradient, in f32."""
    g2 = jnp.square(jnp.clip(g.astype(jnp.float32), -feat_lib.GRAD_CLIP, feat_lib.GRAD_CLIP))
    return jnp.mean(g2, axis=1), jnp.mean(g2, axis=0)


def _ffi_square_means(spec: KernelSpec, g):
    target = native_build.target(spec)
    if target is None:
        return square_means_reference(g)
    rows, cols = g.shape
    out_types = (jax.ShapeDtypeStruct((rows,), jnp.float32), jax.ShapeDtypeStruct((cols,), jnp.float32))
    call = jax.ffi.ffi_call(target + "_square_means", out_types, vmap_method="broadcast_all")
    return tuple(call(g, rows=np.int64(rows), cols=np.int64(cols)))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def square_means(spec: KernelSpec, g):
    """Adafactor's per-row and per-column mean of g^2 in one pass over g (XLA takes two)."""
    return jax.lax.platform_dependent(
        g, cpu=lambda g: _ffi_square_means(spec, g), default=square_means_reference
    )


@square_means.defjvp
def _square_means_jvp(spec, primals, tangents):
    return jax.jvp(square_means_reference, primals, tangents)


def grid_statistics_reference(spec: KernelSpec, p, g, m, v, srow, scol, scal, row_stride: int = 1):
    """(mean v after the step, (E,) mean square of every feature) over the tensor's rows
    0, row_stride, ...: the normalizers' statistics, from the inputs before the step.

    scal is pack_scalars' layout, with the cap slot a multiplier: the bare rsqrt(v) feature is
    capped at scal[cap] * rsqrt(mean v + eps), the mean over the same rows.
    """
    p, g, m, v, srow = p[::row_stride], g[::row_stride], m[:, ::row_stride], v[::row_stride], srow[:, ::row_stride]
    nm = spec.n_momenta
    g32 = jnp.clip(g.astype(jnp.float32), -feat_lib.GRAD_CLIP, feat_lib.GRAD_CLIP)
    v_new = scal[2 * nm] * v.astype(jnp.float32) + scal[2 * nm + 1] * (g32 * g32)
    rms_mean = jnp.mean(v_new.astype(v.dtype).astype(jnp.float32))
    scal = scal.at[2 * nm + 2].multiply(jax.lax.rsqrt(rms_mean + feat_lib.RSQRT_EPS))
    feats, _, _ = _reference_features(spec, p, g, m, v, srow, scol, scal)
    return rms_mean, jnp.stack([jnp.mean(jnp.square(f)) for f in feats])


def _ffi_grid_statistics(spec: KernelSpec, row_stride: int, p, g, m, v, srow, scol, scal):
    target = native_build.target(spec)
    if target is None:
        return grid_statistics_reference(spec, p, g, m, v, srow, scol, scal, row_stride)
    rows, cols = p.shape
    call = jax.ffi.ffi_call(
        target + "_grid_statistics",
        jax.ShapeDtypeStruct((1 + spec.num_elementwise,), jnp.float32),
        vmap_method="broadcast_all",
    )
    out = call(p, g, m, v, srow, scol, scal, rows=np.int64(rows), cols=np.int64(cols), row_stride=np.int64(row_stride))
    return out[..., 0], out[..., 1:]


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 8))
def grid_statistics(spec: KernelSpec, p, g, m, v, srow, scol, scal, row_stride: int = 1):
    """`grid_statistics_reference` in one native call on CPU that reads the grid's rows in
    place (two passes over them; XLA would slice them out, and runs its 16-output reduction
    ~10x slower). Differentiable: the derivative is the reference's."""
    args = (p, g, m, v, srow, scol, scal)
    return jax.lax.platform_dependent(
        *args,
        cpu=lambda *a: _ffi_grid_statistics(spec, row_stride, *a),
        default=lambda *a: grid_statistics_reference(spec, *a, row_stride),
    )


@grid_statistics.defjvp
def _grid_statistics_jvp(spec, row_stride, primals, tangents):
    return jax.jvp(lambda *a: grid_statistics_reference(spec, *a, row_stride), primals, tangents)
