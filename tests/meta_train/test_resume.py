"""--resume with damaged state: fallback past broken checkpoints, structure mismatches in one line,
and recipe changes refused unless named (issue 19). One toy run (checkpoints at steps 2 and 4) is
trained once per module; each test damages or resumes a copy of it."""

import glob
import logging
import os
import shutil

import jax
import numpy as np
import pytest
from tests.meta_train.test_learner import SMOKE, TOY_OVERRIDES, toy_config
from tests.meta_train.toy_lopt import MomentumLOpt

from meta_train import cli
from meta_train.checkpoint import Checkpointer, CheckpointMismatchError
from meta_train.config import RESUME_FREE_KEYS, config_changes, refused_changes, to_dict
from meta_train.train import WorkdirError, _restore_latest_good, build_run, meta_train

BASE = ("run.num_steps=4", "run.checkpoint_every=2")


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A finished 4-step toy run and its final theta."""
    workdir = str(tmp_path_factory.mktemp("base") / "run")
    result = meta_train(toy_config(*BASE), workdir, arch=MomentumLOpt())
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
    return workdir, result.theta


@pytest.fixture
def workdir(base_run, tmp_path):
    shutil.copytree(base_run[0], tmp_path / "run")
    return str(tmp_path / "run")


def _data_files(workdir, step):
    return sorted(glob.glob(os.path.join(workdir, "checkpoints", str(step), "default", "**", "d", "*"),
                            recursive=True))


def truncate_a_data_file(workdir, step):
    path = _data_files(workdir, step)[0]
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def delete_a_data_file(workdir, step):
    os.remove(_data_files(workdir, step)[0])


def delete_the_metadata(workdir, step):
    os.remove(os.path.join(workdir, "checkpoints", str(step), "default", "_METADATA"))


def make_theta_nan(workdir, step):
    """Rewrites checkpoint `step` whole and readable, but with a NaN in theta."""
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    tree = ckpt.restore(step, _template())
    shutil.rmtree(ckpt.step_dir(step))
    ckpt.close()
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    learner = tree["learner"]
    tree["learner"] = learner.replace(theta={**learner.theta, "log_lr": learner.theta["log_lr"] * np.nan})
    ckpt.save(step, tree)
    ckpt.close()


def _template(*extra, arch=None):
    return build_run(toy_config(*BASE, *extra), arch=arch or MomentumLOpt()).checkpoint_tree()


@pytest.mark.parametrize("damage", [truncate_a_data_file, delete_a_data_file, delete_the_metadata,
                                    make_theta_nan])
def test_damaged_latest_checkpoint_falls_back_to_the_previous(workdir, damage, caplog):
    damage(workdir, 4)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    with caplog.at_level(logging.WARNING, logger="meta_train.learner"):
        template = _template()
        step, tree = _restore_latest_good(ckpt, lambda step: template)
    assert step == 2 and int(tree["learner"].step) == 2
    warning = caplog.text.replace("\n", " ")
    assert "checkpoint at step 4 is damaged" in warning and "resuming from step 2" in warning
    assert ckpt.all_steps() == [2]  # set aside, so the resumed run can write step 4 again
    ckpt.close()
    assert os.path.isdir(os.path.join(workdir, "checkpoints.damaged", "4"))


def test_resume_past_a_truncated_checkpoint_redoes_the_steps_exactly(workdir, base_run):
    truncate_a_data_file(workdir, 4)
    resumed = meta_train(toy_config(*BASE), workdir, arch=MomentumLOpt(), resume=True)
    assert resumed.step == 4
    for a, b in zip(jax.tree.leaves(base_run[1]), jax.tree.leaves(resumed.theta)):
        np.testing.assert_array_equal(a, b)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
    with open(os.path.join(workdir, "learner.log"), encoding="utf-8") as f:
        assert "checkpoint at step 4 is damaged" in f.read()


def test_no_good_checkpoint_is_one_clear_error(workdir):
    truncate_a_data_file(workdir, 4)
    delete_the_metadata(workdir, 2)
    with pytest.raises(WorkdirError, match="no usable checkpoint") as err:
        meta_train(toy_config(*BASE), workdir, arch=MomentumLOpt(), resume=True)
    message = str(err.value)
    assert "step 4: " in message and "step 2: " in message and "\n" not in message
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]  # nothing moved


@pytest.mark.parametrize("extra, arch, path, stored, expected", [
    (("estimator.num_workers=2",), None, "'workers/1/", "absent", "float32[8, 2, 4]"),
    ((), MomentumLOpt(lr_shape=(4,)), "'learner/theta/log_lr'", "float32[]", "float32[4]"),
])
def test_structure_mismatch_names_the_first_differing_path(workdir, extra, arch, path, stored, expected):
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    with pytest.raises(CheckpointMismatchError) as err:
        ckpt.restore(4, _template(*extra, arch=arch))
    ckpt.close()
    message = str(err.value)
    assert "\n" not in message and path in message
    assert f"is {stored} there, this run expects {expected}" in message
    assert "num_workers" in message and "architecture" in message


def test_trajectory_changes_are_refused_listing_old_and_new(workdir):
    with open(os.path.join(workdir, "config.yaml"), encoding="utf-8") as f:
        before = f.read()
    config = toy_config(*BASE, "run.seed=1", "outer.learning_rate=0.01", "run.log_every=2")
    with pytest.raises(WorkdirError) as err:
        meta_train(config, workdir, arch=MomentumLOpt(), resume=True, allow_change=["run.seed"])
    message = str(err.value)
    assert "outer.learning_rate (0.001 -> 0.01)" in message
    assert "--allow-change outer.learning_rate " in message
    assert "run.seed" not in message and "log_every" not in message  # allowed; free
    with open(os.path.join(workdir, "config.yaml"), encoding="utf-8") as f:
        assert f.read() == before


def test_allowed_changes_are_applied_and_the_old_config_kept(workdir, caplog):
    with open(os.path.join(workdir, "config.yaml"), encoding="utf-8") as f:
        before = f.read()
    config = toy_config(*BASE, "outer.learning_rate=0.01", "run.log_every=2")
    with caplog.at_level(logging.WARNING, logger="meta_train.learner"):
        result = meta_train(config, workdir, arch=MomentumLOpt(), resume=True, allow_change=["outer"])
    assert result.step == 4
    with open(os.path.join(workdir, "config.4.yaml"), encoding="utf-8") as f:
        assert f.read() == before
    with open(os.path.join(workdir, "config.yaml"), encoding="utf-8") as f:
        assert "learning_rate: 0.01" in f.read()
    assert "outer.learning_rate (0.001 -> 0.01)" in caplog.text and "config.4.yaml" in caplog.text


def test_cli_allow_change_is_repeatable_and_comma_separated(workdir, capsys):
    argv = ["meta-train", SMOKE, "--workdir", workdir, "--resume", *TOY_OVERRIDES, *BASE,
            "outer.learning_rate=0.01", "run.seed=1", "estimator.sigma=0.02", "unroll.truncation_length=5"]
    rc = cli.main(argv + ["--allow-change", "outer.learning_rate,run.seed",
                          "--allow-change", "estimator.sigma"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "unroll.truncation_length (4 -> 5)" in err
    assert not any(k in err for k in ("outer.learning_rate", "run.seed", "estimator.sigma"))
    assert cli.main(argv + ["--allow-change", "outer.lr"]) == 2
    assert "--allow-change outer.lr: not a key" in capsys.readouterr().err
    rc = cli.main(["meta-train", SMOKE, "--workdir", workdir + "-new", "--allow-change", "run.seed"])
    assert rc == 2 and "only applies with --resume" in capsys.readouterr().err


def test_config_changes_ignore_new_defaults_and_free_keys():
    config = toy_config(*BASE)
    old = to_dict(config)
    del old["unroll"]["meta_loss_weight_power"]  # a field added after the run was written
    assert config_changes(old, config) == []
    changed = toy_config(*BASE, "run.num_steps=9", "eval.num_steps=3", "estimator.sigma=0.02",
                         "tasks.kwargs.dim=5", "distributed.threads_per_worker=2",
                         "distributed.mode=async")
    changes = config_changes(to_dict(config), changed)
    assert [k for k, _, _ in changes] == ["run.num_steps", "tasks.kwargs.dim", "estimator.sigma",
                                          "eval.num_steps", "distributed.mode",
                                          "distributed.threads_per_worker"]
    refused = ["tasks.kwargs.dim", "estimator.sigma", "distributed.mode"]
    assert [k for k, _, _ in refused_changes(changes, ())] == refused
    assert refused_changes(changes, ("tasks.kwargs", "estimator.sigma", "distributed")) == []
    assert "eval" in RESUME_FREE_KEYS and "run.seed" not in RESUME_FREE_KEYS
    # A resume takes theta from the checkpoint: the warm-start file, given or not, is no change.
    warm = toy_config(*BASE, "optimizer.init_theta=/elsewhere/theta.safetensors")
    assert refused_changes(config_changes(to_dict(warm), config), ()) == []


def test_export_names_the_missing_arrays_of_another_architecture(workdir):
    # The toy run's config.yaml names mlp_small (the toy arch is passed in code): its theta is absent.
    from meta_train.export import export_checkpoint

    with pytest.raises(ValueError, match=r"has no \['learner/theta/log_step'.*different architecture"):
        export_checkpoint(workdir)
