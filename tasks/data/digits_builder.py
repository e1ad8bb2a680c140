"""scikit-learn's 8x8 handwritten digits (bundled with sklearn; no download), as TFDS.

1797 images with pixel values 0..16. The train/test split is a fixed permutation
(NumPy seed 0): 1437 train, 360 test.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

NUM_TEST = 360


class LoptDigits(tfds.core.GeneratorBasedBuilder):
    """TFDS name `lopt_digits`: features `image` u8[8, 8, 1] (0..16), `label` (10 classes)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "sklearn load_digits, permutation seed 0, 360 test."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=10),
            }),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = digits.images.astype(np.uint8)[..., None]
        order = np.random.default_rng(0).permutation(len(images))
        test, train = order[:NUM_TEST], order[NUM_TEST:]
        return {
            "train": self._generate_examples(images[train], digits.target[train]),
            "test": self._generate_examples(images[test], digits.target[test]),
        }

    def _generate_examples(self, images, labels):
        for i in range(len(labels)):
            yield i, {"image": images[i], "label": int(labels[i])}
