"""Named task suites and families: plain data, built lazily (importing loads no dataset).

`FAMILIES["meta_train_small"]()` is the CPU-sized meta-training distribution. `SUITES[name]()`
is a list of `SuiteEntry`: a task spec, its intended horizon (in the spec) and its multipliers
relative to the meta-training distribution, so an evaluation report can plot win rate against
width, depth and horizon shifts.

Multipliers are relative to the *largest* meta-training value (`META_TRAIN_REFERENCE`: width
256, depth 4, horizon 1000), so a multiplier > 1 is outside anything seen in meta-training.
A multiplier is None where the axis is not comparable (another architecture kind).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tasks.data.catalog import get_spec
from tasks.data.paths import find_prepared_version, resolve_data_dir
from tasks.families import MLPFamily
from tasks.models.cnn import CNNConfig
from tasks.models.mlp import MLPConfig
from tasks.models.transformer import TransformerConfig
from tasks.specs import ClassificationSpec, LanguageModelSpec


def meta_train_small(**overrides) -> MLPFamily:
    """MLPs on MNIST-1D and digits: widths 32..256, depths 2..4, batch 32..128, mu-P.

    `overrides` replace `MLPFamily` fields (e.g. `data_dir=...`, `widths=(32, 64)`).
    """
    return MLPFamily(**overrides)


FAMILIES = {"meta_train_small": meta_train_small}

_REFERENCE_FAMILY = MLPFamily()
META_TRAIN_REFERENCE = {
    "width": max(_REFERENCE_FAMILY.widths),
    "depth": max(_REFERENCE_FAMILY.depths),
    "horizon": max(_REFERENCE_FAMILY.horizons),
}
META_TRAIN_DATASETS = _REFERENCE_FAMILY.datasets


@dataclasses.dataclass(frozen=True)
class Multipliers:
    """Task size / largest meta-training size, per axis (None: not comparable)."""

    width: float | None
    depth: float | None
    horizon: float


@dataclasses.dataclass(frozen=True)
class SuiteEntry:
    name: str
    spec: Any  # ClassificationSpec | LanguageModelSpec
    multipliers: Multipliers
    held_out_dataset: bool  # dataset not used in meta-training

    @property
    def horizon(self) -> int:
        return self.spec.horizon

    def available(self, data_dir=None) -> bool:
        """True when the data is local-buildable or already prepared in `data_dir`."""
        spec = get_spec(self.spec.dataset)
        return spec.builder is not None or find_prepared_version(
            resolve_data_dir(data_dir), spec.tfds_name) is not None

    def build(self, data_dir=None):
        return self.spec.build(data_dir)


def _mlp_entry(dataset: str, width: int, depth: int, horizon: int, batch_size: int = 128):
    model = MLPConfig(width=width, depth=depth, num_classes=10, activation="relu",
                      parametrization="mup", base_width=_REFERENCE_FAMILY.base_width)
    ref = META_TRAIN_REFERENCE
    return SuiteEntry(
        name=f"mlp_{dataset}_w{width}_d{depth}_h{horizon}",
        spec=ClassificationSpec(dataset, model, batch_size=batch_size, horizon=horizon),
        multipliers=Multipliers(width / ref["width"], depth / ref["depth"],
                                horizon / ref["horizon"]),
        held_out_dataset=dataset not in META_TRAIN_DATASETS)


def in_distribution() -> list[SuiteEntry]:
    """Tasks inside the meta-training ranges: the baseline against which shifts are read."""
    return [_mlp_entry("mnist1d", 128, 3, 1000), _mlp_entry("digits", 256, 4, 1000)]


def generalization() -> list[SuiteEntry]:
    """Held out: 8x/16x wider, 2x deeper, 10x longer; a CNN; a transformer LM; new datasets.

    Entries on real TFDS datasets (mnist, fashion_mnist) run only where they are prepared
    (`SuiteEntry.available`); the rest are built offline.
    """
    ref_h = META_TRAIN_REFERENCE["horizon"]
    return [
        _mlp_entry("mnist1d", 2048, 4, 1000),
        _mlp_entry("mnist1d", 4096, 4, 1000),
        _mlp_entry("digits", 2048, 4, 1000),
        _mlp_entry("mnist1d", 256, 8, 1000),
        _mlp_entry("mnist1d", 128, 3, 10 * ref_h),
        _mlp_entry("digits", 2048, 8, 10 * ref_h),
        SuiteEntry(
            name="cnn_digits_w32_d3_h2000",
            spec=ClassificationSpec("digits", CNNConfig(32, 3, 10), batch_size=128,
                                    horizon=2000),
            multipliers=Multipliers(None, None, 2000 / ref_h), held_out_dataset=False),
        SuiteEntry(
            name="transformer_stdlib_chars_w128_d2_h2000",
            spec=LanguageModelSpec("stdlib_chars", TransformerConfig(128, 2, num_heads=4,
                                                                     max_len=64),
                                   batch_size=32, horizon=2000),
            multipliers=Multipliers(None, None, 2000 / ref_h), held_out_dataset=True),
        _mlp_entry("mnist", 1024, 4, 2000),
        _mlp_entry("fashion_mnist", 1024, 4, 2000),
    ]


SUITES = {"in_distribution": in_distribution, "generalization": generalization}
