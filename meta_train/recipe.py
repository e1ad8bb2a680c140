"""What a recipe builds, in one place, so the driver and every Ray actor build the same things.

Everything is deterministic in `config.run.seed`: worker `i` gets the same task pool and the
same initial unroll states whether it lives in the driver's process or in an actor on another
host, which is what makes a sync Ray run equal an in-process run, and what lets a restarted
actor rebuild its share of the population without asking the driver.

Key derivation from `base = PRNGKey(run.seed)`: fold_in(base, 0) -> task pools (then worker i,
then the round r > 0 of `tasks.redraw_every`), 1 -> initial theta, 2 -> unroll states (then
worker i, then the round r > 0), 3 -> the learner's rng.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from meta_train import families, fast_rng, population_devices, robust
from meta_train.config import MetaTrainConfig
from meta_train.distribution.dispatch import LocalWorker
from meta_train.estimators import make_estimator
from meta_train.unroll import sample_task_pool


@dataclasses.dataclass(frozen=True)
class Components:
    """The stateless parts of a run: shared by all workers of a process."""

    arch: Any
    family: Any
    estimator: Any


def base_key(config: MetaTrainConfig) -> jax.Array:
    return jax.random.PRNGKey(config.run.seed)


def learner_key(config: MetaTrainConfig) -> jax.Array:
    """The learner's rng (the workers' keys derive from it, per theta version)."""
    return jax.random.fold_in(base_key(config), 3)


def make_components(config: MetaTrainConfig, arch: Any = None) -> Components:
    """`arch` overrides config.optimizer (tests, notebooks); it must be picklable for Ray."""
    if arch is None:
        arch = families.make_architecture(config.optimizer.architecture, config.optimizer.kwargs)
    family = families.make_family(config.tasks.family, config.tasks.kwargs)
    est = config.estimator
    estimator = make_estimator(
        est.name, arch=arch, unroll=config.unroll, num_pairs=est.num_pairs, sigma=est.sigma,
        trainable=tuple(config.optimizer.trainable), difference=est.difference,
    )
    return Components(arch, family, estimator)


def theta_template(config: MetaTrainConfig, arch: Any) -> Any:
    """`arch.init_theta` alone: theta's structure and shapes, which a warm start keeps.

    Workers, resumes and exports need only this; reading `optimizer.init_theta` there would tie
    a run to a file that may not exist on another machine or any more.
    """
    theta = arch.init_theta(jax.random.fold_in(base_key(config), 1))
    robust.check_trainable(theta, config.optimizer.trainable)
    return theta


def initial_theta(config: MetaTrainConfig, arch: Any) -> Any:
    """`arch.init_theta`, with `optimizer.init_theta`'s arrays in place of its own where given."""
    theta = theta_template(config, arch)
    if config.optimizer.init_theta is None:
        return theta
    return warm_start(theta, arch, config.optimizer.init_theta)


def warm_start(theta: Any, arch: Any, source: str) -> Any:
    """theta's top-level parts replaced by those of the exported theta at `source`.

    The source's architecture must give theta the same arrays (same shapes) for every part they
    share; a part the source lacks keeps its initialization, a part only the source has is an
    error (it would be silently dropped).
    """
    import learned_opt

    _, loaded, _ = learned_opt.load_theta(source)
    if not isinstance(theta, dict) or not isinstance(loaded, dict):
        raise ValueError(f"optimizer.init_theta={source!r}: warm starts need dict thetas.")
    extra = sorted(set(loaded) - set(theta))
    if extra:
        raise ValueError(
            f"optimizer.init_theta={source!r} has parts {extra} that {type(arch).__name__} with "
            "this recipe's kwargs does not: give the recipe the architecture the theta was trained with."
        )
    for name, part in loaded.items():
        want = jax.tree.map(lambda x: (x.shape, str(x.dtype)), theta[name])
        got = jax.tree.map(lambda x: (x.shape, str(x.dtype)), part)
        if want != got:
            raise ValueError(
                f"optimizer.init_theta={source!r}: theta[{name!r}] has shapes {got}, this recipe's "
                f"architecture expects {want}; give the recipe the architecture the theta was trained with."
            )
    return {**theta, **loaded}


def make_task_pool(config: MetaTrainConfig, parts: Components, index: int, round: int = 0) -> Any:
    """Worker `index`'s own pool in task round `round` (its own task configuration for
    families with static choices; a new one each round with `tasks.redraw_every`)."""
    key = _round_key(jax.random.fold_in(jax.random.fold_in(base_key(config), 0), index), round)
    return sample_task_pool(parts.family, key, config.tasks.pool_size)


def _round_key(key: jax.Array, round: int) -> jax.Array:
    """Round 0 keeps the key (runs without re-draws are unchanged); round r > 0 folds r in."""
    return jax.random.fold_in(key, round) if round else key


def make_worker(config: MetaTrainConfig, parts: Components, index: int, task_pool: Any = None) -> LocalWorker:
    """Worker `index` with fresh unroll states, identical wherever it is built."""
    fast_rng.use_unrolled_threefry_on_cpu()
    if task_pool is None:
        task_pool = make_task_pool(config, parts, index)
    theta = theta_template(config, parts.arch)  # replaced by the learner's theta each step
    key = jax.random.fold_in(jax.random.fold_in(base_key(config), 2), index)
    mesh = population_devices.population_mesh(parts.estimator.num_pairs, config.run.population_devices)
    return LocalWorker(parts.estimator, task_pool, theta, key, redraw_every=config.tasks.redraw_every,
                       pool_for_round=lambda r: make_task_pool(config, parts, index, r), mesh=mesh)
