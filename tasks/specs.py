"""Task specs: small, hashable, plain-data descriptions of a task; `build()` makes the Task.

Suites and families hold specs (cheap, no data loaded); building loads the dataset (local
datasets are generated on first use).
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class ClassificationSpec:
    """A classifier (`model`: MLPConfig or CNNConfig) on a classification dataset."""

    dataset: str
    model: Any
    batch_size: int
    horizon: int
    init_scale: float = 1.0
    eval_size: int = 1000

    def build(self, data_dir=None):
        from tasks.classification import make_classification_task

        return make_classification_task(
            self.dataset, self.model, batch_size=self.batch_size, horizon=self.horizon,
            init_scale=self.init_scale, eval_size=self.eval_size, data_dir=data_dir)


@dataclasses.dataclass(frozen=True)
class LanguageModelSpec:
    """A decoder-only transformer (`model`: TransformerConfig) on a byte-level text dataset."""

    dataset: str
    model: Any
    batch_size: int
    horizon: int
    init_scale: float = 1.0
    eval_batches: int = 4

    def build(self, data_dir=None):
        from tasks.language_model import make_language_model_task

        return make_language_model_task(
            self.dataset, self.model, batch_size=self.batch_size, horizon=self.horizon,
            init_scale=self.init_scale, eval_batches=self.eval_batches, data_dir=data_dir)


@dataclasses.dataclass(frozen=True)
class AutoencoderSpec(ClassificationSpec):
    """An autoencoder (`model`: AutoencoderConfig) reconstructing a dataset's inputs; the fields
    are `ClassificationSpec`'s (the labels are loaded and not used)."""

    def build(self, data_dir=None):
        from tasks.autoencoder import make_autoencoder_task

        return make_autoencoder_task(
            self.dataset, self.model, batch_size=self.batch_size, horizon=self.horizon,
            init_scale=self.init_scale, eval_size=self.eval_size, data_dir=data_dir)
