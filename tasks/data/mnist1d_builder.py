"""MNIST-1D (Greydanus 2020) generated locally with the `mnist1d` package, never downloaded.

`mnist1d.data.make_dataset` with the package's default arguments (5000 samples, seed 42,
sequence length 40, 80/20 split) gives the standard dataset; the package's `get_dataset` would
try its URL first, so it is not used. The generator seeds NumPy's global RNG; we restore it.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds


def generate_mnist1d() -> dict[str, np.ndarray]:
    """The standard MNIST-1D arrays: x f32[4000, 40], y i64[4000], x_test, y_test."""
    from mnist1d import data as mnist1d_data

    saved = np.random.get_state()
    try:
        args = mnist1d_data.get_dataset_args()
        raw = mnist1d_data.make_dataset(args)
    finally:
        np.random.set_state(saved)
    return {
        "x": raw["x"].astype(np.float32), "y": raw["y"].astype(np.int64),
        "x_test": raw["x_test"].astype(np.float32), "y_test": raw["y_test"].astype(np.int64),
    }


class LoptMnist1d(tfds.core.GeneratorBasedBuilder):
    """TFDS name `lopt_mnist1d`: features `x` f32[40], `label` (10 classes)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "mnist1d 0.0.2 default arguments (seed 42)."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "x": tfds.features.Tensor(shape=(40,), dtype=np.float32),
                "label": tfds.features.ClassLabel(num_classes=10),
            }),
            supervised_keys=("x", "label"),
        )

    def _split_generators(self, dl_manager):
        arrays = generate_mnist1d()
        return {
            "train": self._generate_examples(arrays["x"], arrays["y"]),
            "test": self._generate_examples(arrays["x_test"], arrays["y_test"]),
        }

    def _generate_examples(self, x, y):
        for i in range(len(y)):
            yield i, {"x": x[i], "label": int(y[i])}
