"""Hand-designed baseline optimizers, each an optax transform built from a learning rate.

`BASELINES[name]` is a `Baseline`: a factory `make(learning_rate, params, task, num_steps)` and the default
log-spaced learning-rate grid it is tuned over. The factory is called *inside* the traced
training function with `learning_rate` a traced scalar, so one compiled program serves every
point of the grid (vmapped); `params` is only read for shapes and module names (mu-Adam);
`num_steps` is the run's length (schedules and learned optimizers that read the horizon).

    adamw         optax.adamw, weight decay 1e-4
    adamw-cosine  the same with a warmup-cosine schedule: linear warmup over the first 5% of the
                  run to the tuned peak learning rate, cosine decay to 0 at the last step (what
                  a practitioner would pick)
    mu-adam       AdamW with mu-P per-tensor learning-rate multipliers (base_width / fan_in on
                  hidden matrices: `learned_opt.mup.update_scales` with the roles the model names),
                  decoupled weight decay scaled with the same per-tensor learning rate
    sgd-momentum  optax.sgd, momentum 0.9
    lion          optax.lion, weight decay 1e-4
    adafactor     optax.adafactor (factored second moments, parameter-scale relative steps)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
import optax

WEIGHT_DECAY = 1e-4
DEFAULT_BASE_WIDTH = 64  # tasks.models' base width; used when the task does not say


@dataclasses.dataclass(frozen=True)
class LRGrid:
    """`num` learning rates log-spaced from `low` to `high` (inclusive)."""

    low: float
    high: float
    num: int

    def __post_init__(self):
        if not (0 < self.low <= self.high) or self.num < 1:
            raise ValueError(f"LR grid needs 0 < low <= high and num >= 1; got low={self.low}, "
                             f"high={self.high}, num={self.num}.")
        if self.num == 1 and self.low != self.high:
            raise ValueError(f"A one-point LR grid needs low == high; got {self.low}, {self.high}.")

    def values(self) -> np.ndarray:
        return np.geomspace(self.low, self.high, self.num).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Baseline:
    name: str
    make: Callable[[Any, Any, Any], optax.GradientTransformationExtraArgs]
    grid: LRGrid


def scale_by_tree(multipliers: Any) -> optax.GradientTransformation:
    """Multiplies each update leaf by the matching leaf of `multipliers` (a tree like params)."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, m: u * m, updates, multipliers), state

    return optax.GradientTransformation(init_fn, update_fn)


def _base_width(task: Any) -> int:
    return getattr(getattr(task, "model", None), "base_width", DEFAULT_BASE_WIDTH)


def _adamw(learning_rate, params, task, num_steps):
    return optax.adamw(learning_rate, weight_decay=WEIGHT_DECAY)


COSINE_WARMUP_FRACTION = 0.05


def _adamw_cosine(learning_rate, params, task, num_steps):
    # The shape has peak 1 and is scaled by the (traced) tuned LR, which optax's schedule
    # constructors cannot take as their peak.
    shape = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=1.0,
        warmup_steps=max(1, int(COSINE_WARMUP_FRACTION * num_steps)),
        decay_steps=max(2, num_steps),
        end_value=0.0,
    )
    return optax.adamw(lambda count: learning_rate * shape(count), weight_decay=WEIGHT_DECAY)


def _mu_adam(learning_rate, params, task, num_steps):
    from learned_opt.mup import update_scales
    from tasks.base import mup_roles

    multipliers = update_scales(params, mup_roles(task, params), base_fan_in=_base_width(task))
    return optax.chain(
        optax.scale_by_adam(),
        optax.add_decayed_weights(WEIGHT_DECAY),
        scale_by_tree(multipliers),
        optax.scale_by_learning_rate(learning_rate),
    )


def _sgd_momentum(learning_rate, params, task, num_steps):
    return optax.sgd(learning_rate, momentum=0.9)


def _lion(learning_rate, params, task, num_steps):
    return optax.lion(learning_rate, weight_decay=WEIGHT_DECAY)


def _adafactor(learning_rate, params, task, num_steps):
    return optax.adafactor(learning_rate)


BASELINES: dict[str, Baseline] = {
    b.name: b
    for b in (
        Baseline("adamw", _adamw, LRGrid(1e-4, 1e-1, 7)),
        Baseline("adamw-cosine", _adamw_cosine, LRGrid(1e-4, 1e-1, 7)),
        Baseline("mu-adam", _mu_adam, LRGrid(1e-4, 1e-1, 7)),
        Baseline("sgd-momentum", _sgd_momentum, LRGrid(1e-3, 1.0, 7)),
        Baseline("lion", _lion, LRGrid(1e-5, 1e-2, 7)),
        Baseline("adafactor", _adafactor, LRGrid(1e-3, 1.0, 7)),
    )
}
REFERENCE = "adamw"  # every report compares against this baseline, tuned
