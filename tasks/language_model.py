"""Byte-level language-model tasks: a transformer on a device-resident token stream.

A batch is `batch_size` random windows of `max_len + 1` tokens; the loss is next-token
cross-entropy (nats per byte). The held-out loss is over `eval_batches * batch_size` fixed,
evenly spaced test windows.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from tasks.base import TaskInfo, info_from_init
from tasks.classification import scale_kernels
from tasks.data.catalog import get_spec
from tasks.data.device_data import SPLITS, to_device
from tasks.data.loading import load_tokens


def windows(tokens_N: jax.Array, starts_B: jax.Array, length: int) -> jax.Array:
    """u8[B, length] slices of `tokens_N` starting at `starts_B`."""
    return jax.vmap(lambda s: jax.lax.dynamic_slice_in_dim(tokens_N, s, length))(starts_B)


class LanguageModelTask(struct.PyTreeNode):
    train_tokens: jax.Array  # u8[N_train]
    test_tokens: jax.Array  # u8[N_test]
    init_scale: jax.Array  # f32[]
    model: Any = struct.field(pytree_node=False)  # TransformerConfig
    dataset: str = struct.field(pytree_node=False)
    batch_size: int = struct.field(pytree_node=False)
    horizon: int = struct.field(pytree_node=False)
    eval_batches: int = struct.field(pytree_node=False, default=4)

    @property
    def name(self) -> str:
        return f"{self.model.name}_{self.dataset}_bs{self.batch_size}"

    @property
    def info(self) -> TaskInfo:
        return info_from_init(self.name, self._init_unscaled, self.horizon)

    def _init_unscaled(self, key):
        tokens_1xT = jnp.zeros((1, self.model.max_len), jnp.int32)
        return self.model.module().init(key, tokens_1xT)["params"]

    def init(self, key: jax.Array):
        return scale_kernels(self._init_unscaled(key), self.init_scale)

    def loss(self, params, batch) -> jax.Array:
        tokens_BxT1 = batch["tokens"].astype(jnp.int32)
        logits = self.model.module().apply({"params": params}, tokens_BxT1[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens_BxT1[:, 1:]).mean()

    def _tokens(self, split: str) -> jax.Array:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
        return self.train_tokens if split == "train" else self.test_tokens

    def sample_batch(self, key: jax.Array, *, split: str = "train"):
        tokens_N = self._tokens(split)
        length = self.model.max_len + 1
        starts_B = jax.random.randint(key, (self.batch_size,), 0, tokens_N.shape[-1] - length)
        return {"tokens": windows(tokens_N, starts_B, length)}

    def eval_loss(self, params) -> jax.Array:
        length = self.model.max_len + 1
        n = self.eval_batches * self.batch_size
        starts = jnp.linspace(0, self.test_tokens.shape[-1] - length, n).astype(jnp.int32)
        return self.loss(params, {"tokens": windows(self.test_tokens, starts, length)})


def make_language_model_task(dataset: str, model, *, batch_size: int, horizon: int,
                             init_scale: float = 1.0, eval_batches: int = 4,
                             data_dir=None) -> LanguageModelTask:
    """Loads a text dataset as bytes (building local ones on first use) and wraps `model`."""
    if get_spec(dataset).kind != "text":
        raise ValueError(f"Dataset {dataset!r} is not a text dataset; use e.g. 'stdlib_chars'.")
    if model.vocab_size < 256:
        raise ValueError(f"Byte-level data needs vocab_size >= 256, got {model.vocab_size}.")
    tokens = {s: load_tokens(dataset, s, data_dir=data_dir) for s in SPLITS}
    for split, t in tokens.items():
        if t.size <= model.max_len + 1:
            raise ValueError(f"{dataset!r} {split} has {t.size} tokens, fewer than one window "
                             f"of max_len + 1 = {model.max_len + 1}.")
    return LanguageModelTask(
        train_tokens=to_device(tokens["train"]), test_tokens=to_device(tokens["test"]),
        init_scale=jnp.asarray(init_scale, jnp.float32), model=model, dataset=dataset,
        batch_size=batch_size, horizon=horizon, eval_batches=eval_batches)
