"""The dataset cache's failures are one clear error before any build or compute: an unwritable
data dir names the dir and $LEARNED_OPT_DATA_DIR; a truncated shard names the dataset, the file
and the fix (delete the cache dir), and following that fix works."""

import os
import shutil

import numpy as np
import pytest

from tasks.data import loading
from tasks.data.paths import DATA_DIR_ENV, CorruptDatasetError, DataDirError


@pytest.fixture()
def unwritable(tmp_path):
    """A data dir that cannot be created (its parent is a file): unwritable even for root."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    return blocker / "tfds"


def test_unwritable_env_data_dir_fails_before_building(monkeypatch, unwritable):
    monkeypatch.setenv(DATA_DIR_ENV, str(unwritable))
    with pytest.raises(DataDirError) as info:
        loading.prepare("digits")
    message = str(info.value)
    assert str(unwritable) in message and f"${DATA_DIR_ENV}" in message
    assert "not writable" in message and "'digits'" in message
    assert "\n" not in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_data_dir_fails_before_building(tmp_path):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        with pytest.raises(DataDirError, match="not writable"):
            loading.prepare("digits", read_only)
    finally:
        read_only.chmod(0o755)
    assert list(read_only.iterdir()) == []


@pytest.fixture()
def digits_dir(tmp_path):
    loading.prepare("digits", tmp_path)
    return tmp_path


def _truncate_train_shard(data_dir) -> str:
    (shard,) = (data_dir / "lopt_digits").glob("*/lopt_digits-train.array_record*")
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) * 2 // 3)
    return str(shard)


def test_truncated_shard_names_dataset_file_and_fix_and_the_fix_works(digits_dir):
    shard = _truncate_train_shard(digits_dir)
    cache = str(digits_dir / "lopt_digits")
    with pytest.raises(CorruptDatasetError) as info:
        loading.check_dataset("digits", digits_dir)
    message = str(info.value)
    assert "'digits'" in message and shard in message and f"delete {cache!r}" in message
    assert "\n" not in message
    with pytest.raises(CorruptDatasetError, match="digits"):  # also when read mid-run
        loading.load_arrays("digits", "train", data_dir=str(digits_dir))

    shutil.rmtree(cache)  # the fix the message gives
    loading.check_dataset("digits", digits_dir)
    x = loading.load_arrays("digits", "train", data_dir=str(digits_dir))["x"]
    assert x.shape[0] == 1437 and np.isfinite(x).all()
