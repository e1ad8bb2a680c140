"""Read TFDS datasets through `data_source` (array_record), without TensorFlow.

`prepare` makes sure a dataset is on disk (building local ones on first use, failing fast for
missing real ones); `load_arrays` reads a whole split into NumPy arrays; `load_tokens` reads a
text split as one byte-level token stream. Reads are cached per process, so sampling many tasks
on the same dataset reads it once.
"""

from __future__ import annotations

import functools
import logging
import pathlib

import numpy as np

from tasks.data.catalog import DatasetSpec, get_spec
from tasks.data.paths import (DatasetNotPreparedError, find_prepared_version,
                              not_prepared_message, resolve_data_dir)

TEXT_SEPARATOR = b"\n\n"


def _quiet_tfds():
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    logging.getLogger("absl").setLevel(logging.WARNING)
    return tfds


def build_local(spec: DatasetSpec, data_dir: pathlib.Path) -> pathlib.Path:
    """Runs the local builder of `spec` into `data_dir` (no network) and returns its dir."""
    tfds = _quiet_tfds()
    builder = spec.builder(data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return pathlib.Path(builder.data_dir)


def prepare(name: str, data_dir=None) -> pathlib.Path:
    """The prepared version dir of dataset `name`; builds local datasets if missing.

    Raises DatasetNotPreparedError (immediately, no download) for a missing real dataset.
    """
    spec = get_spec(name)
    root = resolve_data_dir(data_dir)
    found = find_prepared_version(root, spec.tfds_name)
    if found is not None:
        return found
    if spec.builder is None:
        raise DatasetNotPreparedError(not_prepared_message(name, spec.tfds_name, root))
    return build_local(spec, root)


@functools.lru_cache(maxsize=64)
def _data_source(version_dir: str, split: str):
    tfds = _quiet_tfds()
    sources = tfds.builder_from_directory(version_dir).as_data_source()
    if split not in sources:
        raise ValueError(f"Split {split!r} not in {version_dir}; available: {sorted(sources)}.")
    return sources[split]


def _read_records(name: str, split: str, data_dir, max_examples: int | None) -> list[dict]:
    source = _data_source(str(prepare(name, data_dir)), split)
    n = len(source) if max_examples is None else min(len(source), max_examples)
    return source.__getitems__(list(range(n)))


@functools.lru_cache(maxsize=32)
def _load_arrays_cached(name, split, data_dir, max_examples):
    spec = get_spec(name)
    if spec.kind != "classification":
        raise ValueError(f"load_arrays needs a classification dataset; {name!r} is "
                         f"{spec.kind!r}. Use load_tokens for text.")
    records = _read_records(name, split, data_dir, max_examples)
    x = np.stack([np.asarray(r[spec.input_key]) for r in records])
    y = np.asarray([r[spec.label_key] for r in records], dtype=np.int32)
    for array in (x, y):
        array.flags.writeable = False
    return {"x": x, "y": y}


def load_arrays(name: str, split: str, *, data_dir=None,
                max_examples: int | None = None) -> dict[str, np.ndarray]:
    """Split `split` of a classification dataset: {"x": [N, ...] stored dtype, "y": i32[N]}.

    Inputs keep their stored dtype (uint8 images stay uint8); see `DatasetSpec.input_scale`.
    The returned arrays are read-only and shared between calls.
    """
    data_dir = str(resolve_data_dir(data_dir))
    return _load_arrays_cached(name, split, data_dir, max_examples)


@functools.lru_cache(maxsize=16)
def _load_tokens_cached(name, split, data_dir, max_examples):
    spec = get_spec(name)
    if spec.kind != "text":
        raise ValueError(f"load_tokens needs a text dataset; {name!r} is {spec.kind!r}.")
    records = _read_records(name, split, data_dir, max_examples)
    texts = [r[spec.text_key] for r in records]
    texts = [t if isinstance(t, bytes) else str(t).encode("utf-8") for t in texts]
    tokens = np.frombuffer(TEXT_SEPARATOR.join(texts), dtype=np.uint8).copy()
    tokens.flags.writeable = False
    return tokens


def load_tokens(name: str, split: str, *, data_dir=None,
                max_examples: int | None = None) -> np.ndarray:
    """Split `split` of a text dataset as one u8[T] byte stream (examples joined by a blank line)."""
    data_dir = str(resolve_data_dir(data_dir))
    return _load_tokens_cached(name, split, data_dir, max_examples)
