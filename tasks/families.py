"""Task families: distributions over task configurations, sampled on the host.

`MLPFamily` and `CNNFamily` draw the static choices (dataset, width, depth, activation, batch
size, horizon) and a log-uniform init scale; `LanguageModelFamily` draws small byte-level
transformers the same way, `AutoencoderFamily` MLP autoencoders. `sample_population` keeps one
static choice and varies the init scale per member, so the members stack into one vmappable task.
`MixtureFamily` draws a family first (weighted), then a task from it: meta-training on more than
one architecture with one worker pool, each worker's population one family's configuration.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from tasks.base import Task, TaskFamily
from tasks.models.autoencoder import AutoencoderConfig
from tasks.models.cnn import CNNConfig
from tasks.models.mlp import MLPConfig
from tasks.models.transformer import TransformerConfig
from tasks.specs import AutoencoderSpec, ClassificationSpec, LanguageModelSpec
from tasks.stacking import stack_tasks

NUM_CLASSES = {"mnist1d": 10, "digits": 10}
IMAGE_DATASETS = ("digits",)  # stored (H, W, C): a CNN can read them


def host_rng(key: jax.Array, *salt: int) -> np.random.Generator:
    """A numpy generator seeded by `key`'s bits (and `salt`): host-side draws, deterministic in key."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key).ravel().tolist() + list(salt))


@dataclasses.dataclass(frozen=True)
class MLPFamily(TaskFamily):
    """MLP classifiers on small device-resident datasets.

    Static choices are drawn uniformly from the tuples; init_scale log-uniformly from
    `init_scale_range`. `data_dir` None means the default data dir.
    """

    datasets: tuple[str, ...] = ("mnist1d", "digits")
    widths: tuple[int, ...] = (32, 64, 128, 256)
    depths: tuple[int, ...] = (2, 3, 4)
    activations: tuple[str, ...] = ("relu", "gelu", "tanh")
    batch_sizes: tuple[int, ...] = (32, 64, 128)
    horizons: tuple[int, ...] = (250, 500, 1000)
    init_scale_range: tuple[float, float] = (0.5, 2.0)
    parametrization: str = "mup"
    base_width: int = 64
    data_dir: str | None = None

    config_class: ClassVar[type] = MLPConfig
    spec_class: ClassVar[type] = ClassificationSpec
    supported_datasets: ClassVar[tuple[str, ...]] = tuple(NUM_CLASSES)

    def __post_init__(self):
        cls = type(self).__name__
        for field in ("datasets", "widths", "depths", "activations", "batch_sizes", "horizons"):
            if not getattr(self, field):
                raise ValueError(f"{cls}.{field} is empty; give at least one choice.")
        unknown = [d for d in self.datasets if d not in self.supported_datasets]
        if unknown:
            raise ValueError(f"{cls} datasets {unknown} unsupported; expected a subset "
                             f"of {sorted(self.supported_datasets)}.")
        low, high = self.init_scale_range
        if not 0 < low <= high:
            raise ValueError(f"init_scale_range must satisfy 0 < low <= high, got "
                             f"{self.init_scale_range}.")

    def _rng(self, key: jax.Array) -> np.random.Generator:
        return host_rng(key)

    def sample_spec(self, key: jax.Array) -> ClassificationSpec:
        """A task spec (static choices + one init scale); deterministic in `key`. Subclasses
        change the model (`_model`) and the spec's class (`spec_class`), not the draws around it."""
        rng = self._rng(key)
        dataset = self.datasets[rng.integers(len(self.datasets))]
        model = self._model(rng, dataset)
        return self.spec_class(
            dataset=dataset, model=model, batch_size=int(rng.choice(self.batch_sizes)),
            horizon=int(rng.choice(self.horizons)), init_scale=self._init_scale(rng))

    def _model(self, rng: np.random.Generator, dataset: str) -> Any:
        """The model config, drawn from `rng` after the dataset."""
        return self.config_class(
            width=int(rng.choice(self.widths)), depth=int(rng.choice(self.depths)),
            num_classes=NUM_CLASSES[dataset],
            activation=self.activations[rng.integers(len(self.activations))],
            parametrization=self.parametrization, base_width=self.base_width)

    def _init_scale(self, rng: np.random.Generator) -> float:
        low, high = self.init_scale_range
        return float(np.exp(rng.uniform(np.log(low), np.log(high))))

    def sample(self, key: jax.Array) -> Task:
        return self.sample_spec(key).build(self.data_dir)

    def sample_population(self, key: jax.Array, size: int) -> Task:
        """`size` tasks with one static config and per-member init scales, stacked."""
        if size < 1:
            raise ValueError(f"population size must be >= 1, got {size}.")
        task = self.sample(key)
        rng = self._rng(jax.random.fold_in(key, 1))
        scales = [self._init_scale(rng) for _ in range(size)]
        return stack_tasks([task.replace(init_scale=jnp.float32(s)) for s in scales])


@dataclasses.dataclass(frozen=True)
class CNNFamily(MLPFamily):
    """`tasks.models.cnn` classifiers on image datasets (fields as `MLPFamily`; width is channels).

    The defaults leave out the held-out CNN of configs/heldout_cpu.yaml (digits, width 32,
    depth 3): meta-training sees narrower and wider, shallower and deeper CNNs, never that one.
    """

    datasets: tuple[str, ...] = ("digits",)
    widths: tuple[int, ...] = (8, 16, 64)
    depths: tuple[int, ...] = (2, 4)
    base_width: int = 16

    config_class: ClassVar[type] = CNNConfig
    supported_datasets: ClassVar[tuple[str, ...]] = IMAGE_DATASETS


@dataclasses.dataclass(frozen=True)
class LanguageModelFamily(MLPFamily):
    """Byte-level transformer LMs (`tasks.models.transformer`) on text datasets.

    Fields as `MLPFamily` (width is the model width) plus `num_heads` and `seq_lens` (the
    training sequence length). The default dataset is the generated language (`synth_chars`):
    `stdlib_chars` is held out for evaluation (configs/heldout_cpu.yaml, the suites), so it is
    not a default here, and neither is width 64 at depth 2 (the held-out LM's shape).
    """

    datasets: tuple[str, ...] = ("synth_chars",)
    widths: tuple[int, ...] = (16, 32, 96)
    depths: tuple[int, ...] = (1, 2)
    activations: tuple[str, ...] = ("gelu",)  # unused: the transformer fixes its activation
    batch_sizes: tuple[int, ...] = (16, 32)
    num_heads: tuple[int, ...] = (2, 4)
    seq_lens: tuple[int, ...] = (32, 64)

    spec_class: ClassVar[type] = LanguageModelSpec

    def __post_init__(self):
        super().__post_init__()
        for field in ("num_heads", "seq_lens"):
            if not getattr(self, field):
                raise ValueError(f"LanguageModelFamily.{field} is empty; give at least one choice.")
        bad = [(w, h) for w in self.widths for h in self.num_heads if w % h]
        if bad:
            raise ValueError(f"LanguageModelFamily: width must be divisible by num_heads; "
                             f"(width, heads) {bad} are not. Pick widths that are multiples of "
                             f"every num_heads.")

    @property
    def supported_datasets(self) -> tuple[str, ...]:  # type: ignore[override]
        from tasks.data.catalog import DATASETS

        return tuple(name for name, spec in DATASETS.items() if spec.kind == "text")

    def _model(self, rng: np.random.Generator, dataset: str) -> TransformerConfig:
        return TransformerConfig(
            width=int(rng.choice(self.widths)), depth=int(rng.choice(self.depths)),
            num_heads=int(rng.choice(self.num_heads)), max_len=int(rng.choice(self.seq_lens)),
            parametrization=self.parametrization, base_width=self.base_width)


@dataclasses.dataclass(frozen=True)
class AutoencoderFamily(MLPFamily):
    """MLP autoencoders (`tasks.models.autoencoder`) of the inputs of vector or image datasets.

    Fields as `MLPFamily` (width and depth of the encoder, mirrored by the decoder) plus
    `code_dims`, the bottleneck sizes. A regression loss at another scale than the classifiers'.
    The init scale multiplies all 2 x depth + 2 kernels and the squared error grows with the
    square of their product, so its default range is narrower than the classifiers' (at 2.0 a
    depth-2 autoencoder starts at a squared error of ~500 on digits; at 1.4, ~50).
    """

    widths: tuple[int, ...] = (32, 64, 128)
    depths: tuple[int, ...] = (1, 2)
    code_dims: tuple[int, ...] = (4, 8, 16)
    init_scale_range: tuple[float, float] = (0.7, 1.4)

    spec_class: ClassVar[type] = AutoencoderSpec

    def __post_init__(self):
        super().__post_init__()
        if not self.code_dims or min(self.code_dims) < 1:
            raise ValueError(f"AutoencoderFamily.code_dims={self.code_dims}; give sizes >= 1.")

    def _model(self, rng: np.random.Generator, dataset: str) -> AutoencoderConfig:
        return AutoencoderConfig(
            width=int(rng.choice(self.widths)), depth=int(rng.choice(self.depths)),
            code_dim=int(rng.choice(self.code_dims)),
            activation=self.activations[rng.integers(len(self.activations))],
            parametrization=self.parametrization, base_width=self.base_width)


@dataclasses.dataclass(frozen=True)
class MixtureFamily(TaskFamily):
    """A weighted mixture of task families: each draw picks a member family, then its task.

    members: the families (each with `sample` and, optionally, `sample_population`).
    weights: relative probabilities, one per member, all > 0.
    """

    members: tuple[Any, ...]
    weights: tuple[float, ...]

    def __post_init__(self):
        if not self.members:
            raise ValueError("MixtureFamily.members is empty; give at least one family.")
        if len(self.weights) != len(self.members) or any(not w > 0 for w in self.weights):
            raise ValueError(f"MixtureFamily.weights={self.weights!r}: expected one weight > 0 "
                             f"per member ({len(self.members)} members).")

    def member(self, key: jax.Array) -> Any:
        """The member family that `key` draws (deterministic in `key`)."""
        p = np.asarray(self.weights, np.float64)
        rng = host_rng(key, 0x6D6978)  # salted: not the member's own draw from the same key
        return self.members[rng.choice(len(self.members), p=p / p.sum())]

    def sample(self, key: jax.Array) -> Task:
        return self.member(key).sample(key)

    def sample_population(self, key: jax.Array, size: int) -> Task:
        return self.member(key).sample_population(key, size)
