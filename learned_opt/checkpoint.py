"""The learned-optimizer checkpoint format: one self-describing `.safetensors` file.

Tensors: theta's arrays, keyed by pytree path ("mlp/0/w", "skip").
Metadata (safetensors' str -> str header):
    format          "learned-opt"
    format_version  "2"
    architecture    class key in `learned_opt.ARCHITECTURE_CLASSES` (e.g. "mlp_lopt")
    config          JSON of the architecture dataclass's fields
    provenance      JSON: recipe, meta-training steps, summary, ... (whatever the writer passes)
    sha256          digest of every tensor's name, dtype, shape and bytes (detects corruption
                    that the safetensors header cannot see)

Loading rebuilds the architecture from its config, builds theta's template with
`jax.eval_shape(arch.init_theta, ...)`, and fills it, naming any missing, extra or misshapen
array. Nothing is unpickled or executed: safetensors is plain bytes plus a JSON header.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
import safetensors
import safetensors.numpy

from learned_opt.export import to_optax
from learned_opt.registry import ARCHITECTURE_CLASSES
from learned_opt.tree_util import flatten_with_paths

FORMAT = "learned-opt"
# 2: MLPLOpt's per-row/column features moved to the end of its inputs, bare rsqrt features capped.
FORMAT_VERSION = 2
SUFFIX = ".safetensors"
# Options of `load` that change how theta is applied, not its shapes.
_ARCH_OPTIONS = ("accumulator_dtype", "normalizer_samples")


def pretrained_dir() -> Path:
    """Where `list_pretrained` and `load(name)` look.

    $LEARNED_OPT_PRETRAINED_DIR if set; else the `checkpoints/` shipped in the wheel
    (`learned_opt/_pretrained`) or, in a source checkout, the repo's `checkpoints/`.
    """
    env = os.environ.get("LEARNED_OPT_PRETRAINED_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for candidate in (here / "_pretrained", here.parent / "checkpoints"):
        if candidate.is_dir():
            return candidate
    return here / "_pretrained"


def list_pretrained() -> list[str]:
    """Names accepted by `load` / `load_theta`: the checkpoint files shipped with the package."""
    d = pretrained_dir()
    return sorted(p.name[: -len(SUFFIX)] for p in d.glob(f"*{SUFFIX}")) if d.is_dir() else []


def _digest(tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        a = np.ascontiguousarray(tensors[k])
        h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save(path: str | os.PathLike, arch: Any, theta: Any, metadata: dict | None = None) -> Path:
    """Write theta + architecture + provenance to `path` (.safetensors), atomically.

    The file appears complete or not at all: it is written to a temp file in the same directory,
    flushed to disk, then renamed over `path`.
    """
    path = Path(path)
    if path.suffix != SUFFIX:
        raise ValueError(f"Checkpoint path {str(path)!r} must end in {SUFFIX!r}.")
    if ARCHITECTURE_CLASSES.get(getattr(arch, "name", None)) is not type(arch):
        raise TypeError(
            f"Cannot save architecture {arch!r}: its class is not registered in "
            f"learned_opt.ARCHITECTURE_CLASSES ({sorted(ARCHITECTURE_CLASSES)})."
        )
    tensors = {k: np.asarray(v) for k, v in flatten_with_paths(theta).items()}
    try:
        provenance = json.dumps(metadata or {}, sort_keys=True)
    except TypeError as e:
        raise TypeError(f"Checkpoint metadata must be JSON-serializable: {e}") from None
    header = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "architecture": arch.name,
        "config": json.dumps(dataclasses.asdict(arch), sort_keys=True),
        "provenance": provenance,
        "sha256": _digest(tensors),
    }
    data = safetensors.numpy.save(tensors, metadata=header)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); a checkpoint gets the usual umask-based mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A pretrained name or a file path -> an existing checkpoint file, or a clear error."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    s = str(name_or_path)
    looks_like_path = s.endswith(SUFFIX) or os.sep in s or "/" in s
    if not looks_like_path:
        candidate = pretrained_dir() / f"{s}{SUFFIX}"
        if candidate.is_file():
            return candidate
        raise ValueError(
            f"Unknown pretrained optimizer {s!r}; available: {list_pretrained()} "
            f"(in {pretrained_dir()}), or pass the path of a {SUFFIX} file."
        )
    raise FileNotFoundError(f"No checkpoint file at {s!r} (resolved to {p.resolve()}).")


def _read(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    try:
        with safetensors.safe_open(str(path), framework="numpy") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (safetensors.SafetensorError, OSError, ValueError) as e:
        raise ValueError(
            f"Checkpoint {str(path)!r} is truncated or corrupt and cannot be read ({e}). "
            "Re-download or re-export it."
        ) from None
    return tensors, header


def load_theta(name_or_path: str | os.PathLike) -> tuple[Any, Any, dict]:
    """(arch, theta, provenance) from a pretrained name or a checkpoint path, fully validated."""
    path = resolve(name_or_path)
    tensors, header = _read(path)
    where = f"Checkpoint {str(path)!r}"
    if header.get("format") != FORMAT:
        raise ValueError(f"{where} is not a learned-opt checkpoint (format={header.get('format')!r}).")
    version = header.get("format_version")
    if version != str(FORMAT_VERSION):
        raise ValueError(
            f"{where} has format_version {version!r}; this learned-opt reads version "
            f"{FORMAT_VERSION}. Upgrade learned-opt or re-export the checkpoint with this version."
        )
    if header.get("sha256") != _digest(tensors):
        raise ValueError(f"{where} is corrupt: its arrays do not match the recorded sha256 digest.")
    arch_name = header.get("architecture")
    if arch_name not in ARCHITECTURE_CLASSES:
        raise ValueError(
            f"{where} uses architecture {arch_name!r}, which this learned-opt does not know; "
            f"known: {sorted(ARCHITECTURE_CLASSES)}."
        )
    try:
        config = json.loads(header["config"])
        arch = ARCHITECTURE_CLASSES[arch_name](**config)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{where} has an invalid {arch_name} config: {e}") from None
    theta = _fill_template(arch, tensors, where)
    try:
        provenance = json.loads(header.get("provenance") or "{}")
    except json.JSONDecodeError as e:
        raise ValueError(f"{where} has an invalid provenance field (not JSON: {e}).") from None
    return arch, theta, provenance


def _fill_template(arch: Any, tensors: dict[str, np.ndarray], where: str) -> Any:
    template = jax.eval_shape(arch.init_theta, jax.random.key(0))
    expected = flatten_with_paths(template)
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(
            f"{where} does not match architecture {arch!r}: missing arrays {missing}, "
            f"unexpected arrays {extra}."
        )
    wrong = [
        f"{k!r} has shape {tuple(tensors[k].shape)} dtype {tensors[k].dtype}, expected shape "
        f"{tuple(spec.shape)} dtype {spec.dtype}"
        for k, spec in expected.items()
        if tuple(tensors[k].shape) != tuple(spec.shape) or tensors[k].dtype != spec.dtype
    ]
    if wrong:
        raise ValueError(f"{where}: arrays do not match architecture {arch!r}: " + "; ".join(wrong) + ".")
    leaves = [jax.numpy.asarray(tensors[k]) for k in expected]
    return jax.tree.unflatten(jax.tree.structure(template), leaves)


def load(name_or_path: str | os.PathLike, *, num_steps: int | None = None, roles: Any = None, **options):
    """A pretrained optimizer as an optax transform: `tx = learned_opt.load("name", num_steps=N)`.

    num_steps: the length of training; optimizers with a learned schedule need it (and say so
    when it is missing), the others ignore it.
    roles: mu-P roles of your params (see `learned_opt.mup`); None infers them from shapes.
    options: deployment settings that leave theta unchanged: `accumulator_dtype` ("float32" or
    "bfloat16", half the optimizer state) and `normalizer_samples` (0: exact per-tensor feature
    normalizers on every tensor; see `learned_opt.normalizers`).
    """
    unknown = sorted(set(options) - set(_ARCH_OPTIONS))
    if unknown:
        raise TypeError(f"Unknown load option(s) {unknown}; accepted: ['num_steps', 'roles', *{list(_ARCH_OPTIONS)}].")
    arch, theta, _ = load_theta(name_or_path)
    if options:
        arch = dataclasses.replace(arch, **options)
    return to_optax(arch, theta, roles=roles, num_steps=num_steps)
