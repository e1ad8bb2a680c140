"""Wrap a learned optimizer with a fixed theta as an optax transform."""

from __future__ import annotations

from typing import Any

import optax


def to_optax(
    arch: Any, theta: Any, *, roles: Any = None, num_steps: int | None = None
) -> optax.GradientTransformationExtraArgs:
    """An optax transform applying `arch` with meta-parameters `theta`.

    `update(grads, state, params, *, loss=None, **extra_args)`: params are required (they are an
    input feature); `loss` is forwarded to architectures that read it, other extra args (from
    `optax.chain`) are ignored. theta is closed over, never stored in the state, so the state holds
    only per-parameter accumulators (their dtype is `arch.accumulator_dtype`, f32 by default, for
    f32 and bf16 params alike) and updates come back in each parameter's dtype.

    roles: optional mu-P roles, a pytree prefix of params (see `learned_opt.mup`).
    num_steps: the length of training (VeLO's convention). Architectures with a learned
    schedule need it and say so when it is missing; the others ignore it.
    """
    if num_steps is not None and (isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1):
        raise ValueError(f"num_steps={num_steps!r}: expected a positive int, the number of training steps.")

    def init_fn(params):
        return arch.init_state(params)

    def update_fn(updates, state, params=None, *, loss=None, **extra_args):
        del extra_args
        return arch.update(theta, updates, state, params, loss=loss, roles=roles, num_steps=num_steps)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
