"""One tiny evaluation, run once per session through the real CLI and shared by the tests.

Suite (YAML, so the YAML path is exercised): two 8-d noisy quadratics with curvature 1 and 100
(same shapes: one compiled program per optimizer serves both) and a mu-P MLP on digits.
Optimizers: tuned AdamW and SGD-momentum (small grids), SGD-momentum at LR 1e-6 (deliberately
bad), at LR 1 (diverges on the curvature-100 quadratic only), and a learned-optimizer checkpoint.
"""

import jax
import pytest

STEPS = 60
SEEDS = 2
SUITE_YAML = f"""
name: tiny
tasks:
  - kind: quadratic
    name: quad_c1
    dim: 8
    min_curvature: 1.0
    max_curvature: 1.0
    horizon: {STEPS}
  - kind: quadratic
    name: quad_c100
    dim: 8
    min_curvature: 100.0
    max_curvature: 100.0
    horizon: {STEPS}
  - kind: mlp
    name: mlp_digits
    dataset: digits
    width: 16
    depth: 2
    batch_size: 32
    horizon: 40
"""
GRIDS = ["adamw=1e-3:1e-1:3", "sgd-momentum=1e-4:1e-1:4"]


@pytest.fixture(scope="session")
def checkpoint_path(tmp_path_factory):
    import learned_opt

    arch = learned_opt.MLPLOpt(hidden_sizes=(4,), mup=True)
    theta = arch.init_theta(jax.random.key(0))
    return str(learned_opt.save(tmp_path_factory.mktemp("ckpt") / "lo.safetensors", arch, theta))


@pytest.fixture(scope="session")
def suite_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("suite") / "tiny.yaml"
    path.write_text(SUITE_YAML, encoding="utf-8")
    return str(path)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    from tasks.data.loading import prepare

    path = tmp_path_factory.mktemp("tfds_data")
    prepare("digits", path)
    return str(path)


@pytest.fixture(scope="session")
def evaluation(tmp_path_factory, suite_file, checkpoint_path, data_dir):
    """(out_dir, results dict, report.md text) of `lopt evaluate` on the tiny suite."""
    from meta_train.cli import main
    from meta_train.evaluation.report import read_results

    out = tmp_path_factory.mktemp("eval")
    argv = ["evaluate", "--suite", suite_file, "--out", str(out), "--seeds", str(SEEDS),
            "--data-dir", data_dir, "--optimizer", "sgd-momentum", "--optimizer",
            "sgd-momentum@1e-6", "--optimizer", "sgd-momentum@1", "--optimizer", checkpoint_path]
    for g in GRIDS:
        argv += ["--lr-grid", g]
    assert main(argv) == 0
    return out, read_results(out), (out / "report.md").read_text(encoding="utf-8")
