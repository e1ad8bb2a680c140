"""run.compilation_cache: compiled executables land on disk (and are read back by later
processes); a directory that cannot be made is one clear error."""

import os
import subprocess
import sys

import pytest

from meta_train import compile_cache


def test_a_compilation_is_written_to_the_cache_directory(tmp_path):
    cache = str(tmp_path / "cache")
    code = (
        "import jax, jax.numpy as jnp\n"
        "from meta_train import compile_cache\n"
        f"compile_cache.enable({cache!r}, min_compile_s=0.0)\n"
        "jax.jit(lambda x: jnp.tanh(x) * 2.0)(jnp.ones(3)).block_until_ready()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert any(name.startswith("jit_") for name in os.listdir(cache))


def test_no_directory_is_off_and_a_bad_one_is_a_clear_error(tmp_path):
    assert compile_cache.enable(None) is None and compile_cache.enable("") is None
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="run.compilation_cache=.*cannot create the directory"):
        compile_cache.enable(str(blocker / "cache"))
