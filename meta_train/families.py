"""Task families by name, for recipes: `tasks.family: quadratic` etc. A plain dict of factories.

Each factory takes the recipe's `tasks.kwargs` and returns a `tasks.base.TaskFamily`.
`mixture` takes `members`, a list of {family, kwargs, weight} (weight 1 when left out), e.g.

    tasks:
      family: mixture
      kwargs:
        members:
          - {family: mlp, weight: 3, kwargs: {widths: [32, 64]}}
          - {family: cnn, weight: 1}
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from tasks.quadratic import QuadraticFamily


def _from_tasks_package(name: str) -> Callable[..., Any]:
    def factory(**kwargs):
        import tasks

        family = getattr(tasks, name, None)
        if family is None:
            raise ValueError(
                f"task family {name!r} is not exported by the `tasks` package yet; "
                "use tasks.family=quadratic or update the `tasks` package."
            )
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
        if dataclasses.is_dataclass(family) and not isinstance(family, type):
            return dataclasses.replace(family, **kwargs) if kwargs else family
        if callable(family):
            return family(**kwargs)
        if kwargs:
            raise ValueError(f"task family {name!r} is an instance; it takes no kwargs ({kwargs}).")
        return family

    return factory


def _mixture(members=None, **extra):
    if extra:
        raise ValueError(f"tasks.kwargs for family 'mixture' take only `members`; got {sorted(extra)}.")
    if not members:
        raise ValueError("tasks.kwargs.members is empty: a mixture needs a list of "
                         "{family: NAME, kwargs: {...}, weight: W} entries.")
    families, weights = [], []
    for i, entry in enumerate(members):
        entry = dict(entry)
        unknown = sorted(set(entry) - {"family", "kwargs", "weight"})
        if "family" not in entry or unknown:
            raise ValueError(f"tasks.kwargs.members[{i}]={entry!r}: expected keys family "
                             f"(required), kwargs and weight; unknown {unknown}.")
        if entry["family"] == "mixture":
            raise ValueError(f"tasks.kwargs.members[{i}] is a mixture; nest families one level only.")
        families.append(make_family(entry["family"], dict(entry.get("kwargs") or {})))
        weights.append(float(entry.get("weight", 1.0)))
    from tasks.families import MixtureFamily

    return MixtureFamily(members=tuple(families), weights=tuple(weights))


TASK_FAMILIES: dict[str, Callable[..., Any]] = {
    "quadratic": QuadraticFamily,
    "meta_train_small": _from_tasks_package("meta_train_small"),
    "mlp": _from_tasks_package("MLPFamily"),
    "cnn": _from_tasks_package("CNNFamily"),
    "lm": _from_tasks_package("LanguageModelFamily"),
    "autoencoder": _from_tasks_package("AutoencoderFamily"),
    "mixture": _mixture,
}


def leaf_families(family) -> tuple[Any, ...]:
    """The families that draw tasks: a mixture's members, or the family itself."""
    return tuple(getattr(family, "members", (family,)))


def make_family(name: str, kwargs: dict[str, Any]):
    if name not in TASK_FAMILIES:
        raise ValueError(f"Unknown task family {name!r}; expected one of {sorted(TASK_FAMILIES)}.")
    return TASK_FAMILIES[name](**dict(kwargs))


def make_architecture(name: str, kwargs: dict[str, Any]):
    """`learned_opt.ARCHITECTURES[name]` with `kwargs` replacing its fields."""
    import learned_opt

    registry = learned_opt.ARCHITECTURES
    if name not in registry:
        raise ValueError(f"Unknown architecture {name!r}; expected one of {sorted(registry)}.")
    arch = registry[name]
    if isinstance(arch, type):
        return arch(**dict(kwargs))
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(kwargs).items()}
    return dataclasses.replace(arch, **kwargs) if kwargs else arch
