"""Straight-line threefry on CPU, for the scanned inner steps of meta-training and evaluation.

JAX lowers each threefry hash (every `fold_in`, `split` and random draw) on CPU to a rolled
5-iteration while loop, to keep compile times down in large programs; on GPU and TPU it emits
the same 20 rounds as straight-line code. Inside a scanned inner step of tiny tasks those loops
are many small kernels each step: the PES truncation of issue 18's setup (8 pairs x 2 branches,
MLP (32, 32), batch 128, truncation 50) compiles to 29 while loops, the scan's and 28 threefry
loops of 5 iterations x ~16 kernels. With JAX's own straight-line lowering on CPU too, the same
truncation compiles to the scan alone, gives bit-identical results (the same hash: tested), ran
1.05x the inner steps/s on quiet cores (1.13x with the machine shared; interleaved A/B) and
compiled in 23 s instead of 40 s.

This reaches into JAX's internals (the lowering rule of `threefry2x32_p`); where a JAX version
has moved them, `use_unrolled_threefry_on_cpu` changes nothing and says so by returning False.
"""

from __future__ import annotations

import functools


@functools.cache
def use_unrolled_threefry_on_cpu() -> bool:
    """Registers JAX's straight-line threefry lowering for CPU (for programs compiled from now
    on, in this process); True if it could. Idempotent."""
    try:
        from jax.extend.random import threefry2x32_p
        from jax.interpreters import mlir
        from jax._src.random import threefry2x32  # the straight-line rule is not public

        rule = threefry2x32._threefry2x32_lowering_rule
    except (ImportError, AttributeError):
        return False
    mlir.register_lowering(threefry2x32_p, rule, platform="cpu")
    return True
