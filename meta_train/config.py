"""Typed meta-training recipes: frozen dataclasses, loaded from YAML with omegaconf.

The YAML is merged onto the dataclass schema, so an unknown key or a value of the wrong type
fails at load time with the full key path and the expected type; the result is a plain frozen
`MetaTrainConfig` (no omegaconf objects leak past this module). Overrides use dotted paths,
`unroll.truncation_length=5`, exactly as on the `lopt meta-train` command line.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Mapping, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf import errors as oc_errors

from meta_train import population_devices
from meta_train.estimators.antithetic import DIFFERENCES
from meta_train.learner import OuterConfig
from meta_train.unroll import UnrollConfig


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """seed: everything (task pool, population, perturbations) derives from it.
    num_steps: outer (meta) steps. checkpoint_every: outer steps between checkpoints (and one
    at exit). log_every: outer steps between metric rows.
    compilation_cache: a directory for JAX's persistent compilation cache in `lopt meta-train`
    and its Ray workers (meta_train.compile_cache): shapes compiled before (task re-draws,
    resumes, restarted actors) are read back instead of compiled. None: no cache.
    population_devices: each worker's pairs split over this many local devices
    (meta_train.population_devices): 0 one per core on CPU (`lopt meta-train` asks JAX for them
    at start) or every local accelerator; 1 no split. The largest count that divides
    estimator.num_pairs is used."""

    seed: int = 0
    num_steps: int = 100
    checkpoint_every: int = 50
    log_every: int = 1
    progress: bool = True
    compilation_cache: Optional[str] = None
    population_devices: int = 0

    def __post_init__(self):
        for name in ("num_steps", "checkpoint_every", "log_every"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"run.{name}={value}; expected >= 1 (outer steps).")
        population_devices.check_count(self.population_devices)


@dataclasses.dataclass(frozen=True)
class TasksConfig:
    """family: a key of `meta_train.families.TASK_FAMILIES`; kwargs go to its constructor.
    pool_size: tasks sampled at once and stacked; members draw from them at every reset.
    redraw_every: 0 keeps each worker's pool for the whole run (a family with static choices,
        such as an MLP's width, then gives the run only one configuration per worker); N > 0
        draws every worker a new pool every N outer steps (round r = step // N), its members
        starting fresh episodes. Each new shape costs one compilation per worker."""

    family: str = "quadratic"
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    pool_size: int = 16
    redraw_every: int = 0

    def __post_init__(self):
        if self.pool_size < 1:
            raise ValueError(f"tasks.pool_size={self.pool_size}; expected >= 1 (tasks per worker pool).")
        if isinstance(self.redraw_every, bool) or not isinstance(self.redraw_every, int) or self.redraw_every < 0:
            raise ValueError(
                f"tasks.redraw_every={self.redraw_every!r}; expected an int >= 0 (0: each worker keeps "
                "its task pool; N: a new pool every N outer steps)."
            )

    def round_at(self, step: int) -> int:
        """The task round of outer step `step` (always 0 without re-draws)."""
        return step // self.redraw_every if self.redraw_every else 0


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """architecture: a key of `learned_opt.ARCHITECTURES`; kwargs override its fields.
    init_theta: warm start from this exported theta (`lopt export`, `theta.safetensors`, a
        pretrained name): its arrays replace the initial theta's, and parts it lacks (say, a
        schedule added since) keep their initialization. None: start from `init_theta(key)`.
    trainable: top-level keys of theta that meta-training changes (e.g. [schedule, log_step]:
        Celo's second phase, the per-parameter rule frozen); the others are neither perturbed
        nor updated. Empty: all of theta."""

    architecture: str = "mlp_small"
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    init_theta: Optional[str] = None
    trainable: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class EstimatorConfig:
    """name: a key of `meta_train.estimators.ESTIMATORS`. num_pairs: antithetic pairs (members
    for tbptt) per worker. sigma: perturbation std (ignored by tbptt). num_workers: workers,
    each with its own share of the population (`distributed.num_workers` overrides it).
    difference: "value" weighs each antithetic pair by its loss difference L+ - L- (unbiased);
    "sign" by its sign alone (pes and es; `meta_train.estimators.antithetic`)."""

    name: str = "pes"
    num_pairs: int = 8
    sigma: float = 0.01
    num_workers: int = 1
    difference: str = "value"

    def __post_init__(self):
        if self.num_pairs < 1:
            raise ValueError(f"estimator.num_pairs={self.num_pairs}; expected >= 1.")
        if self.num_workers < 1:
            raise ValueError(f"estimator.num_workers={self.num_workers}; expected >= 1.")
        if self.difference not in DIFFERENCES:
            raise ValueError(f"estimator.difference={self.difference!r}; expected 'value' (L+ - L-) "
                             "or 'sign' (only its sign).")
        if self.difference == "sign" and self.name == "tbptt":
            raise ValueError("estimator.difference='sign' needs an antithetic estimator (pes or es); "
                             "tbptt has no loss difference.")
        if not (math.isfinite(self.sigma) and self.sigma > 0) and self.name != "tbptt":
            raise ValueError(
                f"estimator.sigma={self.sigma}; expected a finite value > 0 (the perturbation std; "
                "with 0 the antithetic branches are identical and nothing is learned)."
            )


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """After meta-training: train `num_tasks` fresh tasks for `num_steps` with the learned
    optimizer and with AdamW at `adamw_learning_rate`; report and plot both."""

    enabled: bool = False
    num_tasks: int = 4
    num_steps: int = 200
    adamw_learning_rate: float = 1e-3
    seed: int = 1234


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """Where the workers run. Without `--ray` they are in-process (the same count, the same
    shares of the population, the same sync/async schedule); with `--ray` each is a Ray actor.

    num_workers: workers, each with its own task pool and share of the population; null means
        `estimator.num_workers` (so older recipes keep their meaning).
    mode: "sync" waits for every worker and averages their meta-gradients (one outer step per
        round); "async" applies each meta-gradient as it arrives (one outer step per result).
    max_staleness: async only: a result computed on a theta more than this many versions old is
        dropped (counted in `dist/stale_dropped`).
    num_cpus_per_worker, num_gpus_per_worker: Ray resources reserved per actor (fractions allowed;
        a fractional GPU makes workers share a device, so JAX preallocation is turned off).
    threads_per_worker: XLA/OpenMP intra-op threads per actor (set in its runtime_env before jax
        starts), so workers sharing a host do not oversubscribe it; 0 leaves them unset.
    max_restarts: times Ray restarts a dead actor (-1: forever); a restarted actor rebuilds its
        states from the recipe (fresh unrolls), and its in-flight result is dropped and counted.
    resource_wait_s: seconds to wait, on a cluster this process joined, for nodes that can hold
        every worker (an autoscaler may be adding them) before failing with the resources asked
        and found; a cluster this process started (--ray local) never grows, so it fails at once.
    resources_per_worker: custom Ray resources per actor, e.g. {TPU: 4} for one worker per
        TPU VM host (JAX on a TPU host wants one process owning all its chips).
    env_vars: extra environment variables for every actor (e.g. JAX_COMPILATION_CACHE_DIR, so
        restarted actors load compiled executables instead of compiling again).
    """

    num_workers: Optional[int] = None
    mode: str = "sync"
    max_staleness: int = 1
    num_cpus_per_worker: float = 1.0
    num_gpus_per_worker: float = 0.0
    threads_per_worker: int = 1
    max_restarts: int = 3
    resource_wait_s: float = 60.0
    resources_per_worker: dict[str, float] = dataclasses.field(default_factory=dict)
    env_vars: dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.mode not in ("sync", "async"):
            raise ValueError(f"distributed.mode={self.mode!r}; expected 'sync' or 'async'.")
        if self.num_workers is not None and self.num_workers < 1:
            raise ValueError(
                f"distributed.num_workers={self.num_workers}; expected >= 1 (or null to use "
                "estimator.num_workers)."
            )
        if self.max_staleness < 0:
            raise ValueError(f"distributed.max_staleness={self.max_staleness}; expected >= 0.")
        if self.num_cpus_per_worker < 0 or self.num_gpus_per_worker < 0:
            raise ValueError(
                f"distributed.num_cpus_per_worker={self.num_cpus_per_worker}, num_gpus_per_worker="
                f"{self.num_gpus_per_worker}; expected >= 0."
            )
        if self.threads_per_worker < 0:
            raise ValueError(
                f"distributed.threads_per_worker={self.threads_per_worker}; expected >= 0 (0: unset)."
            )
        if self.max_restarts < -1:
            raise ValueError(f"distributed.max_restarts={self.max_restarts}; expected >= -1 (-1: forever).")
        if not self.resource_wait_s >= 0:
            raise ValueError(f"distributed.resource_wait_s={self.resource_wait_s}; expected >= 0 (seconds).")


@dataclasses.dataclass(frozen=True)
class MetaTrainConfig:
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    tasks: TasksConfig = dataclasses.field(default_factory=TasksConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    estimator: EstimatorConfig = dataclasses.field(default_factory=EstimatorConfig)
    unroll: UnrollConfig = dataclasses.field(default_factory=UnrollConfig)
    outer: OuterConfig = dataclasses.field(default_factory=OuterConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)


class ConfigError(ValueError):
    """A recipe that does not fit the schema; the message names the key path and the fix."""


class ClusterError(ValueError):
    """The Ray cluster cannot be reached, or cannot hold the recipe's workers (`distributed`)."""


def _schema():
    schema = OmegaConf.structured(MetaTrainConfig)
    OmegaConf.set_readonly(schema, False)  # frozen dataclass -> read-only node; we merge into it
    return schema


def describe_yaml_error(path: str, err: Exception) -> str:
    """One line for a YAML parse error: the file, the line and column, and the parser's message."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
    problem = getattr(err, "problem", None) or (str(err).splitlines() or [type(err).__name__])[0]
    context, context_mark = getattr(err, "context", None), getattr(err, "context_mark", None)
    if context and context_mark is not None and context_mark is not mark:
        problem += f" ({context} from line {context_mark.line + 1})"
    elif context:
        problem += f" ({context})"
    return f"{where}: invalid YAML: {problem}; fix the YAML there."


def _load_yaml(path: str):
    import yaml

    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as err:
        raise ConfigError(describe_yaml_error(path, err)) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"recipe {path!r} cannot be read ({err}); pass a UTF-8 YAML file.") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"recipe {path!r} holds a list, expected a mapping of groups (run:, "
                          "tasks:, ...); see configs/smoke.yaml.")
    return loaded


def _explain(err: Exception, source: str) -> ConfigError:
    key = getattr(err, "full_key", None) or getattr(err, "key", None) or "?"
    if isinstance(err, oc_errors.ConfigKeyError):
        return ConfigError(
            f"{source}: unknown key '{key}'. Valid keys are the fields of MetaTrainConfig "
            "(meta_train/config.py); check the spelling and nesting."
        )
    expected = _expected_type(str(key))
    return ConfigError(
        f"{source}: bad value for '{key}': expected {expected}. "
        f"({str(getattr(err, 'msg', err)).splitlines()[0]})"
    )


def _expected_type(path: str) -> str:
    node: Any = MetaTrainConfig
    field_type: Any = MetaTrainConfig
    for part in path.split("."):
        fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
        if part not in fields:
            return "a value of the schema's type"
        field_type = fields[part].type
        node = field_type if dataclasses.is_dataclass(field_type) else None
        if isinstance(field_type, str):  # postponed annotations
            node = globals().get(field_type) or _SUBCONFIGS.get(field_type)
    return str(getattr(field_type, "__name__", field_type))


def num_workers(config: MetaTrainConfig) -> int:
    """The worker count: `distributed.num_workers`, or `estimator.num_workers` when unset."""
    n = config.distributed.num_workers
    n = config.estimator.num_workers if n is None else n
    if n < 1:
        raise ValueError(f"num_workers={n}; expected >= 1 (distributed.num_workers or estimator.num_workers).")
    return n


_SUBCONFIGS = {"UnrollConfig": UnrollConfig, "OuterConfig": OuterConfig}


def load_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> MetaTrainConfig:
    """The recipe at `path` (YAML) with dotted `key=value` overrides, validated and typed."""
    if path is not None and not os.path.isfile(path):
        raise ConfigError(f"recipe {path!r} does not exist; pass a YAML file such as configs/smoke.yaml.")
    merged = _schema()
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"override {bad[0]!r} is not of the form key.sub=value.")
    source = path
    try:
        if path is not None:
            merged = OmegaConf.merge(merged, _load_yaml(path))
        source = "command-line override"
        if overrides:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        source = path or "config"
        config = OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except (oc_errors.ConfigKeyError, oc_errors.ValidationError) as err:
        raise _explain(err, source) from None
    except (ValueError, TypeError) as err:  # a dataclass __post_init__ rejected a value
        raise ConfigError(f"{source}: {err}") from None
    _check_names(config, source)
    return config


def _check_names(config: MetaTrainConfig, source: str) -> None:
    """Registry names and their kwargs, checked when the recipe loads (before anything compiles)."""
    from meta_train import families
    from meta_train.estimators import ESTIMATORS

    try:
        if config.estimator.name not in ESTIMATORS:
            raise ValueError(f"estimator.name={config.estimator.name!r}; expected one of {sorted(ESTIMATORS)}.")
        families.make_architecture(config.optimizer.architecture, config.optimizer.kwargs)
        families.make_family(config.tasks.family, config.tasks.kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{source}: {err}") from None


def to_dict(config: MetaTrainConfig) -> dict[str, Any]:
    """Plain nested dict (for checkpoint metadata and the workdir's config.yaml)."""
    return dataclasses.asdict(config)


def to_yaml(config: MetaTrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(to_dict(config)))


# Keys (or groups) a resumed run may change without --allow-change: they decide how long the run
# goes, what is logged, saved, shown or evaluated, and where workers run (resources, threads,
# restarts), not theta's trajectory (a resume's theta comes from its checkpoint, so the warm-start
# file does not count either). A new run.num_steps does stretch the outer learning-rate
# schedule from the resumed step on.
RESUME_FREE_KEYS = ("run.num_steps", "run.checkpoint_every", "run.log_every", "run.progress", "run.compilation_cache",
                    "eval", "distributed", "optimizer.init_theta")
# ...except these, which decide which meta-gradients are computed and how they are combined.
RESUME_PINNED_KEYS = ("distributed.num_workers", "distributed.mode", "distributed.max_staleness")


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


ABSENT = _Absent()  # a key one of two configs lacks


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; an empty mapping is a leaf of its own."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _covers(name: str, key: str) -> bool:
    return key == name or key.startswith(name + ".")


def config_changes(old: Mapping[str, Any], new: MetaTrainConfig) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) of every dotted key that differs between a run's saved
    config.yaml (as a dict) and `new`. Keys the old file lacks take the schema's defaults, so
    fields added since the run was written do not count as changes while they keep them."""
    plain = lambda tree: OmegaConf.to_container(OmegaConf.create(tree))
    before = flatten(plain(OmegaConf.merge(OmegaConf.create(to_dict(MetaTrainConfig())),
                                           OmegaConf.create(dict(old)))))
    after = flatten(plain(to_dict(new)))
    keys = list(after) + [k for k in before if k not in after]
    return [(k, before.get(k, ABSENT), after.get(k, ABSENT)) for k in keys
            if before.get(k, ABSENT) != after.get(k, ABSENT)]


def refused_changes(changes: Sequence[tuple[str, Any, Any]], allowed: Sequence[str]) -> list:
    """The changes that are not free to make (RESUME_FREE_KEYS less RESUME_PINNED_KEYS) and
    that `allowed` does not name (a key or its group)."""
    covered = lambda names, key: any(_covers(n, key) for n in names)
    free = lambda key: covered(RESUME_FREE_KEYS, key) and not covered(RESUME_PINNED_KEYS, key)
    return [c for c in changes if not free(c[0]) and not covered(allowed, c[0])]


def unknown_keys(names: Sequence[str], keys: Sequence[str]) -> list[str]:
    """The names that are neither one of the dotted `keys` nor a group of them (e.g. `outer`)."""
    return [n for n in names if not any(_covers(n, k) for k in keys)]


def describe_changes(changes: Sequence[tuple[str, Any, Any]]) -> str:
    """'outer.learning_rate (0.001 -> 0.01), run.seed (0 -> 1)'."""
    return ", ".join(f"{k} ({old!r} -> {new!r})" for k, old, new in changes)
