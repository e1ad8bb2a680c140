"""`lopt export`: a run's theta at any checkpoint step as a `learned_opt` .safetensors file.

A run writes `theta.safetensors` only when it finishes; this reads theta alone from a
checkpoint of a running, stopped or killed run (the workdir's `config.yaml` names the
architecture), so intermediate optimizers can be evaluated or shipped without resuming.
"""

from __future__ import annotations

import os
from pathlib import Path

from meta_train import families, recipe
from meta_train.checkpoint import Checkpointer
from meta_train.config import load_config, to_dict


def export_checkpoint(workdir: str, *, step: int | None = None, out: str | None = None) -> Path:
    """Writes theta of checkpoint `step` (default: the latest) to `out` and returns its path.

    Default `out`: <workdir>/theta_step<step>.safetensors.
    """
    import learned_opt

    config_path = os.path.join(workdir, "config.yaml")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not (os.path.isfile(config_path) and os.path.isdir(ckpt_dir)):
        raise ValueError(
            f"{workdir!r} is not a meta-training workdir: expected config.yaml and checkpoints/ in "
            "it (the --workdir of `lopt meta-train`)."
        )
    config = load_config(config_path)
    arch = families.make_architecture(config.optimizer.architecture, config.optimizer.kwargs)
    ckpt = Checkpointer(ckpt_dir)
    try:
        steps = ckpt.all_steps()
        if not steps:
            raise ValueError(f"{ckpt_dir!r} holds no checkpoint yet.")
        if step is None:
            step = max(steps)
        if step not in steps:
            raise ValueError(f"no checkpoint at step {step} in {ckpt_dir!r}; it holds steps {steps}.")
        template = recipe.initial_theta(config, arch)  # small: theta of a per-parameter MLP
        theta = ckpt.restore_part(step, "learner/theta", template)
    finally:
        ckpt.close()
    out = out or os.path.join(workdir, f"theta_step{step}.safetensors")
    metadata = {"recipe": to_dict(config), "meta_train_step": int(step),
                "exported_from": os.path.abspath(workdir)}
    return learned_opt.save(out, arch, theta, metadata=metadata)
