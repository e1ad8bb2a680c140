"""A small decoder-only (causal) transformer language model, standard or mu-P (see `mup`).

Pre-LayerNorm blocks: causal multi-head self-attention then a 4x GELU MLP, each residual.
Token and learned position embeddings are N(0, 1) (`embed`, `pos_embed`); the unembedding is a
separate mu-P `Readout`. With `num_heads` fixed, head_dim = width / num_heads grows with width,
and mu-P scales attention logits by sqrt(base_head_dim) / head_dim.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from tasks.models.mup import Readout, attention_scale, check_parametrization, param_roles

EMBED_INIT = nn.initializers.normal(stddev=1.0)


class CausalSelfAttention(nn.Module):
    num_heads: int
    parametrization: str
    base_head_dim: int

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        _, T, D = x_BxTxD.shape
        head_dim = D // self.num_heads
        # Plain (in, out) kernels, so fan_in = shape[-2] holds for mu-P learning-rate scaling.
        qkv = nn.Dense(3 * D, name="qkv")(x_BxTxD).reshape(*x_BxTxD.shape[:2], 3,
                                                          self.num_heads, head_dim)
        q_BxTxHxK, k_BxTxHxK, v_BxTxHxK = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        scale = attention_scale(self.parametrization, head_dim, self.base_head_dim)
        logits_BxHxTxT = jnp.einsum("bqhk,bthk->bhqt", q_BxTxHxK, k_BxTxHxK) * scale
        causal_TxT = jnp.tril(jnp.ones((T, T), bool))
        logits_BxHxTxT = jnp.where(causal_TxT, logits_BxHxTxT, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits_BxHxTxT, axis=-1)
        out_BxTxHxK = jnp.einsum("bhqt,bthk->bqhk", weights, v_BxTxHxK)
        return nn.Dense(D, name="out")(out_BxTxHxK.reshape(*out_BxTxHxK.shape[:2], D))


class Block(nn.Module):
    num_heads: int
    parametrization: str
    base_head_dim: int

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        D = x_BxTxD.shape[-1]
        x_BxTxD = x_BxTxD + CausalSelfAttention(
            self.num_heads, self.parametrization, self.base_head_dim, name="attn")(
                nn.LayerNorm(name="ln_attn")(x_BxTxD))
        h = nn.Dense(4 * D, name="mlp_in")(nn.LayerNorm(name="ln_mlp")(x_BxTxD))
        return x_BxTxD + nn.Dense(D, name="mlp_out")(jax.nn.gelu(h))


class TransformerLM(nn.Module):
    vocab_size: int
    width: int
    depth: int
    num_heads: int
    max_len: int
    parametrization: str = "mup"
    base_width: int = 64

    @nn.compact
    def __call__(self, tokens_BxT: jax.Array) -> jax.Array:
        T = tokens_BxT.shape[1]
        x = nn.Embed(self.vocab_size, self.width, embedding_init=EMBED_INIT, name="embed")(
            tokens_BxT)
        pos_TxD = self.param("pos_embed", EMBED_INIT, (self.max_len, self.width))[:T]
        x_BxTxD = x + pos_TxD
        base_head_dim = max(self.base_width // self.num_heads, 1)
        for i in range(self.depth):
            x_BxTxD = Block(self.num_heads, self.parametrization, base_head_dim,
                            name=f"block_{i}")(x_BxTxD)
        x_BxTxD = nn.LayerNorm(name="ln_final")(x_BxTxD)
        return Readout(self.vocab_size, self.parametrization, self.base_width,
                       name="readout")(x_BxTxD)


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Static description of the LM; `max_len` is the training sequence length."""

    width: int
    depth: int
    num_heads: int = 4
    max_len: int = 64
    vocab_size: int = 256
    parametrization: str = "mup"
    base_width: int = 64

    def __post_init__(self):
        if self.width % self.num_heads:
            raise ValueError(f"width={self.width} must be divisible by num_heads="
                             f"{self.num_heads}; pick a width that is a multiple of it.")
        if min(self.width, self.depth, self.max_len, self.vocab_size) < 1:
            raise ValueError(f"TransformerConfig sizes must be >= 1, got {self}.")
        check_parametrization(self.parametrization)

    @property
    def name(self) -> str:
        return (f"transformer_w{self.width}_d{self.depth}_h{self.num_heads}_"
                f"t{self.max_len}_{self.parametrization}")

    def module(self) -> TransformerLM:
        return TransformerLM(**dataclasses.asdict(self))

    def param_roles(self, params):
        """The mu-P role of each tensor, by layer name (`mup.param_roles`)."""
        return param_roles(params)
