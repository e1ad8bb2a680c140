"""`--suite`: a built-in suite name (`tasks.SUITES`) or a YAML file listing tasks.

YAML format (every task a mapping with a `kind`; `name` is optional and must be unique):

    name: my_suite                 # optional; default: the file's stem
    tasks:
      - kind: builtin              # an entry of a built-in suite, by its name
        entry: mlp_mnist1d_w128_d3_h1000
        horizon: 200               # optional overrides: horizon, batch_size
      - kind: mlp                  # mu-P MLP classifier (tasks.models.mlp.MLPConfig)
        dataset: digits            # mnist1d | digits | mnist | fashion_mnist ...
        width: 64
        depth: 2
        horizon: 300               # inner steps
        batch_size: 128            # optional (128); also activation, parametrization
      - kind: cnn                  # dataset, width, depth, horizon, batch_size (128)
        dataset: digits
        width: 16
        depth: 2
        horizon: 300
      - kind: autoencoder          # MLP autoencoder of a dataset's inputs (squared error):
        dataset: mnist1d           # dataset, width, depth, horizon, batch_size (128),
        width: 64                  # code_dim (8)
        depth: 2
        horizon: 300
      - kind: transformer          # byte-level LM: dataset, width, depth, horizon,
        dataset: stdlib_chars      # batch_size (32), num_heads (4), max_len (64)
        width: 64
        depth: 1
        horizon: 300
      - kind: quadratic            # noisy diagonal quadratic (tasks.quadratic), curvatures
        dim: 16                    # log-uniform in [min_curvature, max_curvature]
        min_curvature: 1.0
        max_curvature: 1.0
        horizon: 100               # optional: noise_std (0.1), init_scale (1.0), seed (0)

Width/depth/horizon multipliers are relative to the largest meta-training values
(`tasks.suites.META_TRAIN_REFERENCE`), as in the built-in suites; width and depth are None for
everything but MLPs.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import jax

from tasks.suites import META_TRAIN_DATASETS, META_TRAIN_REFERENCE, SUITES, Multipliers, SuiteEntry


class SuiteError(ValueError):
    """An unknown suite name or a malformed suite YAML file."""


@dataclasses.dataclass(frozen=True)
class QuadraticSpec:
    """A `tasks.quadratic.QuadraticTask` drawn from a `QuadraticFamily` with a fixed seed."""

    dim: int
    min_curvature: float
    max_curvature: float
    horizon: int
    noise_std: float = 0.1
    init_scale: float = 1.0
    seed: int = 0
    dataset = None  # no data to prepare

    def build(self, data_dir=None):
        from tasks.quadratic import QuadraticFamily

        family = QuadraticFamily(dim=self.dim, min_curvature=self.min_curvature,
                                 max_curvature=self.max_curvature, noise_std=self.noise_std,
                                 init_scale=self.init_scale, horizon=self.horizon)
        return family.sample(jax.random.PRNGKey(self.seed))


@dataclasses.dataclass(frozen=True)
class Suite:
    name: str
    entries: tuple[SuiteEntry, ...]


def is_available(entry: SuiteEntry, data_dir=None) -> bool:
    return getattr(entry.spec, "dataset", None) is None or entry.available(data_dir)


def _horizon_multiplier(horizon: int) -> float:
    return horizon / META_TRAIN_REFERENCE["horizon"]


def _builtin_entries() -> dict[str, SuiteEntry]:
    return {e.name: e for make in SUITES.values() for e in make()}


def _take(fields: dict, required: tuple[str, ...], optional: dict[str, Any], where: str) -> dict:
    unknown = sorted(set(fields) - set(required) - set(optional))
    missing = sorted(set(required) - set(fields))
    if unknown or missing:
        raise SuiteError(f"{where}: missing {missing}, unknown {unknown}; expected keys "
                         f"{list(required)} and optionally {sorted(optional)}.")
    return {**optional, **fields}


def _positive_int(f: dict, key: str, where: str) -> int:
    """`f[key]` as an int >= 1 (horizons, sizes), or a SuiteError naming the key and value."""
    value = f[key]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise SuiteError(f"{where}: {key}={value!r}; expected an integer >= 1.")
    try:
        number = int(value)
    except ValueError:
        raise SuiteError(f"{where}: {key}={value!r}; expected an integer >= 1.") from None
    if number != float(value) or number < 1:
        raise SuiteError(f"{where}: {key}={value!r}; expected an integer >= 1.")
    return number


def _dataset(f: dict, kind: str, where: str) -> str:
    from tasks.data.catalog import DATASETS

    wanted = "text" if kind == "transformer" else "classification"
    valid = sorted(name for name, spec in DATASETS.items() if spec.kind == wanted)
    if f["dataset"] not in valid:
        raise SuiteError(f"{where}: unknown dataset {f['dataset']!r} for kind {kind!r}; valid: "
                         f"{valid} (tasks/data/catalog.py).")
    return f["dataset"]


def _builtin(f: dict, where: str) -> SuiteEntry:
    f = _take(f, ("entry",), {"horizon": None, "batch_size": None, "name": None}, where)
    entries = _builtin_entries()
    if f["entry"] not in entries:
        raise SuiteError(f"{where}: unknown built-in entry {f['entry']!r}; valid: {sorted(entries)}.")
    entry = entries[f["entry"]]
    changes = {k: _positive_int(f, k, where) for k in ("horizon", "batch_size") if f[k] is not None}
    if not changes:
        return dataclasses.replace(entry, name=f["name"] or entry.name)
    spec = dataclasses.replace(entry.spec, **changes)
    name = f["name"] or re.sub(r"(_h\d+)?$", f"_h{spec.horizon}", entry.name, count=1)
    multipliers = dataclasses.replace(entry.multipliers, horizon=_horizon_multiplier(spec.horizon))
    return dataclasses.replace(entry, name=name, spec=spec, multipliers=multipliers)


def _model_entry(kind: str, f: dict, where: str) -> SuiteEntry:
    from tasks.models.autoencoder import AutoencoderConfig
    from tasks.models.cnn import CNNConfig
    from tasks.models.mlp import MLPConfig
    from tasks.models.transformer import TransformerConfig
    from tasks.specs import AutoencoderSpec, ClassificationSpec, LanguageModelSpec

    required = ("dataset", "width", "depth", "horizon")
    optional = {"mlp": {"batch_size": 128, "activation": "relu", "parametrization": "mup"},
                "cnn": {"batch_size": 128},
                "autoencoder": {"batch_size": 128, "code_dim": 8},
                "transformer": {"batch_size": 32, "num_heads": 4, "max_len": 64}}[kind]
    f = _take(f, required, {**optional, "name": None}, where)
    sizes = [k for k in (*required, *optional) if k not in ("dataset", "activation", "parametrization")]
    f = {**f, **{k: _positive_int(f, k, where) for k in sizes}, "dataset": _dataset(f, kind, where)}
    if kind == "mlp":
        model = MLPConfig(f["width"], f["depth"], 10, f["activation"], f["parametrization"])
        ref = META_TRAIN_REFERENCE
        multipliers = Multipliers(model.width / ref["width"], model.depth / ref["depth"],
                                  _horizon_multiplier(int(f["horizon"])))
    elif kind == "cnn":
        model = CNNConfig(int(f["width"]), int(f["depth"]), 10)
        multipliers = Multipliers(None, None, _horizon_multiplier(int(f["horizon"])))
    elif kind == "autoencoder":
        model = AutoencoderConfig(int(f["width"]), int(f["depth"]), code_dim=int(f["code_dim"]))
        multipliers = Multipliers(None, None, _horizon_multiplier(int(f["horizon"])))
    else:
        model = TransformerConfig(int(f["width"]), int(f["depth"]), num_heads=int(f["num_heads"]),
                                  max_len=int(f["max_len"]))
    spec_cls = {"transformer": LanguageModelSpec, "autoencoder": AutoencoderSpec}.get(kind, ClassificationSpec)
    spec = spec_cls(f["dataset"], model, batch_size=int(f["batch_size"]), horizon=int(f["horizon"]))
    if kind == "transformer":
        multipliers = Multipliers(None, None, _horizon_multiplier(spec.horizon))
    name = f["name"] or f"{kind}_{spec.dataset}_w{model.width}_d{model.depth}_h{spec.horizon}"
    return SuiteEntry(name, spec, multipliers, held_out_dataset=spec.dataset not in META_TRAIN_DATASETS)


def _quadratic(f: dict, where: str) -> SuiteEntry:
    f = _take(f, ("min_curvature", "max_curvature", "horizon"),
              {"dim": 16, "noise_std": 0.1, "init_scale": 1.0, "seed": 0, "name": None}, where)
    f = {**f, "dim": _positive_int(f, "dim", where), "horizon": _positive_int(f, "horizon", where)}
    if not 0 < float(f["min_curvature"]) <= float(f["max_curvature"]):
        raise SuiteError(f"{where}: min_curvature={f['min_curvature']!r}, max_curvature="
                         f"{f['max_curvature']!r}; expected 0 < min_curvature <= max_curvature.")
    spec = QuadraticSpec(int(f["dim"]), float(f["min_curvature"]), float(f["max_curvature"]),
                         int(f["horizon"]), float(f["noise_std"]), float(f["init_scale"]),
                         int(f["seed"]))
    name = f["name"] or (f"quadratic_d{spec.dim}_c{spec.min_curvature:g}-{spec.max_curvature:g}"
                         f"_h{spec.horizon}")
    return SuiteEntry(name, spec, Multipliers(None, None, _horizon_multiplier(spec.horizon)),
                      held_out_dataset=True)


KINDS = ("builtin", "mlp", "cnn", "autoencoder", "transformer", "quadratic")


def _entry(item: Any, where: str) -> SuiteEntry:
    if not isinstance(item, dict) or item.get("kind") not in KINDS:
        raise SuiteError(f"{where}: each task is a mapping with 'kind' one of {list(KINDS)}; "
                         f"got {item!r}.")
    fields = {k: v for k, v in item.items() if k != "kind"}
    kind = item["kind"]
    try:
        if kind == "builtin":
            return _builtin(fields, where)
        if kind == "quadratic":
            return _quadratic(fields, where)
        return _model_entry(kind, fields, where)
    except (TypeError, ValueError) as err:
        if isinstance(err, SuiteError):
            raise
        raise SuiteError(f"{where}: {err}") from None


def load_suite_yaml(path: str | Path) -> Suite:
    import yaml

    path = Path(path)
    from meta_train.config import describe_yaml_error

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise SuiteError(f"suite file {describe_yaml_error(str(path), err)}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SuiteError(f"Cannot read suite file {str(path)!r} ({err}); pass a UTF-8 YAML file.") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("tasks"), list) or not doc["tasks"]:
        raise SuiteError(f"Suite file {str(path)!r} must be a mapping with a non-empty list "
                         "'tasks' (see meta_train/evaluation/suites.py for the format).")
    entries = tuple(_entry(item, f"{path}: tasks[{i}]") for i, item in enumerate(doc["tasks"]))
    names = [e.name for e in entries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SuiteError(f"Suite file {str(path)!r} has duplicate task names {duplicates}; give "
                         "each a distinct 'name'.")
    return Suite(str(doc.get("name") or path.stem), entries)


def resolve_suite(name_or_path: str) -> Suite:
    """A built-in suite by name, or a YAML file (path ending .yaml/.yml)."""
    if name_or_path in SUITES:
        return Suite(name_or_path, tuple(SUITES[name_or_path]()))
    if name_or_path.endswith((".yaml", ".yml")) or Path(name_or_path).is_file():
        if not Path(name_or_path).is_file():
            raise SuiteError(f"Suite file {name_or_path!r} does not exist.")
        return load_suite_yaml(name_or_path)
    raise SuiteError(f"Unknown suite {name_or_path!r}; valid: {sorted(SUITES)}, or the path of "
                     "a YAML file listing tasks (format: meta_train/evaluation/suites.py).")
