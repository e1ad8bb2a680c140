"""Read TFDS datasets through `data_source` (array_record), without TensorFlow.

`prepare` makes sure a dataset is on disk (building local ones on first use, failing fast for
missing real ones); `load_arrays` reads a whole split into NumPy arrays; `load_tokens` reads a
text split as one byte-level token stream. Reads are cached per process, so sampling many tasks
on the same dataset reads it once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import pathlib

import numpy as np

from tasks.data.catalog import DatasetSpec, get_spec
from tasks.data.paths import (CorruptDatasetError, DatasetNotPreparedError, check_writable,
                              find_prepared_version, not_prepared_message, resolve_data_dir)

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

    Raises DatasetNotPreparedError (immediately, no download) for a missing real dataset, and
    DataDirError before building when the data dir is not writable.
    """
    spec = get_spec(name)
    root = resolve_data_dir(data_dir)
    found = find_prepared_version(root, spec.tfds_name)
    if found is not None:
        return found
    if spec.builder is None:
        raise DatasetNotPreparedError(not_prepared_message(name, spec.tfds_name, root))
    return build_local(spec, check_writable(data_dir, name))


def check_dataset(name: str, data_dir=None) -> pathlib.Path:
    """`prepare(name)` and its first and last records read from each split: a missing, unbuildable or corrupt
    dataset fails here, before any compute, instead of inside a run. The reads are cheap: a
    reader opens a shard by its footer, which is what a truncated file lacks."""
    version_dir = prepare(name, data_dir)
    tfds = _quiet_tfds()
    with _naming_shards(name, version_dir, "*"):
        for split in tfds.builder_from_directory(str(version_dir)).info.splits:
            source = _data_source(str(version_dir), split)
            with _naming_shards(name, version_dir, split):
                if len(source):
                    source.__getitems__([0, len(source) - 1])
    return version_dir


@contextlib.contextmanager
def _naming_shards(name: str, version_dir: pathlib.Path, split: str):
    """Re-raises array_record/Riegeli read errors as CorruptDatasetError naming the files."""
    try:
        yield
    except (RuntimeError, OSError) as err:
        _data_source.cache_clear()  # its readers point at the damaged files; a rebuild needs new ones
        shards = sorted(str(p) for p in version_dir.glob(f"*-{split}.array_record*"))
        spec = get_spec(name)
        fix = ("so it is rebuilt on next use" if spec.builder is not None else "and prepare it "
               f"again (`tfds build {spec.tfds_name} --file_format=array_record`)")
        raise CorruptDatasetError(
            f"dataset {name!r}: cannot read its cached shard(s) {shards} ({str(err).splitlines()[0]}); "
            f"the cache is damaged (e.g. a copy or build cut short): delete {str(version_dir.parent)!r} "
            f"{fix}.") from None


@functools.lru_cache(maxsize=64)
def _data_source(version_dir: str, split: str):
    tfds = _quiet_tfds()
    sources = tfds.builder_from_directory(version_dir).as_data_source()
    if split not in sources:
        raise ValueError(f"Split {split!r} not in {version_dir}; available: {sorted(sources)}.")
    return sources[split]


def _read_records(name: str, split: str, data_dir, max_examples: int | None) -> list[dict]:
    version_dir = prepare(name, data_dir)
    with _naming_shards(name, version_dir, split):
        source = _data_source(str(version_dir), split)
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
