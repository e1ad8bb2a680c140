"""Gradient estimators: a truncation's meta-gradient, by name. All share one interface, so the
workers and the learner never branch on which one runs:

    estimator = ESTIMATORS[name](arch=arch, unroll=unroll_config, num_pairs=8, sigma=0.01)
    states = estimator.init_states(theta, pool, key)
    meta_grad, states, metrics = estimator.estimate(theta, pool, states, key)

`states` is opaque to the caller (a pytree it stores, donates and checkpoints); `metrics` is a
flat dict of scalars with `/`-separated keys.

- antithetic: PES (the default) and truncated ES, and the +/- pair core they share;
- tbptt: truncated backpropagation through the K inner steps.
Each runs its population through `meta_train.unroll` and averages over the valid pairs there.
"""

from __future__ import annotations

from meta_train.estimators.antithetic import PES, AntitheticES
from meta_train.estimators.tbptt import TruncatedBackprop

ESTIMATORS: dict[str, type] = {
    "pes": PES,
    "tbptt": TruncatedBackprop,
    "es": AntitheticES,
}


def make_estimator(name: str, **kwargs):
    if name not in ESTIMATORS:
        raise ValueError(f"Unknown estimator {name!r}; expected one of {sorted(ESTIMATORS)}.")
    return ESTIMATORS[name](**kwargs)
