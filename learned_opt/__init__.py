"""learned_opt: learned optimizers for JAX, shipped as optax transforms.

    tx = learned_opt.load("<pretrained name or path.safetensors>")   # an optax transform
    arch = learned_opt.MLPLOpt(); theta = arch.init_theta(jax.random.key(0))
    tx = learned_opt.to_optax(arch, theta)

Importing this package pulls in jax, optax, numpy and safetensors only: never ray,
tensorflow_datasets, `tasks` or `meta_train`.
"""

from learned_opt.base import LearnedOptimizer
from learned_opt.checkpoint import (
    FORMAT_VERSION,
    list_pretrained,
    load,
    load_theta,
    pretrained_dir,
    save,
)
from learned_opt.export import to_optax
from learned_opt.mlp_lopt import MLPLOpt, MLPLOptState
from learned_opt.mup import ROLES, resolve_roles
from learned_opt.registry import ARCHITECTURE_CLASSES, ARCHITECTURES, get_architecture
from learned_opt.tree_util import num_params
from learned_opt.velo import VeLOLOpt, VeLOState

__all__ = [
    "ARCHITECTURES",
    "ARCHITECTURE_CLASSES",
    "FORMAT_VERSION",
    "LearnedOptimizer",
    "MLPLOpt",
    "MLPLOptState",
    "ROLES",
    "VeLOLOpt",
    "VeLOState",
    "get_architecture",
    "list_pretrained",
    "load",
    "load_theta",
    "num_params",
    "pretrained_dir",
    "resolve_roles",
    "save",
    "to_optax",
]
