"""`--optimizer SPEC`: what an evaluated optimizer is, parsed once at the entry point.

A SPEC is one of:

    adamw | mu-adam | sgd-momentum | lion | adafactor   a baseline, its LR tuned per task over its
                                                        grid (`baselines.BASELINES`)
    sgd-momentum@1e-6                                   a baseline at one fixed LR (no tuning)
    <pretrained name>                                   `learned_opt.list_pretrained()`
    path/to/checkpoint.safetensors                      a learned-optimizer checkpoint

Learned optimizers have no LR: they run once per seed. On tasks whose model is mu-P
(`task.model.parametrization == "mup"`) they get the roles the model names
(`tasks.base.mup_roles`), so the mu-P readout is not scaled twice.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import optax

from meta_train.evaluation.baselines import BASELINES, LRGrid


class OptimizerSpecError(ValueError):
    """A SPEC that names no baseline, pretrained optimizer or readable compatible checkpoint."""


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: a key of compiled programs
class OptimizerSpec:
    """label: the SPEC as given (a key in reports); make(lr, params, task, num_steps) -> optax transform.

    learning_rates: the grid tuned over (one point for fixed-LR baselines and learned optimizers;
    `tuned` False then). kind: "baseline" or "learned".
    """

    label: str
    kind: str
    make: Callable[[Any, Any, Any], optax.GradientTransformationExtraArgs]
    learning_rates: tuple[float, ...]
    tuned: bool


def valid_names() -> str:
    import learned_opt

    return (f"baselines {sorted(BASELINES)} (tuned; NAME@LR for a fixed LR), pretrained "
            f"{learned_opt.list_pretrained()}, or the path of a .safetensors checkpoint")


def mup_roles(task: Any, params: Any):
    """The roles the task's model names for params (`tasks.base.mup_roles`) when the model is
    mu-P, else None (infer from shapes)."""
    model = getattr(task, "model", None)
    if getattr(model, "parametrization", None) != "mup":
        return None
    from tasks.base import mup_roles as task_roles

    return task_roles(task, params)


def _baseline(spec: str, grids: dict[str, LRGrid]) -> OptimizerSpec | None:
    name, at, lr_text = spec.partition("@")
    if name not in BASELINES:
        return None
    baseline = BASELINES[name]
    if not at:
        lrs = tuple(float(v) for v in grids.get(name, baseline.grid).values())
        return OptimizerSpec(spec, "baseline", baseline.make, lrs, tuned=len(lrs) > 1)
    try:
        lr = float(lr_text)
    except ValueError:
        lr = -1.0
    if not lr > 0:
        raise OptimizerSpecError(f"--optimizer {spec!r}: the LR after '@' must be a positive "
                                 f"number, e.g. {name}@1e-3.")
    return OptimizerSpec(spec, "baseline", baseline.make, (lr,), tuned=False)


def _learned(spec: str) -> OptimizerSpec:
    import learned_opt

    try:
        arch, theta, _ = learned_opt.load_theta(spec)
    except FileNotFoundError as err:
        raise OptimizerSpecError(f"--optimizer {spec!r}: {err} Valid: {valid_names()}.") from None
    except ValueError as err:
        if str(err).startswith("Unknown pretrained optimizer"):
            raise OptimizerSpecError(f"Unknown optimizer {spec!r}. Valid: {valid_names()}.") from None
        raise OptimizerSpecError(f"--optimizer {spec!r}: {err}") from None

    return learned_spec(spec, arch, theta)


def learned_spec(label: str, arch: Any, theta: Any) -> OptimizerSpec:
    """The OptimizerSpec of a learned optimizer given as (arch, theta): untuned, mu-P roles from
    the task's model, told the run's length."""
    import learned_opt

    def make(learning_rate, params, task, num_steps):
        del learning_rate
        return learned_opt.to_optax(arch, theta, roles=mup_roles(task, params), num_steps=num_steps)

    return OptimizerSpec(label, "learned", make, (1.0,), tuned=False)


def parse_optimizer(spec: str, grids: dict[str, LRGrid] | None = None) -> OptimizerSpec:
    """A SPEC string -> OptimizerSpec; `grids` overrides baselines' default LR grids by name."""
    grids = grids or {}
    unknown = sorted(set(grids) - set(BASELINES))
    if unknown:
        raise OptimizerSpecError(f"LR grid given for {unknown}, which are not baselines; "
                                 f"baselines: {sorted(BASELINES)}.")
    return _baseline(spec, grids) or _learned(spec)


def parse_lr_grid(text: str) -> tuple[str, LRGrid]:
    """'adamw=1e-4:1e-1:7' -> ("adamw", LRGrid(1e-4, 1e-1, 7))."""
    name, eq, rng = text.partition("=")
    parts = rng.split(":")
    try:
        if not eq or len(parts) != 3:
            raise ValueError("expected NAME=LOW:HIGH:NUM")
        return name, LRGrid(float(parts[0]), float(parts[1]), int(parts[2]))
    except ValueError as err:
        raise OptimizerSpecError(f"--lr-grid {text!r}: {err}; e.g. adamw=1e-4:1e-1:7 "
                                 f"(baselines: {sorted(BASELINES)}).") from None
