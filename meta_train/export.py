"""`lopt export`: a run's theta at any checkpoint step as a `learned_opt` .safetensors file.

A run writes `theta.safetensors` only when it finishes; this reads theta alone from a
checkpoint of a running, stopped or killed run (the workdir's `config.yaml` names the
architecture), so intermediate optimizers can be evaluated or shipped without resuming.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from meta_train import families, recipe
from meta_train.checkpoint import Checkpointer
from meta_train.config import load_config, to_dict


def export_checkpoint(workdir: str, *, step: int | None = None, out: str | None = None,
                      standing: str | None = None) -> Path:
    """Writes theta of checkpoint `step` (default: the latest) to `out` and returns its path.

    Default `out`: <workdir>/theta_step<step>.safetensors. `standing`: the measured result the
    optimizer ships with (recorded in its provenance).
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
        template = recipe.theta_template(config, arch)
        theta = ckpt.restore_part(step, "learner/theta", template)
    finally:
        ckpt.close()
    out = out or os.path.join(workdir, f"theta_step{step}.safetensors")
    metadata = {"recipe": to_dict(config), "meta_train_step": int(step),
                "exported_from": os.path.abspath(workdir), "git_commit": git_commit(),
                "compute": compute_summary(workdir, step)}
    if standing is not None:
        metadata["standing"] = standing
    return learned_opt.save(out, arch, theta, metadata=metadata)


def git_commit() -> str | None:
    """The commit of the code that runs (with '+dirty' for uncommitted changes); None outside git."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def compute_summary(workdir: str, up_to_step: int) -> dict:
    """Meta-training compute up to `up_to_step`, from the workdir's metrics.jsonl: inner steps
    (every branch of every member) and wall seconds of the logged windows, on os.cpu_count() CPUs."""
    from meta_train import metrics as metrics_lib

    path = os.path.join(workdir, "metrics.jsonl")
    rows = metrics_lib.read_jsonl(path) if os.path.isfile(path) else []
    inner, wall, last = 0.0, 0.0, 0
    for row in rows:
        if row.get("step", 0) > up_to_step:
            break
        span = row["step"] - last
        last = row["step"]
        steps = float(row.get("unroll/inner_steps", 0.0)) * span
        rate = float(row.get("perf/inner_steps_per_s", 0.0) or 0.0)
        inner += steps
        wall += steps / rate if rate > 0 else 0.0
    return {"outer_steps": int(up_to_step), "inner_steps": int(inner), "wall_s": round(wall, 1),
            "cpus": os.cpu_count()}
