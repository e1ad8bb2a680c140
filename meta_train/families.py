"""Task families by name, for recipes: `tasks.family: quadratic` etc. A plain dict of factories.

Each factory takes the recipe's `tasks.kwargs` and returns a `tasks.base.TaskFamily`.
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


TASK_FAMILIES: dict[str, Callable[..., Any]] = {
    "quadratic": QuadraticFamily,
    "meta_train_small": _from_tasks_package("meta_train_small"),
    "mlp": _from_tasks_package("MLPFamily"),
}


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
