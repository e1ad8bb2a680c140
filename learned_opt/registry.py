"""Architectures by name: classes (for checkpoints) and ready-made configurations (for tests, CLIs).

Plain dicts, so tests parametrize over them and a user can see every choice at a glance.
"""

from __future__ import annotations

from learned_opt.mlp_lopt import MLPLOpt

# Class name recorded in a checkpoint -> class. A checkpoint's config is passed to this class.
ARCHITECTURE_CLASSES: dict[str, type] = {
    MLPLOpt.name: MLPLOpt,
}

# Named configurations. The contract tests run over every entry.
ARCHITECTURES: dict[str, object] = {
    # The default: 39 -> 32 -> 32 -> 2, as in muLO's AdafacMLP / small_fc_lopt.
    "mlp": MLPLOpt(),
    # muLO: the same network with mu-P scaled updates, transfers across widths.
    "mulo": MLPLOpt(mup=True),
    # A cheap one: 39 -> 8 -> 2 (about 7x fewer FLOPs per parameter), fused step, bf16 accumulators.
    "mlp_small": MLPLOpt(hidden_sizes=(8,), impl="fused", accumulator_dtype="bfloat16"),
    # Reads the loss as well.
    "mlp_loss": MLPLOpt(hidden_sizes=(4, 4), loss_features=True, impl="fused"),
}


def get_architecture(name: str):
    """The configured architecture `name`; a clear error lists the valid names."""
    if name not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture {name!r}; available: {sorted(ARCHITECTURES)}.")
    return ARCHITECTURES[name]
