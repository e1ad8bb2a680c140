"""A character-level corpus built from this machine's Python standard-library sources.

Why: every machine that runs this project has them, they are real, varied text (code,
docstrings, comments), and selecting them is deterministic. Selection: the `*.py` files directly
in `sysconfig.get_paths()["stdlib"]` (no subdirectories, no site-packages), sorted by file name,
skipping names that start with `_`; files are taken in that order until `MAX_TOTAL_BYTES`.
Every 10th selected file (index % 10 == 0) goes to `test`, the rest to `train`. One example per
file, its text decoded as UTF-8 with replacement. Contents depend on the Python version, so the
corpus is deterministic per interpreter version (recorded in the dataset description).
"""

from __future__ import annotations

import pathlib
import sys
import sysconfig

import tensorflow_datasets as tfds

MAX_TOTAL_BYTES = 2_000_000
TEST_EVERY = 10


def select_stdlib_files() -> list[pathlib.Path]:
    """The corpus files, in their fixed order (see module docstring)."""
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if not p.name.startswith("_"))
    selected, total = [], 0
    for path in files:
        size = path.stat().st_size
        if total + size > MAX_TOTAL_BYTES:
            break
        selected.append(path)
        total += size
    return selected


class LoptStdlibChars(tfds.core.GeneratorBasedBuilder):
    """TFDS name `lopt_stdlib_chars`: one `text` example per selected stdlib file."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Top-level stdlib *.py files, sorted, up to 2 MB, every 10th test."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{__doc__}\nBuilt with Python {sys.version.split()[0]}.",
            features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
        )

    def _split_generators(self, dl_manager):
        files = select_stdlib_files()
        test = [p for i, p in enumerate(files) if i % TEST_EVERY == 0]
        train = [p for i, p in enumerate(files) if i % TEST_EVERY != 0]
        return {"train": self._generate_examples(train), "test": self._generate_examples(test)}

    def _generate_examples(self, paths):
        for path in paths:
            yield path.name, {"text": path.read_bytes().decode("utf-8", errors="replace")}
