"""Datasets through tensorflow-datasets' array_record `data_source` path (no TensorFlow)."""

from tasks.data.catalog import DATASETS, LOCAL_DATASETS, DatasetSpec, get_spec
from tasks.data.device_data import ArrayData
from tasks.data.loading import load_arrays, load_tokens, prepare
from tasks.data.paths import DatasetNotPreparedError, default_data_dir
from tasks.data.streaming import TruncationStream

__all__ = [
    "ArrayData", "DATASETS", "DatasetNotPreparedError", "DatasetSpec", "LOCAL_DATASETS",
    "TruncationStream", "default_data_dir", "get_spec", "load_arrays", "load_tokens", "prepare",
]
