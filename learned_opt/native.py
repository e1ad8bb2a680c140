"""MLPLOpt's elementwise step as one native CPU loop per tensor (`MLPLOpt(impl="native")`).

XLA:CPU runs the fused step (learned_opt.fused) as two loops per tensor (it does no
multi-output fusion, so the accumulators are written by a second pass) at ~3.6 instructions
per network multiply-add (it re-broadcasts every weight per 8-wide vector). The kernel in
`native_kernel.cc` reads each parameter's inputs once and writes its update and accumulators
once, with 16-wide fused multiply-adds on broadcast weights.

The kernel is compiled on first use (logged once; up to a minute) for this machine
(`-march=native`) and this architecture's sizes, with the C++ compiler on PATH ($CXX, else c++,
g++ or clang++) and the XLA FFI headers shipped in jaxlib, into $LEARNED_OPT_CACHE_DIR (default
~/.cache/learned_opt/native), once per source, compiler and its version, flags, jaxlib version
and CPU; concurrent processes share one compile through a lock file. Only an x86-64 host whose
default backend is CPU compiles it. Elsewhere the same computation runs as XLA
(`kernel_reference`): on GPU and TPU hosts, on other CPUs, under differentiation (truncated
backprop), and where the compile fails or no compiler is found (with one warning giving the
error). LEARNED_OPT_NATIVE=0 turns the kernel off.

Everything per tensor, per row or per column (normalizers folded into the first layer,
Adafactor's factors, biases) is computed in JAX by MLPLOpt and passed in; the kernel does the
per-element work only.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from learned_opt import features as feat_lib

_SOURCE = Path(__file__).with_name("native_kernel.cc")
_FLAGS = ("-O3", "-march=native", "-mprefer-vector-width=512", "-fno-math-errno", "-std=c++17", "-shared", "-fPIC", "-Wno-return-type")
_COMPILE_TIMEOUT_S = 900  # a compile takes ~50 s on a loaded 2-core machine; a hung one must not hold the lock
_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """The static sizes a kernel is compiled for."""

    n_momenta: int
    n_adafactor: int
    hidden_sizes: tuple[int, ...]

    @property
    def num_elementwise(self) -> int:
        return 3 + self.n_momenta + 1 + self.n_momenta + self.n_adafactor + self.n_momenta

    @property
    def num_outputs(self) -> int:
        """First-layer outputs: the hidden units plus the linear skip."""
        return self.hidden_sizes[0] + 1

    @property
    def num_scalars(self) -> int:
        return 2 * self.n_momenta + 5


def pack_rest(layers: list[dict]) -> jax.Array:
    """The layers after the first (hidden ones, then the output) as one f32 vector, each
    layer's (in, out) weights row-major followed by its bias: the kernel's `rest` layout."""
    return jnp.concatenate([jnp.concatenate([l["w"].reshape(-1), l["b"]]) for l in layers])


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
    rv = jax.lax.rsqrt(v_new.astype(acc_dtype).astype(jnp.float32) + feat_lib.RSQRT_EPS)
    fac = [srow[a][:, None] * scol[a][None, :] for a in range(na)]
    feats = (
        [p.astype(jnp.float32), g, jnp.clip(g, -0.1, 0.1)]
        + m_st
        + [jnp.minimum(rv, scal[2 * nm + 2])]
        + [mk * rv for mk in m_st]
        + [g * f for f in fac]
        + [mk * fac[-1] for mk in m_st]
    )
    return feats, jnp.stack(m_new).astype(acc_dtype), v_new.astype(acc_dtype)


def kernel_reference(spec: KernelSpec, p, g, m, v, w0, rowb, colb, srow, scol, rest, scal):
    """The kernel's computation in XLA, element for element: (update, new m, new v).

    p, g: (R, C); m: (NM, R, C) and v: (R, C) accumulators; w0: (E, O); rowb: (O, R);
    colb: (O, C); srow: (NA, R); scol: (NA, C); rest, scal: see pack_rest / pack_scalars.
    """
    nm, hid = spec.n_momenta, spec.hidden_sizes
    feats, m_new, v_new = _reference_features(spec, p, g, m, v, srow, scol, scal)
    pre = [
        rowb[o][:, None] + colb[o][None, :] + sum(f * w0[e, o] for e, f in enumerate(feats))
        for o in range(spec.num_outputs)
    ]
    h = [jax.nn.relu(x) for x in pre[: hid[0]]]
    offset, width = 0, hid[0]
    for n_out in (*hid[1:], 2):
        w = rest[offset : offset + width * n_out].reshape(width, n_out)
        b = rest[offset + width * n_out : offset + width * n_out + n_out]
        out = [sum(h[q] * w[q, j] for q in range(width)) + b[j] for j in range(n_out)]
        h = out if n_out == 2 else [jax.nn.relu(x) for x in out]
        offset, width = offset + width * n_out + n_out, n_out
    direction, log_mag = h
    update = (direction + pre[-1]) * jnp.exp(log_mag * scal[2 * nm + 3]) * scal[2 * nm + 4]
    return update.astype(p.dtype), m_new, v_new


# ---- building and loading ----------------------------------------------------------------


def _skip_reason(backend: str, machine: str) -> str | None:
    """Why the kernel is not built on this host, or None. It is compiled only where it runs
    (the CPU backend; elsewhere platform_dependent never lowers it) and only for what its
    flags and tuning target (x86-64, -march=native), so other hosts never run the compiler."""
    if os.environ.get("LEARNED_OPT_NATIVE", "1") == "0":
        return "LEARNED_OPT_NATIVE=0"
    if backend != "cpu":
        return f"the default backend is {backend!r}, and the kernel runs on 'cpu' only"
    if machine.lower() not in ("x86_64", "amd64") or os.name != "posix":
        return f"the kernel is built for x86-64 Linux or macOS, not {machine!r} on {os.name!r}"
    return None


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _compiler_version(cxx: str) -> str:
    """First line of `cxx --version`: an upgraded compiler behind the same path rebuilds."""
    try:
        res = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"{cxx} --version failed ({e}); set $CXX to a working C++ compiler") from e
    lines = res.stdout.strip().splitlines()
    if res.returncode != 0 or not lines:
        raise RuntimeError(
            f"{cxx} --version gave no version (exit {res.returncode}); set $CXX to a working C++ compiler"
        )
    return lines[0]


def _cpu_signature() -> str:
    """What -march=native depends on: a library built for one CPU must not load on another."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [l for l in f if l.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _cache_dir() -> Path:
    env = os.environ.get("LEARNED_OPT_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "learned_opt" / "native"


def _defines(spec: KernelSpec) -> list[str]:
    hidden = ",".join(map(str, spec.hidden_sizes))
    return [f"-DLOPT_NM={spec.n_momenta}", f"-DLOPT_NA={spec.n_adafactor}", f"-DLOPT_HIDDEN={hidden}"]


def _cache_key(spec: KernelSpec, cxx: str, cxx_version: str) -> str:
    """Everything the library's machine code depends on."""
    import jaxlib

    flags = " ".join(_FLAGS + tuple(_defines(spec)))
    parts = [_SOURCE.read_text(), cxx, cxx_version, flags, jaxlib.__version__, _cpu_signature()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive flock on `path`, released on exit (and by the OS if the process dies)."""
    import fcntl  # POSIX only; _skip_reason keeps other systems from getting here

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _compile(cxx: str, spec: KernelSpec, out: Path) -> None:
    """Compile the kernel to `out` atomically: a reader sees the whole library or none."""
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    cmd = [cxx, *_FLAGS, *_defines(spec), f"-I{jax.ffi.include_dir()}", str(_SOURCE), "-o", tmp]
    try:
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=_COMPILE_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as e:
            raise RuntimeError(f"running the compiler failed ({' '.join(cmd)}): {e}") from e
        if res.returncode != 0:
            raise RuntimeError(f"compiling the native kernel failed ({' '.join(cmd)}):\n{res.stderr[-2000:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _build(spec: KernelSpec) -> Path:
    """Path of the compiled kernel for `spec`, compiling it if not cached. Concurrent callers
    (Ray workers starting together) compile once: one holds the lock, the rest wait for it
    and load its library."""
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler on PATH (set $CXX, or install g++ or clang++)")
    out = _cache_dir() / f"lopt_mlp_{_cache_key(spec, cxx, _compiler_version(cxx))}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    _LOG.warning("building the native learned-optimizer step once (up to a minute); cached at %s", out)
    with _file_lock(out.with_suffix(".lock")):
        if not out.exists():  # else another process built it while this one waited
            start = time.monotonic()
            _compile(cxx, spec, out)
            _LOG.info("built %s in %.0f s", out.name, time.monotonic() - start)
    return out


def _load(spec: KernelSpec) -> str | None:
    """Build, load and register the kernel for `spec`: its FFI target name, or None (with a
    warning naming the compiler's error) if it cannot run here."""
    reason = _skip_reason(jax.default_backend(), platform.machine())
    if reason is not None:
        _LOG.info("native learned-optimizer step off (%s); using the XLA form", reason)
        return None
    try:
        lib = ctypes.CDLL(str(_build(spec)))
        sizes = (ctypes.c_int * 4)()
        lib.LoptNativeSizes(sizes)
        expect = (spec.num_elementwise, spec.num_outputs, None, spec.num_scalars)
        if any(e is not None and e != s for e, s in zip(expect, sizes)):
            raise RuntimeError(f"kernel sizes {list(sizes)} do not match {spec}")
    except (OSError, RuntimeError) as e:
        warnings.warn(f"learned_opt: native kernel unavailable, using the XLA form instead: {e}", stacklevel=4)
        return None
    name = "lopt_" + "_".join(map(str, (spec.n_momenta, spec.n_adafactor, *spec.hidden_sizes)))
    jax.ffi.register_ffi_target(name + "_step", jax.ffi.pycapsule(lib.LoptMlpStep), platform="cpu")
    jax.ffi.register_ffi_target(name + "_square_means", jax.ffi.pycapsule(lib.LoptSquareMeans), platform="cpu")
    jax.ffi.register_ffi_target(name + "_grid_statistics", jax.ffi.pycapsule(lib.LoptGridStatistics), platform="cpu")
    _LIBRARIES[spec] = lib
    return name


_LIBRARIES: dict[KernelSpec, ctypes.CDLL] = {}  # loaded libraries stay alive with the process
_TARGETS: dict[KernelSpec, str | None] = {}  # one build attempt (and at most one warning) per spec


def _target(spec: KernelSpec) -> str | None:
    """The registered FFI target name for `spec`, or None where the XLA form runs instead."""
    if spec not in _TARGETS:
        _TARGETS[spec] = _load(spec)
    return _TARGETS[spec]


def available(spec: KernelSpec) -> bool:
    """True when the kernel for `spec` is compiled and registered (CPU)."""
    return _target(spec) is not None


def _ffi_step(spec: KernelSpec, *args):
    target = _target(spec)
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
    target = _target(spec)
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
    target = _target(spec)
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
