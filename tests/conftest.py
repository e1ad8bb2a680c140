"""Shared test set-up: CPU, float32, and a temp data dir so tests never touch the user's cache."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The suite compiles far more than it runs: XLA's backend optimizations cost about a third of its
# time and change results only within float tolerance (every comparison runs both sides alike).
_NO_OPT = "--xla_backend_optimization_level=0"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_NO_OPT}".strip()
