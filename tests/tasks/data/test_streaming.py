import numpy as np
import pytest

from tasks.data.loading import load_arrays
from tasks.data.streaming import TruncationStream


def test_stream_yields_stacked_truncations_deterministically(data_dir):
    arrays = load_arrays("mnist1d", "train", data_dir=data_dir)
    with TruncationStream(arrays, batch_size=8, steps=5, population=3, seed=1) as stream:
        first, second = next(stream), next(stream)
    assert first["x"].shape == (3, 5, 8, 40) and first["y"].shape == (3, 5, 8)
    assert first["x"].dtype == np.float32
    with TruncationStream(arrays, batch_size=8, steps=5, population=3, seed=1,
                          device_put=False) as again:
        np.testing.assert_array_equal(np.asarray(first["y"]), next(again)["y"])
    assert not np.array_equal(np.asarray(first["y"]), np.asarray(second["y"]))


def test_one_epoch_visits_every_row_once():
    arrays = {"i": np.arange(40)}
    with TruncationStream(arrays, batch_size=4, steps=10, seed=0, device_put=False) as s:
        rows = next(s)["i"]
    assert sorted(rows.ravel().tolist()) == list(range(40))


def test_stream_rejects_mismatched_arrays():
    with pytest.raises(ValueError, match="leading size"):
        TruncationStream({"x": np.zeros(3), "y": np.zeros(4)}, batch_size=1, steps=1)
