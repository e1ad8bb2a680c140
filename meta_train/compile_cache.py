"""JAX's persistent compilation cache for meta-training processes (the driver and Ray actors).

A worker compiles its truncation once per task shape. With `tasks.redraw_every` every round
brings new shapes, and every resume or restarted actor compiles all of its shapes again: minutes
per worker on a small CPU. With `run.compilation_cache` set, an executable compiled once (by any
worker, round or run on the machine) is read back from disk instead.
"""

from __future__ import annotations

import os

import jax


def enable(directory: str | None, min_compile_s: float = 1.0) -> str | None:
    """Caches compilations that took at least `min_compile_s` in `directory` ('~' expands);
    None or "" leaves the cache off. Returns the directory used."""
    if not directory:
        return None
    path = os.path.abspath(os.path.expanduser(directory))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"run.compilation_cache={directory!r}: cannot create the directory ({err.strerror}); "
            "give a writable directory, or null to compile without a cache."
        ) from None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_s))
    return path
