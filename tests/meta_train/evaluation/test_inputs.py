"""Bad input says what is valid (exit status 2, no traceback); the suite YAML format parses."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from meta_train.cli import main
from meta_train.evaluation.baselines import BASELINES
from meta_train.evaluation.suites import SuiteError, load_suite_yaml, resolve_suite


def _evaluate(capsys, tmp_path, *args):
    rc = main(["evaluate", "--out", str(tmp_path / "out"), *args])
    return rc, capsys.readouterr().err


def test_unknown_optimizer_lists_the_valid_ones(capsys, tmp_path):
    rc, err = _evaluate(capsys, tmp_path, "--optimizer", "adamm", "--suite", "in_distribution")
    assert rc == 2 and "Unknown optimizer 'adamm'" in err and "Traceback" not in err
    for name in BASELINES:
        assert name in err


def test_unknown_suite_lists_the_valid_ones(capsys, tmp_path):
    rc, err = _evaluate(capsys, tmp_path, "--optimizer", "adamw", "--suite", "nope")
    assert rc == 2 and "Unknown suite 'nope'" in err
    assert "in_distribution" in err and "generalization" in err and "YAML" in err


def test_incompatible_checkpoint_architecture_says_so(capsys, tmp_path, checkpoint_path):
    with safetensors.safe_open(checkpoint_path, framework="numpy") as f:
        header = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    header["architecture"] = "velo_v9"  # an architecture this learned-opt does not know
    bad = tmp_path / "other_arch.safetensors"
    safetensors.numpy.save_file(tensors, str(bad), metadata=header)
    rc, err = _evaluate(capsys, tmp_path, "--optimizer", str(bad), "--suite", "in_distribution")
    assert rc == 2 and "velo_v9" in err and "architecture" in err and "Traceback" not in err


def test_checkpoint_with_mismatched_arrays_says_so(capsys, tmp_path, checkpoint_path):
    with safetensors.safe_open(checkpoint_path, framework="numpy") as f:
        header = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(header["config"])
    config["hidden_sizes"] = [8]  # the arrays were saved for hidden_sizes (4,)
    header["config"] = json.dumps(config)
    bad = tmp_path / "mismatch.safetensors"
    safetensors.numpy.save_file(tensors, str(bad), metadata=header)
    rc, err = _evaluate(capsys, tmp_path, "--optimizer", str(bad), "--suite", "in_distribution")
    assert rc == 2 and "do not match architecture" in err


@pytest.mark.parametrize("args, expected", [
    (["--optimizer", "sgd-momentum@-1"], "positive number"),
    (["--optimizer", "adamw", "--lr-grid", "adamw=1e-1:1e-3:3"], "low <= high"),
    (["--optimizer", "adamw", "--lr-grid", "nadam=1e-3:1e-1:3"], "not baselines"),
    (["--optimizer", "adamw", "--optimizer", "lion", "--optimizer", "lion"], "given twice"),
    (["--optimizer", "adamw", "--seeds", "0"], "--seeds"),
    (["--optimizer", "adamw", "--extend-lr-grid", "-1"], "--extend-lr-grid must be >= 0"),
])
def test_bad_flags(capsys, tmp_path, args, expected):
    rc, err = _evaluate(capsys, tmp_path, *args, "--suite", "in_distribution")
    assert rc == 2 and expected in err, err


def _yaml(tmp_path, text):
    path = tmp_path / "suite.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_suite_every_kind(tmp_path):
    suite = load_suite_yaml(_yaml(tmp_path, """
tasks:
  - {kind: builtin, entry: mlp_mnist1d_w128_d3_h1000, horizon: 200}
  - {kind: mlp, dataset: digits, width: 512, depth: 8, horizon: 2000}
  - {kind: cnn, dataset: digits, width: 16, depth: 2, horizon: 100}
  - {kind: transformer, dataset: stdlib_chars, width: 64, depth: 1, horizon: 100, batch_size: 8}
  - {kind: quadratic, min_curvature: 0.1, max_curvature: 10, horizon: 50, dim: 4}
  - {kind: autoencoder, dataset: mnist1d, width: 32, depth: 2, horizon: 100, code_dim: 4}
"""))
    assert suite.name == "suite"
    names = [e.name for e in suite.entries]
    assert names[0] == "mlp_mnist1d_w128_d3_h200" and suite.entries[0].horizon == 200
    assert suite.entries[0].multipliers.horizon == 0.2
    mlp = suite.entries[1].multipliers
    assert (mlp.width, mlp.depth, mlp.horizon) == (2.0, 2.0, 2.0)
    assert suite.entries[2].multipliers.width is None
    assert suite.entries[4].spec.build().curvature.shape == (4,)
    ae = suite.entries[5]
    assert ae.name == "autoencoder_mnist1d_w32_d2_h100" and ae.spec.model.code_dim == 4


@pytest.mark.parametrize("text, expected", [
    ("tasks: []", "non-empty list"),
    ("tasks:\n  - {kind: resnet}", "'kind' one of"),
    ("tasks:\n  - {kind: mlp, dataset: digits, width: 8, depth: 1}", "missing ['horizon']"),
    ("tasks:\n  - {kind: quadratic, min_curvature: 1, max_curvature: 1, horizon: 5, wdith: 3}",
     "unknown ['wdith']"),
    ("tasks:\n  - {kind: builtin, entry: nope}", "unknown built-in entry"),
    ("tasks:\n  - {kind: quadratic, min_curvature: 1, max_curvature: 1, horizon: 5}\n"
     "  - {kind: quadratic, min_curvature: 1, max_curvature: 1, horizon: 5}", "duplicate"),
])
def test_malformed_yaml_suite(tmp_path, text, expected):
    with pytest.raises(SuiteError, match=None) as info:
        load_suite_yaml(_yaml(tmp_path, text))
    assert expected in str(info.value)


def test_builtin_suites_resolve():
    assert [e.name for e in resolve_suite("in_distribution").entries]
    with pytest.raises(SuiteError, match="does not exist"):
        resolve_suite("missing.yaml")


def test_mu_adam_scales_hidden_matrices_by_base_width_over_fan_in():
    from tasks.models.mlp import MLPConfig

    class _Task:
        model = MLPConfig(width=256, depth=2, num_classes=10)

    params = _Task.model.module().init(jax.random.key(0), jnp.zeros((1, 5)))["params"]
    grads = jax.tree.map(jnp.ones_like, params)
    updates = {}
    for name in ("adamw", "mu-adam"):
        tx = BASELINES[name].make(0.1, params, _Task(), 100)
        updates[name], _ = tx.update(grads, tx.init(params), params)
    ratio = jax.tree.map(lambda a, b: float(jnp.mean(a / b)), updates["mu-adam"], updates["adamw"])
    assert np.isclose(ratio["hidden_1"]["kernel"], 64 / 256, rtol=1e-3)
    for path in (("input", "kernel"), ("readout", "dense", "kernel"), ("hidden_1", "bias")):
        leaf = ratio
        for p in path:
            leaf = leaf[p]
        assert np.isclose(leaf, 1.0, rtol=1e-3), path


def test_adamw_cosine_warms_up_then_decays_to_zero_at_the_last_step():
    params = {"w": jnp.zeros(3)}
    grads = {"w": jnp.ones(3)}
    tx = BASELINES["adamw-cosine"].make(0.1, params, None, 100)
    state, sizes = tx.init(params), []
    for _ in range(100):
        u, state = tx.update(grads, state, params)
        sizes.append(float(jnp.abs(u["w"][0])))
    assert sizes[0] == 0.0 and sizes[2] < sizes[5]  # warm-up over the first 5 steps
    np.testing.assert_allclose(max(sizes), 0.1, rtol=1e-3)  # the peak is the tuned LR
    assert sizes[-1] < 1e-3 * max(sizes) and sizes[50] < 0.6 * max(sizes)


def test_unwritable_out_fails_before_any_compute(capsys, tmp_path):
    (tmp_path / "taken").write_text("a file, not a directory")
    rc = main(["evaluate", "--out", str(tmp_path / "taken"), "--optimizer", "adamw", "--suite", "in_distribution"])
    err = capsys.readouterr().err
    assert rc == 2 and "is not a writable directory" in err and "Traceback" not in err


def test_tasks_skipped_for_missing_data_make_a_non_zero_exit(capsys, tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text("tasks:\n  - kind: mlp\n    dataset: mnist\n    width: 8\n    depth: 1\n    horizon: 5\n")
    rc, err = _evaluate(capsys, tmp_path, "--optimizer", "adamw", "--suite", str(suite),
                        "--data-dir", str(tmp_path / "empty"))
    assert rc == 1 and "1 task(s) skipped" in err and "mnist" in err
