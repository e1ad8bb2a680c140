"""Building, caching and loading the native kernel of learned_opt.native (`native_kernel.cc`).

The kernel is compiled on first use (logged once; up to a minute) for this machine
(`-march=native`) and this architecture's sizes, with the C++ compiler on PATH ($CXX, else c++,
g++ or clang++) and the XLA FFI headers shipped in jaxlib, into $LEARNED_OPT_CACHE_DIR (default
~/.cache/learned_opt/native), once per source, compiler and its version, flags, jaxlib version
and CPU; concurrent processes share one compile through a lock file. Only an x86-64 host whose
default backend is CPU compiles it; everywhere else, or where the compile fails or no compiler
is found (one warning giving the error), `target` is None and learned_opt.native runs its XLA
form. LEARNED_OPT_NATIVE=0 turns the kernel off.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
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

_SOURCE = Path(__file__).with_name("native_kernel.cc")
_FLAGS = ("-O3", "-march=native", "-mprefer-vector-width=512", "-fno-math-errno", "-std=c++17", "-shared", "-fPIC", "-Wno-return-type")
# The largest network the kernel is built for, in multiply-adds per parameter (MLPLOpt's count,
# the first layer over all its features): muLO's 39 -> 32 -> 32 (2,272) compiles in ~15 s.
MAX_NATIVE_MACS = 4096
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


def target(spec: KernelSpec) -> str | None:
    """The registered FFI target name for `spec`, or None where the XLA form runs instead."""
    if spec not in _TARGETS:
        _TARGETS[spec] = _load(spec)
    return _TARGETS[spec]


def available(spec: KernelSpec) -> bool:
    """True when the kernel for `spec` is compiled and registered (CPU)."""
    return target(spec) is not None
