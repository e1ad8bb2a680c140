"""The driver end to end: learning, resume after a kill, export, metrics files, CLI, configs."""

import dataclasses
import os
import re

import jax
import numpy as np
import pytest
from tests.meta_train.toy_lopt import MomentumLOpt

import learned_opt
from meta_train import cli, families, metrics as metrics_lib
from meta_train.config import ConfigError, load_config
from meta_train.train import WorkdirError, meta_train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(REPO, "configs", "smoke.yaml")

TOY_OVERRIDES = [
    "tasks.kwargs.dim=4", "tasks.pool_size=4", "estimator.num_pairs=8", "estimator.sigma=0.01",
    "unroll.truncation_length=4", "unroll.min_horizon=16", "unroll.max_horizon=48",
    "run.progress=false", "run.checkpoint_every=100",
]


def toy_config(*extra):
    return load_config(SMOKE, TOY_OVERRIDES + list(extra))


def test_meta_loss_falls_with_toy_optimizer(tmp_path):
    """Starting from a learning rate 20x too small, PES raises it and the meta-loss falls."""
    config = toy_config("run.num_steps=60", "outer.learning_rate=0.1", "outer.warmup_steps=0")
    result = meta_train(config, str(tmp_path), arch=MomentumLOpt(init_lr=0.005))
    rows = metrics_lib.read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
    loss = np.array([r["meta_loss"] for r in rows])
    assert len(rows) == 60 and [r["step"] for r in rows] == list(range(1, 61))
    assert loss[-15:].mean() < 0.7 * loss[:15].mean()
    assert float(result.theta["log_lr"]) > np.log(0.005) + 0.5
    assert result.export_path is None  # the toy architecture is not exportable; MLPLOpt is


def test_resumed_run_ends_with_same_theta_as_uninterrupted(tmp_path):
    config = toy_config("run.num_steps=6", "estimator.name=pes")
    arch = MomentumLOpt()
    full = meta_train(config, str(tmp_path / "full"), arch=arch)

    def kill_at_3(step, metrics):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        meta_train(config, str(tmp_path / "killed"), arch=arch, on_step=kill_at_3)
    assert sorted(os.listdir(tmp_path / "killed" / "checkpoints")) == ["3"]  # saved at exit
    with pytest.raises(WorkdirError, match="--resume"):
        meta_train(config, str(tmp_path / "killed"), arch=arch)
    resumed = meta_train(config, str(tmp_path / "killed"), arch=arch, resume=True)
    assert resumed.step == 6
    for a, b in zip(jax.tree.leaves(full.theta), jax.tree.leaves(resumed.theta)):
        np.testing.assert_array_equal(a, b)
    rows = metrics_lib.read_jsonl(str(tmp_path / "killed" / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]


def test_cli_smoke_with_mlp_lopt_exports_loadable_theta(tmp_path, capsys):
    workdir = str(tmp_path / "run")
    # Warm-started from a file that is gone by export time: export must not need it.
    smoke = load_config(SMOKE)
    arch0 = families.make_architecture(smoke.optimizer.architecture, smoke.optimizer.kwargs)
    start = tmp_path / "start.safetensors"
    learned_opt.save(start, arch0, arch0.init_theta(jax.random.key(3)))
    rc = cli.main(["meta-train", SMOKE, "--workdir", workdir, "run.num_steps=3", "--init-theta", str(start),
                   "run.checkpoint_every=2", "run.progress=false"])
    assert rc == 0
    os.remove(start)
    arch, theta, meta = learned_opt.load_theta(os.path.join(workdir, "theta.safetensors"))
    assert isinstance(arch, learned_opt.MLPLOpt)
    assert meta["meta_train_step"] == 3 and meta["recipe"]["run"]["num_steps"] == 3
    assert meta["compute"]["outer_steps"] == 3 and meta["compute"]["inner_steps"] > 0
    assert meta["compute"]["wall_s"] > 0 and "git_commit" in meta  # None outside a git checkout
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(theta))
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "3"]
    rows = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert {"meta_loss", "outer/grad_norm", "total/unroll_diverged", "perf/inner_steps_per_s"} <= set(rows[-1])
    assert any(f.startswith("events") for f in os.listdir(os.path.join(workdir, "tensorboard")))
    assert "exported learned optimizer" in capsys.readouterr().out

    # lopt export: checkpoint 3 is the final theta; checkpoint 2 is an earlier one.
    assert cli.main(["export", workdir, "--out", str(tmp_path / "t3.safetensors")]) == 0
    assert cli.main(["export", workdir, "--step", "2", "--standing", "untested"]) == 0
    _, theta3, meta3 = learned_opt.load_theta(str(tmp_path / "t3.safetensors"))
    _, theta2, meta2 = learned_opt.load_theta(os.path.join(workdir, "theta_step2.safetensors"))
    assert (meta3["meta_train_step"], meta2["meta_train_step"]) == (3, 2) and meta2["standing"] == "untested"
    assert meta2["compute"]["inner_steps"] * 3 == meta3["compute"]["inner_steps"] * 2
    for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(theta3)):
        np.testing.assert_array_equal(a, b)
    assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(theta2)))
    assert cli.main(["export", workdir, "--step", "1"]) == 2
    assert "holds steps [2, 3]" in capsys.readouterr().err
    assert cli.main(["export", str(tmp_path)]) == 2
    assert "not a meta-training workdir" in capsys.readouterr().err
    # Resuming (here: extending) needs the checkpoint, not the gone warm-start file.
    assert cli.main(["meta-train", SMOKE, "--workdir", workdir, "--resume", "run.num_steps=4",
                     "--init-theta", str(start), "run.checkpoint_every=2", "run.progress=false"]) == 0
    assert learned_opt.load_theta(os.path.join(workdir, "theta.safetensors"))[2]["meta_train_step"] == 4


@pytest.mark.parametrize("name", ["smoke.yaml", "quickstart.yaml", "pretrain_small.yaml", "pretrain_schedule.yaml",
                                  "pretrain_schedule_decay.yaml", "pretrain_controller.yaml",
                                  "pretrain_linear_controller.yaml", "pretrain_linear_decay.yaml",
                                  "pretrain_mixed.yaml", "pretrain_depth.yaml", "pretrain_velo.yaml",
                                  "pretrain_velo_decay.yaml", "pretrain_velo_mixed.yaml", "pretrain_velo_bc.yaml",
                                  "pretrain_velo_early.yaml"])
def test_shipped_configs_load(name):
    config = load_config(os.path.join(REPO, "configs", name))
    assert config.run.num_steps > 0
    families.make_family(config.tasks.family, config.tasks.kwargs)  # task kwargs valid (no data read)
    families.make_architecture(config.optimizer.architecture, config.optimizer.kwargs)  # kwargs valid
    assert dataclasses.is_dataclass(config.unroll)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("unroll.truncaton_length=3", "unknown key 'unroll.truncaton_length'"),
        ("unroll.truncation_length=abc", "'unroll.truncation_length': expected int"),
        ("run.progress=maybe", "'run.progress': expected bool"),
        ("outer.learning_rate=fast", "'outer.learning_rate': expected float"),
        ("unroll.meta_loss=median", "meta_loss='median'"),
        ("estimator.num_pairs", "not of the form key.sub=value"),
        ("run.checkpoint_every=0", "run.checkpoint_every=0; expected >= 1"),
        ("run.log_every=0", "run.log_every=0; expected >= 1"),
        ("run.num_steps=-1", "run.num_steps=-1; expected >= 1"),
        ("estimator.num_pairs=0", "estimator.num_pairs=0; expected >= 1"),
        ("estimator.sigma=0", "estimator.sigma=0.0; expected a finite value > 0"),
        ("tasks.pool_size=0", "tasks.pool_size=0; expected >= 1"),
        ("outer.learning_rate=inf", "outer.learning_rate=inf; expected a finite value > 0"),
        ("unroll.meta_loss_clip=-2", "meta_loss_clip=-2.0"),
        ("estimator.name=pess", "estimator.name='pess'; expected one of"),
        ("estimator.difference=sgn", "estimator.difference='sgn'; expected 'value'"),
        ("optimizer.architecture=velo9", "Unknown architecture 'velo9'"),
        ("tasks.family=cifar", "Unknown task family 'cifar'"),
        ("optimizer.kwargs.hidden_sizes=[0]", "hidden_sizes=(0,): expected a non-empty tuple"),
    ],
)
def test_bad_config_names_key_and_expected_type(override, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(SMOKE, [override])


def test_cli_reports_config_errors(capsys, tmp_path):
    rc = cli.main(["meta-train", SMOKE, "--workdir", str(tmp_path), "estimator.nme=pes"])
    assert rc == 2
    assert "estimator.nme" in capsys.readouterr().err


@pytest.mark.parametrize("estimator", ["pes", "tbptt"])
def test_frozen_parts_of_theta_never_move(tmp_path, estimator):
    config = toy_config("run.num_steps=8", "outer.learning_rate=0.1", "outer.warmup_steps=0",
                        "outer.weight_decay=0.1", f"estimator.name={estimator}", "optimizer.trainable=[log_lr]")
    arch = MomentumLOpt(init_lr=0.005)
    result = meta_train(config, str(tmp_path), arch=arch)
    start = arch.init_theta(None)
    np.testing.assert_array_equal(result.theta["logit_beta"], start["logit_beta"])
    assert float(result.theta["log_lr"]) > float(start["log_lr"]) + 0.3


def test_unknown_trainable_part_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"\['lr'\] are not top-level parts of theta"):
        meta_train(toy_config("optimizer.trainable=[lr]"), str(tmp_path), arch=MomentumLOpt())


def test_warm_start_takes_the_exported_arrays_and_keeps_new_parts(tmp_path):
    from meta_train import recipe

    arch = learned_opt.ARCHITECTURES["mlp_small"]
    theta = arch.init_theta(jax.random.key(7))
    theta["log_step"] = theta["log_step"] + 1.5
    path = learned_opt.save(tmp_path / "phase1.safetensors", arch, theta)
    config = load_config(SMOKE, ["optimizer.architecture=mlp_small", f"optimizer.init_theta={path}",
                                 "optimizer.kwargs.fraction_offsets=[0.5,1.0]"])
    with_schedule = families.make_architecture("mlp_small", {"fraction_offsets": [0.5, 1.0]})
    started = recipe.initial_theta(config, with_schedule)
    fresh = recipe.initial_theta(dataclasses.replace(
        config, optimizer=dataclasses.replace(config.optimizer, init_theta=None)), with_schedule)
    assert float(started["log_step"]) == 1.5
    for a, b in zip(jax.tree.leaves(started["mlp"]), jax.tree.leaves(theta["mlp"])):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(started["schedule"]), jax.tree.leaves(fresh["schedule"])):
        np.testing.assert_array_equal(a, b)
    wider = families.make_architecture("mlp_small", {"hidden_sizes": [8]})
    with pytest.raises(ValueError, match="theta\\['mlp'\\] has shapes"):
        recipe.initial_theta(config, wider)


def test_resume_needs_a_run_to_resume(tmp_path):
    with pytest.raises(WorkdirError, match="holds no meta-training run"):
        meta_train(toy_config(), str(tmp_path / "missing"), arch=MomentumLOpt(), resume=True)
    os.makedirs(tmp_path / "empty" / "checkpoints")
    with pytest.raises(WorkdirError, match="holds no checkpoint yet"):
        meta_train(toy_config(), str(tmp_path / "empty"), arch=MomentumLOpt(), resume=True)


def test_torn_last_metrics_line_is_dropped_and_earlier_damage_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "meta_loss": 0.5}\n{"step": 2, "meta_lo')
    assert metrics_lib.read_jsonl(str(path)) == [{"step": 1, "meta_loss": 0.5}]
    path.write_text('{"step": 1, "meta_lo\n{"step": 2, "meta_loss": 0.5}\n')
    with pytest.raises(ValueError, match="line 1 is not JSON"):
        metrics_lib.read_jsonl(str(path))


def test_a_run_where_every_member_diverges_exits_non_zero(tmp_path, capsys):
    # A learning rate of 1e4 on the noisy quadratic: every truncation blows up.
    rc = cli.main(["meta-train", SMOKE, "--workdir", str(tmp_path), *TOY_OVERRIDES, "run.num_steps=2",
                   "optimizer.architecture=mlp_small", "optimizer.kwargs.step_mult=1e4"])
    out = capsys.readouterr().out
    assert rc == 1 and "nothing was learned" in out
    assert "meta-gradients dropped 16" in out.replace("\n", " ")
