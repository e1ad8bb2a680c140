"""Where datasets live on disk, and the error raised when one is not there.

The data dir is a normal TFDS data dir: `<data_dir>/<tfds_name>/<version>/` holding
`dataset_info.json` and `*.array_record-*` shards. Default: `$LEARNED_OPT_DATA_DIR`, else
`~/.cache/learned_opt/tensorflow_datasets`.
"""

from __future__ import annotations

import os
import pathlib

DATA_DIR_ENV = "LEARNED_OPT_DATA_DIR"


def default_data_dir() -> pathlib.Path:
    """`$LEARNED_OPT_DATA_DIR` if set, else `~/.cache/learned_opt/tensorflow_datasets`."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path("~/.cache/learned_opt/tensorflow_datasets").expanduser()


def resolve_data_dir(data_dir: str | os.PathLike | None) -> pathlib.Path:
    return default_data_dir() if data_dir is None else pathlib.Path(data_dir).expanduser()


class DatasetNotPreparedError(FileNotFoundError):
    """A TFDS dataset is not in the data dir as array_record; raised at once, never retried."""


class DataDirError(ValueError):
    """The data dir cannot hold a dataset that must be built there (read-only, not a directory)."""


class CorruptDatasetError(ValueError):
    """A prepared dataset's shard cannot be read (truncated or damaged cache file)."""


def describe_data_dir(data_dir: str | os.PathLike | None) -> str:
    """Where a data dir came from, for error messages: the argument, the env var or the default."""
    root = resolve_data_dir(data_dir)
    if data_dir is not None:
        return f"data dir {str(root)!r} (given as data_dir / --data-dir)"
    if os.environ.get(DATA_DIR_ENV):
        return f"data dir {str(root)!r} (from ${DATA_DIR_ENV})"
    return f"data dir {str(root)!r} (the default; ${DATA_DIR_ENV} is unset)"


def check_writable(data_dir: str | os.PathLike | None, name: str) -> pathlib.Path:
    """The data dir, created if missing; DataDirError if dataset `name` could not be built in it."""
    import tempfile

    root = resolve_data_dir(data_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as err:
        raise DataDirError(
            f"{describe_data_dir(data_dir)} is not writable ({err.strerror}), and dataset {name!r} "
            f"is not prepared there, so it cannot be built on first use; point ${DATA_DIR_ENV} "
            "(or --data-dir) at a writable directory, or one where it is already prepared.") from None
    return root


def find_prepared_version(data_dir: pathlib.Path, tfds_name: str) -> pathlib.Path | None:
    """The newest `<data_dir>/<tfds_name>/<version>` dir with array_record shards, or None."""
    root = data_dir / tfds_name
    if not root.is_dir():
        return None
    candidates = []
    for info in root.glob("**/dataset_info.json"):
        version_dir = info.parent
        if any(version_dir.glob("*.array_record*")):
            candidates.append(version_dir)
    return max(candidates, key=lambda p: p.name) if candidates else None


def not_prepared_message(name: str, tfds_name: str, data_dir: pathlib.Path) -> str:
    has_other_format = (data_dir / tfds_name).is_dir()
    detail = (
        f" A directory {data_dir / tfds_name} exists but holds no array_record shards "
        "(TFRecord datasets cannot be read without TensorFlow)."
        if has_other_format else "")
    return (
        f"Dataset {name!r} (TFDS name {tfds_name!r}) is not prepared in data_dir "
        f"{str(data_dir)!r}.{detail} This project never downloads at run time. To prepare it, "
        f"on a machine with internet run `tfds build {tfds_name} --file_format=array_record "
        f"--data_dir=<dir>` (needs tensorflow-datasets there), then copy `<dir>/{tfds_name}` "
        f"to {str(data_dir / tfds_name)!r}; or point ${DATA_DIR_ENV} at a data dir that has it.")
