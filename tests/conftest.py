"""Shared test set-up: CPU, and one persistent compilation cache per test session.

The suite is compile-bound, and many tests build the same program again in a new `jax.jit`
object (every `meta_train` call, every resume, every CLI run), which the in-memory cache
cannot see. A session-wide JAX persistent cache in a fresh temporary directory (removed at
the end) reads such programs back instead of compiling them again. It holds only this
session's own compilations of identical programs, so results are unchanged; a cache given
by the user ($JAX_COMPILATION_CACHE_DIR) is left alone.
"""

import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Compilations shorter than this are not worth a file (mostly op-by-op programs, which the
# in-memory cache already reuses).
CACHE_MIN_COMPILE_S = 0.1
_session_cache_dir = None


def pytest_configure(config):
    global _session_cache_dir
    _import_ray_outside_any_test()
    import jax

    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        _session_cache_dir = tempfile.mkdtemp(prefix="lopt-test-xla-cache-")
        jax.config.update("jax_compilation_cache_dir", _session_cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_S)
    # One host device for the whole session, whichever test starts JAX first: `lopt meta-train`
    # asks for one per core before it starts JAX (meta_train.population_devices), and a CLI test
    # running first would otherwise split every later test's population. Tests of the split run
    # it in a subprocess.
    jax.config.update("jax_num_cpu_devices", 1)
    jax.devices()


def _import_ray_outside_any_test():
    """Ray's loggers keep the sys.stderr of the moment `ray` is first imported. Imported inside a
    test that uses capsys, that is the test's capture stream, closed when the test ends, and every
    later Ray log line prints a "Logging error" traceback into whichever test runs then."""
    try:
        import ray  # noqa: F401
    except ImportError:
        pass


def pytest_unconfigure(config):
    if _session_cache_dir:
        shutil.rmtree(_session_cache_dir, ignore_errors=True)
