"""A noisy diagonal quadratic: the task whose meta-gradient can be computed exactly.

loss(p) = 0.5 * sum(h * (p - target - noise)^2), noise ~ N(0, noise_std^2) per batch.
Its optimum, curvature spectrum and gradient noise are all known, so meta-training code can be
checked against `jax.grad` through a full unroll (`tests/meta_train`). The family samples
curvatures log-uniformly so the learned optimizer must cope with varying conditioning.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from tasks.base import TaskFamily, TaskInfo


class QuadraticTask(struct.PyTreeNode):
    """One quadratic; `curvature`, `target`, `init_scale`, `noise_std` are per-task array leaves."""

    curvature: jax.Array  # f32[dim], > 0
    target: jax.Array  # f32[dim]
    init_scale: jax.Array  # f32[]
    noise_std: jax.Array  # f32[]
    dim: int = struct.field(pytree_node=False, default=8)
    horizon: int = struct.field(pytree_node=False, default=100)

    @property
    def info(self) -> TaskInfo:
        return TaskInfo(name=f"quadratic_d{self.dim}", num_params=self.dim, horizon=self.horizon)

    def init(self, key: jax.Array) -> dict[str, jax.Array]:
        return {"w": self.init_scale * jax.random.normal(key, (self.dim,), jnp.float32)}

    def sample_batch(self, key: jax.Array, *, split: str = "train") -> dict[str, jax.Array]:
        if split not in ("train", "test"):
            raise ValueError(f"split={split!r}; expected 'train' or 'test'.")
        # The test split draws from the same distribution with an independent stream.
        key = jax.random.fold_in(key, 0 if split == "train" else 1)
        return {"noise": self.noise_std * jax.random.normal(key, (self.dim,), jnp.float32)}

    def loss(self, params: dict[str, jax.Array], batch: dict[str, jax.Array]) -> jax.Array:
        diff = params["w"] - self.target - batch["noise"]
        return 0.5 * jnp.sum(self.curvature * diff * diff)


@dataclasses.dataclass(frozen=True)
class QuadraticFamily(TaskFamily):
    """Quadratics with log-uniform curvatures in [min_curvature, max_curvature]."""

    dim: int = 8
    min_curvature: float = 0.1
    max_curvature: float = 10.0
    noise_std: float = 0.1
    init_scale: float = 1.0
    horizon: int = 100

    def __post_init__(self):
        if not 0 < self.min_curvature <= self.max_curvature:
            raise ValueError(
                f"curvature bounds ({self.min_curvature}, {self.max_curvature}) must satisfy "
                "0 < min_curvature <= max_curvature."
            )

    def sample(self, key: jax.Array) -> QuadraticTask:
        k_curv, k_target = jax.random.split(key)
        log_h = jax.random.uniform(
            k_curv, (self.dim,), minval=jnp.log(self.min_curvature), maxval=jnp.log(self.max_curvature)
        )
        return QuadraticTask(
            curvature=jnp.exp(log_h).astype(jnp.float32),
            target=jax.random.normal(k_target, (self.dim,), jnp.float32),
            init_scale=jnp.asarray(self.init_scale, jnp.float32),
            noise_std=jnp.asarray(self.noise_std, jnp.float32),
            dim=self.dim,
            horizon=self.horizon,
        )
