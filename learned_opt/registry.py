"""Architectures by name: classes (for checkpoints) and ready-made configurations (for tests, CLIs).

Plain dicts, so tests parametrize over them and a user can see every choice at a glance.
"""

from __future__ import annotations

from learned_opt.mlp_lopt import MLPLOpt
from learned_opt.velo import VeLOLOpt

# Class name recorded in a checkpoint -> class. A checkpoint's config is passed to this class.
ARCHITECTURE_CLASSES: dict[str, type] = {
    MLPLOpt.name: MLPLOpt,
    VeLOLOpt.name: VeLOLOpt,
}

# Named configurations. The contract tests run over every entry.
ARCHITECTURES: dict[str, object] = {
    # The muLO / AdafacMLP-sized network: 39 -> 32 -> 32 -> 2, native step (the kernel's blocked
    # wide layers: 2.2x the stacked-matmul reference in meta-training, docs/design_notes.md).
    "mlp": MLPLOpt(impl="native"),
    # muLO: the same network with mu-P scaled updates, transfers across widths.
    "mulo": MLPLOpt(mup=True, impl="native"),
    # The default of the recipes (meta_train.config) and benchmarks: 33 -> 4 -> 2 with three
    # momenta, native step, bf16 momenta and f32 second moment (10 bytes of state per parameter;
    # AdamW: 8).
    # Picked by benchmarks/lopt_size_tradeoff.sh: hidden 4/8/16/32 and 3/5 momenta meta-trained
    # the same way evaluate within seed noise of each other (five momenta slightly better), and
    # this one's full training step is ~1.5x AdamW's on a 2M-parameter MLP (fused: ~2x;
    # benchmarks/step_time.py, docs/design_notes.md).
    "mlp_small": MLPLOpt(
        hidden_sizes=(4,), momentum_decays=(0.5, 0.9, 0.99), impl="native", accumulator_dtype="bfloat16"
    ),
    # Reads the loss as well.
    "mlp_loss": MLPLOpt(hidden_sizes=(4, 4), loss_features=True, impl="fused"),
    # VeLO-style (learned_opt.velo): a per-tensor LSTM controller aware of the horizon and the loss
    # mixes 4 per-parameter MLPs of mlp_small's size; steps relative to each tensor's RMS.
    # Needs num_steps and the loss.
    "velo": VeLOLOpt(),
    # The same controller with muLO's scaling: a fixed base step times mu-P's per-tensor factor.
    "mu_velo": VeLOLOpt(param_scale=False, mup=True, step_mult=1e-3),
}


def get_architecture(name: str):
    """The configured architecture `name`; a clear error lists the valid names."""
    if name not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture {name!r}; available: {sorted(ARCHITECTURES)}.")
    return ARCHITECTURES[name]
