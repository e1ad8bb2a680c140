"""What `pip install 'learned-opt[meta]'` adds, and the one-line error when it is missing.

`learned_opt` itself needs only the core (jax, optax, numpy, safetensors). `meta_train`, `tasks`
and the `lopt` command need the `meta` extra; they call `require_meta` first, so a core-only
install says what to install instead of failing deep inside an import.
"""

from __future__ import annotations

import importlib.util
import sys

# Top-level module -> distribution in pyproject's `meta` extra (keep the two in step).
META_MODULES = {
    "flax": "flax",
    "haiku": "dm-haiku",
    "tensorflow_datasets": "tensorflow-datasets",
    "array_record": "array-record",
    "importlib_resources": "importlib-resources",
    "etils": "etils",
    "ray": "ray",
    "orbax": "orbax-checkpoint",
    "omegaconf": "omegaconf",
    "rich": "rich",
    "matplotlib": "matplotlib",
    "mnist1d": "mnist1d",
    "sklearn": "scikit-learn",
    "tensorboardX": "tensorboardX",
}

INSTALL_HINT = "pip install 'learned-opt[meta]'"


def missing_meta() -> list[str]:
    """Distributions of the `meta` extra whose modules cannot be found (nothing is imported)."""
    return [dist for module, dist in META_MODULES.items() if importlib.util.find_spec(module) is None]


def meta_error(what: str) -> str | None:
    """The one-line message for `what` (e.g. "meta_train") if the extra is missing, else None."""
    missing = missing_meta()
    if not missing:
        return None
    return f"{what} needs the 'meta' extra ({', '.join(missing)} not installed): {INSTALL_HINT}"


def require_meta(what: str) -> None:
    """Raises ImportError naming the missing distributions and the install command."""
    message = meta_error(what)
    if message is not None:
        raise ImportError(message)


def lopt_main(argv: list[str] | None = None) -> int:
    """The `lopt` console script: one line on stderr (exit 1) without the extra, else meta_train's CLI."""
    message = meta_error("lopt")
    if message is not None:
        print(f"error: {message}", file=sys.stderr)
        return 1
    from meta_train.cli import main

    return main(argv)
