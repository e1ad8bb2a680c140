"""mu-P scaling of learned-optimizer updates (muLO).

Under mu-P with an Adam-like, per-parameter normalized update, hidden weight matrices need
updates that shrink as 1/fan_in, while vectors (biases, norm scales), input-like weights (whose
fan-in does not grow with width) and the readout keep a width-independent step. That is the
convention of the `mup` package (Tensor Programs V; used by muLO, Therien et al. 2024), where the
readout's forward pass carries the 1/width output multiplier, so its update must not be scaled
again; `tasks/` models follow it. The learned optimizer multiplies each tensor's update by

    scale = base_fan_in / width    for the role "hidden", width = shape[-2] (input features)
    scale = 1                      for "input", "output" (readout), "vector" and "embedding"

so that at width == base_fan_in (the width it was meta-trained at) nothing changes.

Roles are inferred from shapes unless given explicitly:

* ndim <= 1 (biases, norm scales, scalars): "vector".
* ndim >= 2: "hidden". Kernels follow the flax/haiku convention, dense (in, out) and conv
  (H, W, in, out); the width is the input-feature axis shape[-2] (in channels: a conv's spatial
  dims do not grow with width, as in the `mup` package). An input layer, whose width is the data
  dimension, then gets the constant factor base_fan_in / d_in: not 1, but the same at every
  model width, so transfer across widths still holds.
* The readout cannot be told from a hidden layer by shape: give it the role "output" (for a
  model with the mu-P output multiplier). `tasks/` models name their roles
  (`model.param_roles`); meta-training and evaluation pass them in.
* Embedding tables are (vocab, d): shape inference would treat vocab as fan-in. Mark them with the
  role "embedding" (unscaled, as mu-P prescribes for input-like weights). Kernels stored
  (out, in), as in PyTorch, need explicit roles too: inference cannot see the transposition.

Vectors are never scaled, whatever role they are given: a role string covering a whole block
(`{"blocks": "hidden"}`) scales the block's kernels and leaves its biases alone.

Explicit roles are a pytree *prefix* of params whose leaves are role strings, or None to infer
that subtree, e.g. `{"embed": "embedding", "blocks": None, "head": "output"}`.

The same factor serves any Adam-like optimizer: `update_scales` gives it for a whole tree, e.g. as
mu-Adam's per-tensor learning-rate multipliers.
"""

from __future__ import annotations

from typing import Any

import jax

from learned_opt.tree_util import path_str

ROLES = ("input", "hidden", "output", "vector", "embedding")
_SCALED_ROLES = ("hidden",)


def infer_role(shape: tuple[int, ...]) -> str:
    """The role a tensor of this shape gets when none is given."""
    return "vector" if len(shape) <= 1 else "hidden"


def resolve_roles(params: Any, roles: Any = None) -> list[str]:
    """One role per leaf of `params` (flattening order), from an optional prefix tree of roles."""
    leaves_with_path = jax.tree_util.tree_flatten_with_path(params)[0]
    role_leaves = _broadcast_prefix(roles, params)
    out = []
    for (path, leaf), role in zip(leaves_with_path, role_leaves):
        if role is None:
            role = infer_role(tuple(leaf.shape))
        if not isinstance(role, str) or role not in ROLES:
            raise ValueError(
                f"Unknown mu-P role {role!r} for parameter {path_str(path)!r}; expected one of "
                f"{ROLES} or None (infer from shape). See learned_opt.mup for the convention."
            )
        out.append(role)
    return out


def _broadcast_prefix(roles: Any, params: Any) -> list[Any]:
    """Each role leaf repeated once per params leaf in the subtree it covers."""
    is_role = lambda x: x is None or isinstance(x, str)  # noqa: E731
    role_leaves, role_def = jax.tree_util.tree_flatten(roles, is_leaf=is_role)
    try:
        subtrees = role_def.flatten_up_to(params)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(
            "`roles` must be a pytree prefix of params (same dict keys / list lengths) whose leaves "
            f"are role strings {ROLES} or None; it does not match the params structure: {e}"
        ) from None
    return [r for r, sub in zip(role_leaves, subtrees) for _ in jax.tree.leaves(sub)]


def update_scale(shape: tuple[int, ...], role: str, base_fan_in: int) -> float:
    """The static multiplier of one tensor's update (see module docstring)."""
    if role not in _SCALED_ROLES or len(shape) <= 1:
        return 1.0
    return float(base_fan_in) / float(shape[-2])


def update_scales(params: Any, roles: Any = None, *, base_fan_in: int) -> Any:
    """A tree like `params` of every tensor's `update_scale` (roles as in `resolve_roles`)."""
    leaves, treedef = jax.tree.flatten(params)
    scales = [update_scale(tuple(x.shape), role, base_fan_in)
              for x, role in zip(leaves, resolve_roles(params, roles))]
    return jax.tree.unflatten(treedef, scales)
