"""One data dir per test session: local datasets are built once and shared by all task tests."""

import pytest


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    from tasks.data.loading import prepare

    path = tmp_path_factory.mktemp("tfds_data")
    for name in ("mnist1d", "digits", "stdlib_chars", "synth_chars"):
        prepare(name, path)
    return str(path)
