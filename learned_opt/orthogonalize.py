"""Newton-Schulz orthogonalization of a matrix update (Muon's; Celo2 applies it to its direction).

An update U = A S B^T is replaced by ~A B^T: every singular value moved toward 1, so no direction
of a weight matrix is stepped along far more than the others. The quintic iteration and its
coefficients are Keller Jordan's (Muon): they push singular values into roughly [0.7, 1.2] in 5
steps without ever forming an SVD, with matmuls only, so it runs on CPU, GPU and TPU alike.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(m_RxC: jax.Array, steps: int = 5) -> jax.Array:
    """~U V^T of m = U S V^T (singular values near 1), by `steps` quintic Newton-Schulz
    iterations on the Frobenius-normalized matrix. Works on the smaller Gram side."""
    a, b, c = NS_COEFFS
    tall = m_RxC.shape[0] > m_RxC.shape[1]
    x = m_RxC.T if tall else m_RxC
    x = x / (jnp.linalg.norm(x) + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def orthogonalize_like(u: jax.Array, steps: int = 5) -> jax.Array:
    """u's orthogonalized direction at u's own RMS, so a learned step size keeps its meaning. A
    tensor of rank > 2 (a conv kernel, ... x in x out) is treated as the matrix (fan in, out)."""
    if u.ndim < 2:
        raise ValueError(f"orthogonalize_like needs a matrix or a kernel; got shape {u.shape}.")
    m = jnp.reshape(u.astype(jnp.float32), (-1, u.shape[-1]))
    o = newton_schulz(m, steps)
    rms = lambda x: jnp.sqrt(jnp.mean(jnp.square(x)) + 1e-30)
    return jnp.reshape(o * (rms(m) / rms(o)), u.shape).astype(u.dtype)
