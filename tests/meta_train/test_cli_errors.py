"""`lopt`'s expected failures: one `lopt: error:` line on stderr, exit 2, before any compute (a
YAML syntax error, a bad suite, an unusable data dir, an unreachable or too small Ray cluster);
Ctrl-C during meta-training: one line naming the saved checkpoint, exit 130."""

import os
import shutil
import socket
import time

import pytest

from meta_train.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(REPO, "configs", "smoke.yaml")
PRETRAIN_SMALL = os.path.join(REPO, "configs", "pretrain_small.yaml")
QUIET = ["run.progress=false", "run.checkpoint_every=100"]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lopt: error: "), err
    return lines[0]


# --- YAML syntax errors -------------------------------------------------------------------

BAD_YAML = "run:\n  num_steps: 3\n  seed: [1, 2\n"  # the flow sequence is never closed


def test_recipe_yaml_syntax_error_names_file_line_and_parser_message(tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(BAD_YAML)
    workdir = tmp_path / "run"
    assert main(["meta-train", str(recipe), "--workdir", str(workdir)]) == 2
    line = one_error_line(capsys)
    assert str(recipe) in line and "line 4" in line and "did not find expected ',' or ']'" in line
    assert not workdir.exists()


def test_suite_yaml_syntax_error_names_file_line_and_parser_message(tmp_path, capsys):
    suite = tmp_path / "bad.yaml"
    suite.write_text("tasks:\n  - kind: mlp\n    dataset: digits\n   width: 8\n")
    out = tmp_path / "out"
    assert main(["evaluate", "--optimizer", "adamw", "--suite", str(suite), "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert str(suite) in line and "line 4" in line and "expected <block end>" in line
    assert not out.exists()


# --- suites validated at load -------------------------------------------------------------

MLP = "  - kind: mlp\n    dataset: {dataset}\n    width: {width}\n    depth: 1\n    horizon: {horizon}\n"


@pytest.mark.parametrize("task, expected", [
    (MLP.format(dataset="digits", width=8, horizon=-5), "horizon=-5; expected an integer >= 1"),
    (MLP.format(dataset="digits", width=8, horizon=5) + "    batch_size: 0\n",
     "batch_size=0; expected an integer >= 1"),
    (MLP.format(dataset="mnist2", width=8, horizon=5), "unknown dataset 'mnist2' for kind 'mlp'"),
    ("  - kind: transformer\n    dataset: digits\n    width: 8\n    depth: 1\n    horizon: 5\n",
     "unknown dataset 'digits' for kind 'transformer'"),
    ("  - kind: builtin\n    entry: mlp_mnist1d_w128_d3_h1000\n    horizon: -1\n",
     "horizon=-1; expected an integer >= 1"),
    ("  - kind: quadratic\n    min_curvature: 2.0\n    max_curvature: 1.0\n    horizon: 5\n",
     "expected 0 < min_curvature <= max_curvature"),
])
def test_suite_with_bad_task_fails_at_load(tmp_path, capsys, task, expected):
    suite = tmp_path / "suite.yaml"
    suite.write_text("tasks:\n" + task)
    out = tmp_path / "out"
    assert main(["evaluate", "--optimizer", "adamw", "--suite", str(suite), "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert f"{suite}: tasks[0]" in line and expected in line
    assert not out.exists()


# --- the dataset cache --------------------------------------------------------------------

@pytest.fixture()
def unwritable_data_dir(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("LEARNED_OPT_DATA_DIR", str(blocker / "tfds"))
    return blocker / "tfds"


def test_meta_train_with_unwritable_data_dir_fails_before_compute(tmp_path, capsys, unwritable_data_dir):
    workdir = tmp_path / "run"
    assert main(["meta-train", PRETRAIN_SMALL, "--workdir", str(workdir)]) == 2
    line = one_error_line(capsys)
    assert str(unwritable_data_dir) in line and "$LEARNED_OPT_DATA_DIR" in line and "not writable" in line
    assert not workdir.exists()


def test_evaluate_with_unwritable_data_dir_fails_before_compute(tmp_path, capsys, unwritable_data_dir):
    suite = tmp_path / "suite.yaml"
    suite.write_text("tasks:\n" + MLP.format(dataset="digits", width=8, horizon=5))
    assert main(["evaluate", "--optimizer", "adamw", "--suite", str(suite), "--out",
                 str(tmp_path / "out")]) == 2
    line = one_error_line(capsys)
    assert str(unwritable_data_dir) in line and "$LEARNED_OPT_DATA_DIR" in line
    assert not (tmp_path / "out" / "results.json").exists()


def test_evaluate_with_truncated_shard_names_dataset_file_and_fix(tmp_path, capsys):
    from tasks.data.loading import prepare

    data_dir = tmp_path / "data"
    prepare("digits", data_dir)
    (shard,) = (data_dir / "lopt_digits").glob("*/lopt_digits-train.array_record*")
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) // 2)
    suite = tmp_path / "suite.yaml"
    suite.write_text("tasks:\n" + MLP.format(dataset="digits", width=8, horizon=5))
    assert main(["evaluate", "--optimizer", "adamw", "--suite", str(suite), "--out",
                 str(tmp_path / "out"), "--data-dir", str(data_dir)]) == 2
    line = one_error_line(capsys)
    assert "'digits'" in line and str(shard) in line and f"delete {str(data_dir / 'lopt_digits')!r}" in line
    assert not (tmp_path / "out" / "results.json").exists()


# --- Ctrl-C -------------------------------------------------------------------------------

def _interrupt_at(monkeypatch, stop_step):
    import meta_train.train as train_lib

    real = train_lib.meta_train

    def meta_train(config, workdir, **kwargs):
        if stop_step == 0:
            raise KeyboardInterrupt

        def on_step(step, metrics):
            if step == stop_step:
                raise KeyboardInterrupt  # what Ctrl-C raises in the driver's loop

        return real(config, workdir, on_step=on_step, **kwargs)

    monkeypatch.setattr(train_lib, "meta_train", meta_train)


def test_ctrl_c_prints_one_line_with_the_checkpoint_and_exits_130(tmp_path, capsys, monkeypatch):
    _interrupt_at(monkeypatch, 2)
    workdir = tmp_path / "run"
    assert main(["meta-train", SMOKE, "--workdir", str(workdir), *QUIET]) == 130
    err = capsys.readouterr().err.strip()
    ckpt = workdir / "checkpoints" / "2"
    assert err.splitlines() == [
        f"lopt: interrupted at step 2; checkpoint saved at {ckpt}; resume with --resume (the same "
        f"command and --workdir {workdir})"]
    assert ckpt.is_dir()


def test_ctrl_c_before_any_checkpoint_says_nothing_was_saved(tmp_path, capsys, monkeypatch):
    _interrupt_at(monkeypatch, 0)
    assert main(["meta-train", SMOKE, "--workdir", str(tmp_path / "run"), *QUIET]) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nothing saved" in err and "without --resume" in err


# --- Ray ----------------------------------------------------------------------------------

def _refused_address() -> str:
    with socket.socket() as s:  # a port just freed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("address, expected", [
    ("notahost.invalid:6379", "unknown host 'notahost.invalid'"),
    ("refused", "Connection refused"),
    ("ray://notahost.invalid:10001", "unknown host 'notahost.invalid'"),
    ("no-port", "expected 'auto', 'local' or HOST:PORT"),
])
def test_bad_ray_address_is_one_line_at_once(tmp_path, capsys, address, expected):
    ray = pytest.importorskip("ray")
    address = _refused_address() if address == "refused" else address
    start = time.monotonic()
    assert main(["meta-train", SMOKE, "--workdir", str(tmp_path / "run"), "--ray", address, *QUIET]) == 2
    line = one_error_line(capsys)
    assert f"--ray {address!r}" in line and expected in line
    assert time.monotonic() - start < 30 and not ray.is_initialized()


def _fake_cluster(monkeypatch, nodes_over_time, started_here):
    from meta_train.distribution import ray_workers

    calls = []

    def alive_nodes():
        calls.append(1)
        return nodes_over_time[min(len(calls), len(nodes_over_time)) - 1]

    monkeypatch.setattr(ray_workers, "_alive_nodes", alive_nodes)
    monkeypatch.setattr(ray_workers, "_started_here", lambda: started_here)
    monkeypatch.setattr(time, "sleep", lambda s: None)
    return calls


def _config(*overrides):
    from meta_train.config import load_config

    return load_config(SMOKE, list(overrides))


def test_placeable_counts_whole_actors_per_node():
    from meta_train.distribution.ray_workers import placeable

    nodes = [{"CPU": 2.0}, {"CPU": 8.0, "GPU": 1.0}]
    assert placeable(nodes, {"CPU": 1.0}) == 10
    assert placeable(nodes, {"CPU": 64.0}) == 0
    assert placeable(nodes, {"CPU": 1.0, "GPU": 0.5}) == 2
    assert placeable(nodes, {"CPU": 0.3}) == 6 + 26
    assert placeable(nodes, {"TPU": 4.0}) == 0


def test_a_cluster_started_here_that_cannot_hold_the_workers_fails_at_once(monkeypatch):
    from meta_train.config import ClusterError
    from meta_train.distribution.ray_workers import check_resources

    calls = _fake_cluster(monkeypatch, [[{"CPU": 2.0}]], started_here=True)
    config = _config("distributed.num_workers=3", "distributed.num_cpus_per_worker=1")
    with pytest.raises(ClusterError) as info:
        check_resources(config)
    assert len(calls) == 1
    assert "3 worker(s) with num_cpus_per_worker=1" in str(info.value) and "room for 2" in str(info.value)
    check_resources(_config("distributed.num_workers=2", "distributed.num_cpus_per_worker=1"))


def test_a_joined_cluster_is_given_resource_wait_s_to_grow(monkeypatch):
    from meta_train.config import ClusterError
    from meta_train.distribution.ray_workers import check_resources

    small, grown = [{"CPU": 2.0}], [{"CPU": 2.0}, {"CPU": 64.0}]
    _fake_cluster(monkeypatch, [small, small, grown], started_here=False)
    check_resources(_config("distributed.num_cpus_per_worker=64"))  # an autoscaler added a node

    _fake_cluster(monkeypatch, [small], started_here=False)
    with pytest.raises(ClusterError, match="after waiting 0.2 s"):
        check_resources(_config("distributed.num_cpus_per_worker=64", "distributed.resource_wait_s=0.2"))


def test_ray_local_with_unschedulable_workers_fails_within_a_minute(tmp_path, capsys):
    """One real local Ray session: today's hang (actors pending forever) becomes one line."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("needs to start its own local Ray cluster")
    start = time.monotonic()
    try:
        code = main(["meta-train", SMOKE, "--workdir", str(tmp_path / "run"), "--ray", "local",
                     "distributed.num_cpus_per_worker=64", *QUIET])
    finally:
        ray.shutdown()
    assert code == 2 and time.monotonic() - start < 60
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("lopt:")]
    assert "Traceback" not in err and len(ours) == 1
    assert "num_cpus_per_worker=64" in ours[0] and "room for 0" in ours[0]
    shutil.rmtree(tmp_path / "run", ignore_errors=True)
