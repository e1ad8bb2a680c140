"""The .safetensors checkpoint format: exact round trips and a clear error for every bad input."""

import json
import os
import time

import jax
import numpy as np
import pytest
import safetensors.numpy

import learned_opt
from learned_opt import checkpoint


@pytest.fixture
def saved(tmp_path):
    arch = learned_opt.MLPLOpt(hidden_sizes=(8, 4), mup=True)
    theta = jax.tree.map(lambda x: x + 0.01, arch.init_theta(jax.random.key(3)))
    path = learned_opt.save(tmp_path / "opt.safetensors", arch, theta, metadata={"recipe": "smoke", "steps": 7})
    return path, arch, theta


def test_round_trip_is_bit_exact(saved):
    path, arch, theta = saved
    arch2, theta2, meta = learned_opt.load_theta(path)
    assert arch2 == arch
    assert meta == {"recipe": "smoke", "steps": 7}
    assert jax.tree.structure(theta2) == jax.tree.structure(theta)
    for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(theta2)):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))


def test_load_returns_a_working_optax_transform(saved):
    path, arch, theta = saved
    params = {"w": jax.numpy.ones((5, 3))}
    grads = {"w": jax.numpy.full((5, 3), 0.5)}
    tx = learned_opt.load(path)
    ref = learned_opt.to_optax(arch, theta)
    u, _ = tx.update(grads, tx.init(params), params)
    u_ref, _ = ref.update(grads, ref.init(params), params)
    np.testing.assert_array_equal(u["w"], u_ref["w"])
    tx16 = learned_opt.load(path, accumulator_dtype="bfloat16")
    assert jax.tree.leaves(tx16.init(params).accumulators)[0].dtype == jax.numpy.bfloat16
    exact = learned_opt.load(path, normalizer_samples=0)  # small params: the same update
    np.testing.assert_allclose(exact.update(grads, exact.init(params), params)[0]["w"], u_ref["w"], rtol=1e-6)
    with pytest.raises(ValueError, match="normalizer_samples=-1"):
        learned_opt.load(path, normalizer_samples=-1)


def test_pretrained_names_are_found(saved, monkeypatch, tmp_path):
    path, arch, _ = saved
    monkeypatch.setenv("LEARNED_OPT_PRETRAINED_DIR", str(tmp_path))
    assert learned_opt.list_pretrained() == ["opt"]
    assert learned_opt.load_theta("opt")[0] == arch


def test_unknown_name_lists_available(saved, monkeypatch, tmp_path):
    monkeypatch.setenv("LEARNED_OPT_PRETRAINED_DIR", str(tmp_path))
    with pytest.raises(ValueError, match=r"Unknown pretrained optimizer 'nope'.*\['opt'\]"):
        learned_opt.load("nope")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint file"):
        learned_opt.load(tmp_path / "absent.safetensors")


@pytest.mark.parametrize("keep", [0, 7, 100, -50])
def test_truncated_file(saved, tmp_path, keep):
    path, _, _ = saved
    data = path.read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        learned_opt.load_theta(bad)


def test_flipped_bytes_in_arrays_are_detected(saved, tmp_path):
    path, _, _ = saved
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside the last array's bytes; the header still parses
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt"):
        learned_opt.load_theta(bad)


def _rewrite(path, out, *, header_update=None, tensors_update=None):
    with safetensors.safe_open(str(path), framework="numpy") as f:
        header = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors.update(tensors_update or {})
    header.update(header_update or {})
    header["sha256"] = checkpoint._digest(tensors)
    safetensors.numpy.save_file(tensors, str(out), metadata=header)
    return out


def test_wrong_format_version(saved, tmp_path):
    bad = _rewrite(saved[0], tmp_path / "v9.safetensors", header_update={"format_version": "9"})
    with pytest.raises(ValueError, match="format_version '9'.*reads version 2"):
        learned_opt.load_theta(bad)


def test_bad_provenance_names_the_file(saved, tmp_path):
    bad = _rewrite(saved[0], tmp_path / "prov.safetensors", header_update={"provenance": "{not json"})
    with pytest.raises(ValueError, match=r"prov.safetensors' has an invalid provenance field"):
        learned_opt.load_theta(bad)


def test_shapes_not_matching_architecture(saved, tmp_path):
    path, arch, _ = saved
    wider = json.dumps({**json.loads(json.dumps(arch.__dict__)), "hidden_sizes": [16, 4]})
    bad = _rewrite(path, tmp_path / "shape.safetensors", header_update={"config": wider})
    with pytest.raises(ValueError, match=r"'mlp/0/w' has shape \(39, 8\) dtype float32, expected shape \(39, 16\)"):
        learned_opt.load_theta(bad)


def test_missing_array(saved, tmp_path):
    path, _, _ = saved
    with safetensors.safe_open(str(path), framework="numpy") as f:
        header = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys() if k != "skip"}
    header["sha256"] = checkpoint._digest(tensors)
    bad = tmp_path / "missing.safetensors"
    safetensors.numpy.save_file(tensors, str(bad), metadata=header)
    with pytest.raises(ValueError, match=r"missing arrays \['skip'\]"):
        learned_opt.load_theta(bad)


def test_unknown_architecture_and_not_a_checkpoint(saved, tmp_path):
    bad = _rewrite(saved[0], tmp_path / "arch.safetensors", header_update={"architecture": "velo"})
    with pytest.raises(ValueError, match="architecture 'velo'"):
        learned_opt.load_theta(bad)
    plain = tmp_path / "plain.safetensors"
    safetensors.numpy.save_file({"x": np.zeros(3, np.float32)}, str(plain))
    with pytest.raises(ValueError, match="not a learned-opt checkpoint"):
        learned_opt.load_theta(plain)


def test_unknown_load_option(saved):
    with pytest.raises(TypeError, match="Unknown load option"):
        learned_opt.load(saved[0], hidden_sizes=(3,))


def test_saved_file_is_readable_by_others_like_any_file(saved):
    import stat

    mode = stat.S_IMODE(os.stat(saved[0]).st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_save_is_atomic_and_leaves_no_temp_files(saved, tmp_path, monkeypatch):
    path, arch, theta = saved
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        learned_opt.save(path, arch, jax.tree.map(lambda x: x * 2, theta))
    assert path.read_bytes() == before  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["opt.safetensors"]


def test_save_rejects_bad_path_and_metadata(tmp_path):
    arch = learned_opt.MLPLOpt(hidden_sizes=(4,))
    theta = arch.init_theta(jax.random.key(0))
    with pytest.raises(ValueError, match="must end in '.safetensors'"):
        learned_opt.save(tmp_path / "x.pkl", arch, theta)
    with pytest.raises(TypeError, match="JSON-serializable"):
        learned_opt.save(tmp_path / "x.safetensors", arch, theta, metadata={"t": time})
