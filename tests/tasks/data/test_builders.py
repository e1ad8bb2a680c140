import hashlib
import sys
import time

import numpy as np
import pytest

from tasks.data import catalog, loading
from tasks.data.paths import DatasetNotPreparedError

EXPECTED = {  # name: (split sizes, x shape, x dtype)
    "mnist1d": ({"train": 4000, "test": 1000}, (40,), np.float32),
    "digits": ({"train": 1437, "test": 360}, (8, 8, 1), np.uint8),
}


def content_hash(version_dir) -> str:
    """Hash of the decoded records of every split, in index order."""
    import tensorflow_datasets as tfds

    digest = hashlib.sha256()
    sources = tfds.builder_from_directory(str(version_dir)).as_data_source()
    for split in sorted(sources):
        source = sources[split]
        for record in source.__getitems__(list(range(len(source)))):
            for key in sorted(record):
                digest.update(key.encode())
                digest.update(np.asarray(record[key]).tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("name", catalog.LOCAL_DATASETS)
def test_local_builder_is_deterministic(name, data_dir, tmp_path):
    first = loading.prepare(name, data_dir)
    second = loading.build_local(catalog.get_spec(name), tmp_path)
    assert first != second
    assert content_hash(first) == content_hash(second)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_classification_loader_shapes_and_dtypes(name, data_dir):
    sizes, x_shape, x_dtype = EXPECTED[name]
    for split, n in sizes.items():
        arrays = loading.load_arrays(name, split, data_dir=data_dir)
        assert arrays["x"].shape == (n, *x_shape) and arrays["x"].dtype == x_dtype
        assert arrays["y"].shape == (n,) and arrays["y"].dtype == np.int32
        assert set(np.unique(arrays["y"])) == set(range(10))
    assert "tensorflow" not in sys.modules


def test_text_loader_gives_byte_tokens(data_dir):
    train = loading.load_tokens("stdlib_chars", "train", data_dir=data_dir)
    test = loading.load_tokens("stdlib_chars", "test", data_dir=data_dir)
    assert train.dtype == np.uint8 and train.ndim == 1
    assert train.size > 500_000 and test.size > 50_000
    assert b"def " in bytes(train[:200_000])
    assert "tensorflow" not in sys.modules


def test_generated_language_is_text_unlike_the_held_out_stdlib(data_dir):
    from tasks.data.synthetic_text_builder import generate_documents

    train = bytes(loading.load_tokens("synth_chars", "train", data_dir=data_dir))
    test = bytes(loading.load_tokens("synth_chars", "test", data_dir=data_dir))
    assert len(train) > 1_000_000 and len(test) > 100_000
    assert b"def " not in train and b"import" not in train  # not code: no stdlib text in it
    words = train.split()
    assert len(set(words)) > 1000 and train.count(b". ") > 1000
    assert generate_documents(3, seed=1) == generate_documents(3, seed=1) != generate_documents(3)
    # The same corpus on every machine: pinned to the text it had when meta-training first used it.
    assert generate_documents(1)[0].startswith("Yweybwk vkmlkmz gjiz vrdf? Gjifuxal ksljsw inily")


def test_loader_rejects_wrong_kind(data_dir):
    with pytest.raises(ValueError, match="load_tokens"):
        loading.load_arrays("stdlib_chars", "train", data_dir=data_dir)
    with pytest.raises(ValueError, match="Unknown dataset 'nope'"):
        loading.load_arrays("nope", "train", data_dir=data_dir)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "tiny_shakespeare"])
def test_missing_real_dataset_fails_fast_with_instructions(name, tmp_path):
    start = time.perf_counter()
    with pytest.raises(DatasetNotPreparedError) as error:
        loading.load_arrays(name, "train", data_dir=tmp_path) if name != "tiny_shakespeare" \
            else loading.load_tokens(name, "train", data_dir=tmp_path)
    assert time.perf_counter() - start < 5.0
    message = str(error.value)
    assert repr(name) in message and str(tmp_path) in message and "tfds build" in message
    assert not (tmp_path / name).exists()  # nothing half-created


def test_default_data_dir_follows_env(monkeypatch, tmp_path):
    from tasks.data.paths import default_data_dir

    monkeypatch.setenv("LEARNED_OPT_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.delenv("LEARNED_OPT_DATA_DIR")
    assert default_data_dir().parts[-3:] == (".cache", "learned_opt", "tensorflow_datasets")
