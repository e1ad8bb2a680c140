"""The datasets tasks can use: a plain dict from our name to a `DatasetSpec`.

Local datasets (`builder` set) are generated offline on first use; real TFDS datasets must
already be prepared as array_record in the data dir (see `tasks.data.paths`).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from tasks.data.digits_builder import LoptDigits
from tasks.data.mnist1d_builder import LoptMnist1d
from tasks.data.stdlib_text_builder import LoptStdlibChars
from tasks.data.synthetic_text_builder import LoptSynthText


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How to read one TFDS dataset.

    kind: "classification" (an input array and an integer label) or "text" (byte strings,
      read as a byte-level token stream, vocab 256).
    input_scale/input_offset: inputs become `x * input_scale + input_offset` (f32) when sampled,
      so image data can stay uint8 on the device.
    builder: the local `GeneratorBasedBuilder` that makes it offline, or None for a real TFDS
      dataset that must be prepared beforehand.
    """

    tfds_name: str
    kind: Literal["classification", "text"]
    input_key: str = "image"
    label_key: str = "label"
    text_key: str = "text"
    num_classes: int = 0
    input_scale: float = 1.0
    input_offset: float = 0.0
    builder: type | None = None


_IMAGE_U8 = dict(input_scale=2.0 / 255.0, input_offset=-1.0)

DATASETS: dict[str, DatasetSpec] = {
    # Local, built offline.
    "mnist1d": DatasetSpec("lopt_mnist1d", "classification", input_key="x", num_classes=10,
                           builder=LoptMnist1d),
    "digits": DatasetSpec("lopt_digits", "classification", num_classes=10,
                          input_scale=1.0 / 8.0, input_offset=-1.0, builder=LoptDigits),
    "stdlib_chars": DatasetSpec("lopt_stdlib_chars", "text", builder=LoptStdlibChars),
    "synth_chars": DatasetSpec("lopt_synth_text", "text", builder=LoptSynthText),  # meta-training
    # Real TFDS datasets: used when prepared in the data dir.
    "mnist": DatasetSpec("mnist", "classification", num_classes=10, **_IMAGE_U8),
    "fashion_mnist": DatasetSpec("fashion_mnist", "classification", num_classes=10, **_IMAGE_U8),
    "cifar10": DatasetSpec("cifar10", "classification", num_classes=10, **_IMAGE_U8),
    "tiny_shakespeare": DatasetSpec("tiny_shakespeare", "text"),
    "lm1b": DatasetSpec("lm1b", "text"),
}

LOCAL_DATASETS = tuple(name for name, spec in DATASETS.items() if spec.builder is not None)


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; expected one of {sorted(DATASETS)}.")
    return DATASETS[name]
