"""Every gradient estimator, by name. All share one interface, so callers never branch:

    estimator = ESTIMATORS[name](arch=arch, unroll=unroll_config, num_pairs=8, sigma=0.01)
    states = estimator.init_states(theta, pool, key)
    meta_grad, states, metrics = estimator.estimate(theta, pool, states, key)

`states` is opaque to the caller (a pytree it stores, donates and checkpoints); `metrics` is a
flat dict of scalars with `/`-separated keys.
"""

from __future__ import annotations

from meta_train.es import AntitheticES
from meta_train.pes import PES
from meta_train.tbptt import TruncatedBackprop

ESTIMATORS: dict[str, type] = {
    "pes": PES,
    "tbptt": TruncatedBackprop,
    "es": AntitheticES,
}


def make_estimator(name: str, **kwargs):
    if name not in ESTIMATORS:
        raise ValueError(f"Unknown estimator {name!r}; expected one of {sorted(ESTIMATORS)}.")
    return ESTIMATORS[name](**kwargs)
