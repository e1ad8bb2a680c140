"""The native step (impl='native') agrees with the reference step; its derivative is the XLA form's."""

import dataclasses
import os
import threading
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import learned_opt
from learned_opt import native, native_build
from tests.learned_opt.conftest import mixed_params
from tests.learned_opt.test_fused import BASE, _random_theta, _run

NATIVE = dataclasses.replace(BASE, impl="native")
REF = dataclasses.replace(BASE, impl="reference")
SPEC = native.KernelSpec(len(BASE.momentum_decays), len(BASE.adafactor_decays), BASE.hidden_sizes)


def test_kernel_compiles_here():
    """CI has a compiler: the comparisons below test the kernel, not the XLA fallback."""
    assert native.available(SPEC)


@pytest.mark.parametrize(
    "dtype, acc_dtype, normalizer_samples",
    [(jnp.float32, "float32", 16384), (jnp.bfloat16, "bfloat16", 16384), (jnp.float32, "bfloat16", 10)],
    ids=["f32-exact", "bf16-exact", "f32-bf16state-grid"],
)
def test_native_matches_reference_on_mixed_pytrees(dtype, acc_dtype, normalizer_samples):
    params = mixed_params(dtype)  # dense kernel, bias, conv kernel, scalar, vector
    theta = _random_theta(REF)
    kw = dict(normalizer_samples=normalizer_samples, accumulator_dtype=acc_dtype)
    tol = dict(rtol=1e-4, atol=1e-7) if dtype == jnp.float32 else dict(rtol=2e-2, atol=1e-5)
    _assert_runs_match(dataclasses.replace(NATIVE, **kw), dataclasses.replace(REF, **kw), theta, params, dtype,
                       tol, dict(rtol=1e-2, atol=1e-6))


def _assert_runs_match(nat, ref, theta, params, dtype, update_tol, state_tol):
    """Three steps of `nat` and `ref` give the same updates (in the params' dtype) and states,
    and the updates are not trivially small."""
    ups_n, st_n = _run(nat, theta, params)
    ups_r, st_r = _run(ref, theta, params)
    for un, ur in zip(ups_n, ups_r):
        for a, b in zip(jax.tree.leaves(un), jax.tree.leaves(ur)):
            assert a.dtype == b.dtype == dtype
            np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), **update_tol)
    for a, b in zip(jax.tree.leaves(st_n), jax.tree.leaves(st_r)):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), **state_tol)
    assert float(jnp.max(jnp.abs(ups_r[-1]["dense"]["kernel"].astype(jnp.float32)))) > 1e-5


def test_native_under_vmap_matches_per_member():
    params = {"w": jax.random.normal(jax.random.key(0), (40, 24)), "b": jnp.zeros(24)}
    theta = _random_theta(REF)
    grads = [jax.tree.map(lambda p, s=s: s * jnp.ones_like(p) + jnp.sin(p), params) for s in (0.5, 2.0)]
    one = lambda g: NATIVE.update(theta, g, NATIVE.init_state(params), params, loss=jnp.float32(1.0))[0]  # noqa: E731
    batched = jax.jit(jax.vmap(one))(jax.tree.map(lambda *x: jnp.stack(x), *grads))
    for i, g in enumerate(grads):
        ref = REF.update(theta, g, REF.init_state(params), params, loss=jnp.float32(1.0))[0]
        for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(ref)):
            np.testing.assert_allclose(np.asarray(a[i]), np.asarray(b), rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("arch_name", [None, "mlp"], ids=["small", "wide"])
def test_meta_gradient_through_native_matches_reference(arch_name):
    """Differentiated, the step is its XLA form: for a wide network (`mlp`), stacked matmuls
    that compile in seconds (unrolled, 39 -> 32 -> 32 took minutes)."""
    native_arch = NATIVE if arch_name is None else learned_opt.ARCHITECTURES[arch_name]
    ref_arch = dataclasses.replace(native_arch, impl="reference")
    params = {"w": jax.random.normal(jax.random.key(2), (6, 5)), "b": jnp.zeros(5)}
    x = jax.random.normal(jax.random.key(3), (16, 6))

    def meta_loss(theta, arch):
        p, s = params, arch.init_state(params)
        for _ in range(3):
            loss, g = jax.value_and_grad(lambda p: jnp.mean(jnp.tanh(x @ p["w"] + p["b"]) ** 2))(p)
            u, s = arch.update(theta, g, s, p, loss=loss)
            p = jax.tree.map(jnp.add, p, u)
        return jnp.mean(jnp.tanh(x @ p["w"] + p["b"]) ** 2)

    theta = _random_theta(ref_arch)
    g_n, g_r = jax.grad(meta_loss)(theta, native_arch), jax.grad(meta_loss)(theta, ref_arch)
    for a, b in zip(jax.tree.leaves(g_n), jax.tree.leaves(g_r)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3, atol=1e-9)


def test_native_registered_in_impls():
    with pytest.raises(ValueError, match="impl='bogus'"):
        learned_opt.MLPLOpt(impl="bogus")
    with pytest.raises(ValueError, match="impl='native'.*hidden_sizes=\\(64, 64\\)"):
        learned_opt.MLPLOpt(hidden_sizes=(64, 64), impl="native")


def test_wide_network_runs_blocked_and_matches_reference():
    """muLO's 39 -> 32 -> 32 network (`mlp`: five momenta, f32 state) is past the width that
    keeps activations in registers: the kernel runs its layers blocked (16 outputs at a time;
    33 first-layer outputs: two full blocks and a partial one)."""
    nat = learned_opt.ARCHITECTURES["mlp"]
    assert nat.impl == "native" and nat.hidden_sizes == (32, 32)
    spec = native.KernelSpec(len(nat.momentum_decays), len(nat.adafactor_decays), nat.hidden_sizes)
    assert native.available(spec)
    ref = dataclasses.replace(nat, impl="reference")
    tol = dict(rtol=1e-4, atol=1e-7)
    _assert_runs_match(nat, ref, _random_theta(ref), mixed_params(jnp.float32), jnp.float32, tol, tol)


@pytest.mark.parametrize(
    "shape, row_stride, dtype, acc_dtype",
    [((37, 40), 1, jnp.float32, jnp.float32), ((37, 40), 5, jnp.bfloat16, jnp.bfloat16),
     ((301, 3), 4, jnp.float32, jnp.bfloat16), ((50, 1), 1, jnp.bfloat16, jnp.float32),
     ((600, 64), 1, jnp.float32, jnp.float32), ((80000, 1), 2, jnp.float32, jnp.float32)],
    ids=["rows", "rows-strided-bf16", "narrow-strided", "vector", "rows-threaded", "vector-threaded"],
)
def test_grid_statistics_kernel_matches_reference(shape, row_stride, dtype, acc_dtype):
    """Wide rows are read in place and narrow tensors gathered, on every row_stride-th row;
    grids over 8192 elements are split into work items whose sums are added up, on helper
    threads from 32768 elements (the "threaded" cases)."""
    rows, cols = shape
    ks = jax.random.split(jax.random.key(4), 6)
    p, g = (jax.random.normal(k, shape).astype(dtype) for k in ks[:2])
    m = (0.1 * jax.random.normal(ks[2], (SPEC.n_momenta, *shape))).astype(acc_dtype)
    v = jnp.square(jax.random.normal(ks[3], shape))  # second moments are always f32
    srow = jnp.exp(jax.random.normal(ks[4], (SPEC.n_adafactor, rows)))
    scol = jnp.exp(jax.random.normal(ks[5], (SPEC.n_adafactor, cols)))
    scal = native.pack_scalars(BASE.momentum_decays, BASE.rms_decay, 10.0, 0.0, jnp.float32(0.0))
    args = (p, g, m, v, srow, scol, scal)
    got = jax.jit(lambda *a: native.grid_statistics(SPEC, *a, row_stride))(*args)
    want = native.grid_statistics_reference(SPEC, *args, row_stride)
    # bf16 accumulators: a fused multiply-add may round a few elements' momenta to the
    # neighbouring bf16 value (1 in 256) where XLA's separate multiply and add do not.
    rtol = 2e-5 if acc_dtype == jnp.float32 else 5e-4
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol)
    # The stride is honoured: every element's statistics differ from the grid's.
    if row_stride > 1:
        full = native.grid_statistics_reference(SPEC, *args, 1)
        assert not np.allclose(np.asarray(full[1]), np.asarray(want[1]), rtol=1e-3)


def test_square_means_kernel_matches_reference_in_chunks_and_batches():
    """Row chunks (of ~32k elements) run on the pool; their column sums add up per member."""
    g = jax.random.normal(jax.random.key(5), (3, 700, 100)).astype(jnp.bfloat16)
    got = jax.jit(jax.vmap(lambda g: native.square_means(SPEC, g)))(g)
    want = jax.vmap(native.square_means_reference)(g)
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5)


@pytest.mark.parametrize(
    "shape, dtype, acc_dtype, arch_name",
    [((7, 300), jnp.float32, jnp.float32, None), ((9, 300), jnp.bfloat16, jnp.bfloat16, None),
     ((64, 12), jnp.float32, jnp.bfloat16, None), ((50, 7), jnp.bfloat16, jnp.float32, None),
     ((1000, 40), jnp.float32, jnp.bfloat16, None), ((37, 20), jnp.float32, jnp.float32, "mlp")],
    ids=["chunks-partial", "chunks-partial-bf16", "narrow-rows", "flat", "threaded", "wide-blocked"],
)
def test_step_kernel_matches_reference(shape, dtype, acc_dtype, arch_name):
    """Every layout of the step loop: rows of more than one 16-block chunk with a masked tail,
    rows of 10-15 columns (one masked block each), narrower tensors stepped flat with gathered
    row/column inputs, and tensors of several 8192-element work items (on helper threads from
    32768 elements). "wide-blocked": muLO's 39 -> 32 -> 32 (`mlp`), whose layers the kernel runs
    blocked and whose XLA form (on GPU and TPU) is stacked matmuls, not the unrolled network."""
    base = BASE if arch_name is None else learned_opt.ARCHITECTURES[arch_name]
    spec = native.KernelSpec(len(base.momentum_decays), len(base.adafactor_decays), base.hidden_sizes)
    rows, cols = shape
    e, o, na = spec.num_elementwise, spec.num_outputs, spec.n_adafactor
    ks = jax.random.split(jax.random.key(6), 10)
    p, g = jax.random.normal(ks[0], shape).astype(dtype), (0.1 * jax.random.normal(ks[1], shape)).astype(dtype)
    m = (0.1 * jax.random.normal(ks[2], (spec.n_momenta, *shape))).astype(acc_dtype)
    v = 0.01 + 0.01 * jnp.square(jax.random.normal(ks[3], shape))  # always f32
    w0 = 0.1 * jax.random.normal(ks[4], (e, o))
    rowb, colb = jax.random.normal(ks[5], (o, rows)), jax.random.normal(ks[6], (o, cols))
    srow = jnp.exp(jax.random.normal(ks[7], (na, rows)))
    scol = jnp.exp(jax.random.normal(ks[8], (na, cols)))
    theta = base.init_theta(jax.random.key(7))
    rest = native.pack_rest(jax.tree.map(lambda x: x + 0.3, theta["mlp"][1:]))
    scal = native.pack_scalars(base.momentum_decays, base.rms_decay, 30.0, 0.05, jnp.float32(1e-2))
    args = (p, g, m, v, w0, rowb, colb, srow, scol, rest, scal)
    want = native.kernel_reference(spec, *args)
    got = jax.jit(lambda *a: native.step(spec, *a))(*args)
    upd_tol = dict(rtol=1e-4, atol=1e-7) if dtype == jnp.float32 else dict(rtol=2e-2, atol=1e-5)
    acc_tol = dict(rtol=2e-5, atol=1e-9) if acc_dtype == jnp.float32 else dict(rtol=1e-2, atol=1e-6)
    v_tol = dict(rtol=2e-5, atol=1e-9)
    for a, b, tol in zip(got, want, (upd_tol, acc_tol, v_tol)):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), **tol)
    upd = np.asarray(want[0], np.float32)
    assert np.isfinite(upd).all() and np.std(upd) > 0  # a real update, element by element


# ---- building: where, once, and the fallback -------------------------------------------

# Answers --version with $FAKE_CC_VERSION; a compile logs itself, sleeps $FAKE_CC_SLEEP s and
# writes a file that is not a library (or fails with "fake-cc: boom" when $FAKE_CC_FAIL is set).
_FAKE_CC = """#!/bin/sh
if [ "$1" = "--version" ]; then echo version >> "$FAKE_CC_LOG"; echo "fake-cc ${FAKE_CC_VERSION:-1.0}"; exit 0; fi
echo compile >> "$FAKE_CC_LOG"
if [ -n "$FAKE_CC_FAIL" ]; then echo "fake-cc: boom" >&2; exit 1; fi
sleep "${FAKE_CC_SLEEP:-0}"
while [ $# -gt 1 ]; do if [ "$1" = "-o" ]; then echo not-a-library > "$2"; fi; shift; done
"""


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """No build attempted yet in this process, an empty cache dir, and a fake compiler as $CXX:
    returns a function reading the fake compiler's invocations."""
    monkeypatch.setattr(native_build, "_TARGETS", {})
    monkeypatch.setenv("LEARNED_OPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LEARNED_OPT_NATIVE", raising=False)
    cc = tmp_path / "fake-cc"
    cc.write_text(_FAKE_CC)
    cc.chmod(0o755)
    log = tmp_path / "cc.log"
    monkeypatch.setenv("CXX", str(cc))
    monkeypatch.setenv("FAKE_CC_LOG", str(log))
    return lambda: log.read_text().split() if log.exists() else []


def test_without_a_compiler_falls_back_to_xla_with_one_warning(fresh, monkeypatch, tmp_path):
    monkeypatch.delenv("CXX")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    params = {"w": jax.random.normal(jax.random.key(8), (12, 20))}
    theta = _random_theta(REF)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ups_n, _ = _run(NATIVE, theta, params, steps=1)  # the step and both statistics ask for the kernel
    assert [str(w.message) for w in caught if "native kernel" in str(w.message)] == [
        "learned_opt: native kernel unavailable, using the XLA form instead: "
        "no C++ compiler on PATH (set $CXX, or install g++ or clang++)"
    ]
    assert not native.available(SPEC)
    ups_r, _ = _run(REF, theta, params, steps=1)
    for a, b in zip(jax.tree.leaves(ups_n), jax.tree.leaves(ups_r)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-8)


def test_failed_compile_warns_once_with_the_compilers_error(fresh, monkeypatch):
    monkeypatch.setenv("FAKE_CC_FAIL", "1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not native.available(SPEC)
        assert not native.available(SPEC)
    assert len(caught) == 1 and "fake-cc: boom" in str(caught[0].message)
    assert fresh().count("compile") == 1
    assert not list(Path(os.environ["LEARNED_OPT_CACHE_DIR"]).glob("*.so"))  # nothing half-built


def test_cache_key_includes_the_compiler_version(fresh, monkeypatch):
    first = native_build._build(SPEC)
    assert native_build._build(SPEC) == first  # cached
    monkeypatch.setenv("FAKE_CC_VERSION", "2.0")  # same path, upgraded compiler
    assert native_build._build(SPEC) != first
    assert fresh().count("compile") == 2


def test_concurrent_builds_compile_once(fresh, monkeypatch):
    """flock locks an open file, so two threads contend for it as two Ray workers would."""
    monkeypatch.setenv("FAKE_CC_SLEEP", "1")  # long enough that both builders overlap
    start, paths = threading.Barrier(2), []

    def build():
        start.wait()
        paths.append(native_build._build(SPEC))

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(paths) == 2 and paths[0] == paths[1] and paths[0].read_text() == "not-a-library\n"
    assert fresh().count("compile") == 1


@pytest.mark.parametrize(
    "backend, machine", [("gpu", "x86_64"), ("tpu", "x86_64"), ("cpu", "aarch64"), ("cpu", "arm64")]
)
def test_no_compile_off_x86_cpu(fresh, monkeypatch, backend, machine):
    monkeypatch.setattr(native_build.jax, "default_backend", lambda: backend)
    monkeypatch.setattr(native_build.platform, "machine", lambda: machine)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an expected fallback: silent
        assert not native.available(SPEC)
    assert fresh() == []  # the compiler never ran, not even --version
