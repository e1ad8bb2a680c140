"""The tiny evaluation's report: files exist, numbers agree, bad optimizers lose, tuning works."""

import dataclasses
import math
import re

import numpy as np

from meta_train.evaluation import metrics
from tests.meta_train.evaluation.conftest import SEEDS

BAD, UNSTABLE = "sgd-momentum@1e-6", "sgd-momentum@1"


def test_report_files_exist(evaluation):
    out, results, _ = evaluation
    for name in ("results.json", "report.md", "win_rate_vs_width.png", "win_rate_vs_horizon.png"):
        assert (out / name).stat().st_size > 0, name
    for task in results["tasks"]:
        assert (out / "curves" / f"{task}.png").stat().st_size > 0
    assert sorted(results["tasks"]) == ["mlp_digits", "quad_c1", "quad_c100"]
    assert results["optimizers"][0] == "adamw"  # the reference is always evaluated


def test_json_numbers_agree_with_each_other(evaluation):
    _, results, _ = evaluation
    for task in results["tasks"].values():
        ref = task["optimizers"]["adamw"]
        assert ref["outcome"] == "reference" and ref["speedup"] == 1.0
        assert ref["steps_to_reference"] <= task["steps"]
        for label, r in task["optimizers"].items():
            assert len(r["train_curve"]) == task["steps"]
            assert r["test_steps"][0] == 0 and r["test_steps"][-1] == task["steps"]
            assert len(r["final_train_loss_per_seed"]) == SEEDS
            if r["diverged"]:
                continue
            assert math.isclose(r["final_train_loss"], np.mean(r["final_train_loss_per_seed"]),
                                rel_tol=1e-5)
            window = metrics.final_window(task["steps"], results["config"]["final_fraction"])
            assert math.isclose(r["final_train_loss"], np.mean(r["train_curve"][-window:]),
                                rel_tol=1e-4)
            if r["lr_grid"]:
                i = r["lr_grid"].index(r["chosen_lr"])
                assert math.isclose(r["grid_final_train_loss"][i], r["final_train_loss"],
                                    rel_tol=1e-6)
    for label, s in results["summary"].items():
        outcomes = [t["optimizers"][label]["outcome"] for t in results["tasks"].values()]
        assert (s["wins"], s["ties"], s["losses"]) == tuple(map(outcomes.count, ("win", "tie", "loss")))
        if label != "adamw":
            assert s["win_rate"] == outcomes.count("win") / len(outcomes)
        assert s["divergences"] == sum(t["optimizers"][label]["diverged"]
                                       for t in results["tasks"].values())


def _row(report_md: str, first_cell: str) -> list[str]:
    line = next(l for l in report_md.splitlines() if l.startswith(f"| {first_cell} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_markdown_table_shows_the_json_numbers(evaluation):
    _, results, md = evaluation
    header = _row(md, "task")
    for name, task in results["tasks"].items():
        row = dict(zip(header, _row(md, name)))
        for label in results["optimizers"][1:]:
            r = task["optimizers"][label]
            assert row[label].startswith(f"**{r['outcome']}**")
            if r["final_train_loss"] is not None:
                assert f"{r['final_train_loss']:.4g}" in row[label]
    wins = dict(zip(["label", "adamw"] + header[2:], _row(md, "**wins / ties / losses**")))
    for label in results["optimizers"]:
        s = results["summary"][label]
        assert wins[label] == f"{s['wins']} / {s['ties']} / {s['losses']}"
    assert "tie band" in md and "Speedup" in md and "Diverged" in md


def test_bad_optimizer_loses_to_tuned_adamw(evaluation):
    _, results, md = evaluation
    for name, task in results["tasks"].items():
        bad, ref = task["optimizers"][BAD], task["optimizers"]["adamw"]
        assert bad["outcome"] == "loss", name
        assert bad["final_train_loss"] > ref["final_train_loss"]
        assert bad["speedup"] is None
    assert results["summary"][BAD]["losses"] == len(results["tasks"])
    row = dict(zip(_row(md, "task"), _row(md, "**win rate**")))
    assert row[BAD] == "0%"


def test_divergence_is_flagged_and_counts_as_a_loss(evaluation):
    _, results, md = evaluation
    # SGD-momentum at LR 1 is stable at curvature 1 (lr * h < 2(1 + momentum)) but not at 100.
    unstable = results["tasks"]["quad_c100"]["optimizers"][UNSTABLE]
    assert unstable["diverged"] and unstable["outcome"] == "loss"
    assert unstable["diverged_seeds"] == SEEDS
    assert not results["tasks"]["quad_c1"]["optimizers"][UNSTABLE]["diverged"]
    assert results["summary"][UNSTABLE]["divergences"] >= 1
    assert "DIVERGED" in _row(md, "quad_c100")[_row(md, "task").index(UNSTABLE)]


def test_no_tuned_baseline_stops_at_its_grid_edge_within_the_budget(evaluation):
    from meta_train.evaluation.specs import parse_lr_grid
    from tests.meta_train.evaluation.conftest import GRIDS

    _, results, _ = evaluation
    requested = dict(parse_lr_grid(g) for g in GRIDS)
    extended = 0
    for task in results["tasks"].values():
        for label, r in task["optimizers"].items():
            if label not in requested:
                assert r["lr_grid"] == [] or not r["lr_grid_added"]
                continue
            grid = requested[label]
            np.testing.assert_allclose(r["lr_grid_requested"], grid.values(), rtol=1e-6)
            assert sorted(r["lr_grid"]) == r["lr_grid"] and len(r["lr_grid"]) == grid.num + len(r["lr_grid_added"])
            assert not r["chosen_lr_at_grid_edge"] or len(r["lr_grid_added"]) == results["config"]["extend_lr_grid"]
            extended += bool(r["lr_grid_added"])
    assert extended > 0  # the tiny suite's grids are narrow: some baseline walked past an end


def test_lr_grid_picks_lrs_that_follow_curvature(evaluation):
    _, results, _ = evaluation
    lr_flat = results["tasks"]["quad_c1"]["optimizers"]["sgd-momentum"]["chosen_lr"]
    lr_sharp = results["tasks"]["quad_c100"]["optimizers"]["sgd-momentum"]["chosen_lr"]
    assert lr_flat >= 10 * lr_sharp, (lr_flat, lr_sharp)
    sharp = results["tasks"]["quad_c100"]["optimizers"]["sgd-momentum"]
    assert sharp["grid_diverged_seeds"][-1] == SEEDS  # LR 0.1 x curvature 100 blows up


def test_learned_checkpoint_runs_untuned(evaluation, checkpoint_path):
    _, results, _ = evaluation
    for task in results["tasks"].values():
        r = task["optimizers"][checkpoint_path]
        assert r["kind"] == "learned" and r["chosen_lr"] is None and r["lr_grid"] == []
        assert r["time"]["runs"] == SEEDS


def test_timing_is_reported(evaluation):
    _, results, md = evaluation
    for task in results["tasks"].values():
        for r in task["optimizers"].values():
            t = r["time"]
            assert t["step_s"] > 0 and t["total_s"] >= t["run_s"] > 0
    # Same-shape quadratics share one compiled program per optimizer.
    for label in results["optimizers"]:
        assert results["tasks"]["quad_c100"]["optimizers"][label]["time"]["compile_s"] == 0.0
    assert re.search(r"\| step ms \|", md)


def test_every_optimizer_sees_the_same_initial_params_and_first_batch(evaluation):
    _, results, _ = evaluation
    for task in results["tasks"].values():
        firsts = {r["train_curve"][0] for r in task["optimizers"].values()}
        tests0 = {r["test_curve"][0] for r in task["optimizers"].values()}
        assert len(firsts) == 1 and len(tests0) == 1


def test_reused_baselines_are_the_same_numbers_and_are_marked(evaluation, tmp_path, suite_file, checkpoint_path, data_dir):
    from meta_train.cli import main
    from meta_train.evaluation.report import read_results
    from tests.meta_train.evaluation.conftest import GRIDS

    out, first, _ = evaluation
    argv = ["evaluate", "--suite", suite_file, "--out", str(tmp_path), "--seeds", str(SEEDS),
            "--data-dir", data_dir, "--optimizer", "sgd-momentum", "--optimizer", checkpoint_path,
            "--reuse-baselines", str(out / "results.json")]
    for g in GRIDS:
        argv += ["--lr-grid", g]
    assert main(argv) == 0
    again = read_results(tmp_path)
    for name, task in again["tasks"].items():
        for label in ("adamw", "sgd-momentum", checkpoint_path):
            new, old = task["optimizers"][label], first["tasks"][name]["optimizers"][label]
            assert new["final_train_loss_per_seed"] == old["final_train_loss_per_seed"]
            assert ("reused_from" in new) == (label != checkpoint_path)  # learned ones always run
    # Another grid, other seeds or other steps are another tuning: nothing is reused.
    from meta_train.evaluation.evaluate import EvaluationConfig, reusable_baseline
    from meta_train.evaluation.specs import parse_lr_grid, parse_optimizer

    name, grid = parse_lr_grid("adamw=1e-3:1e-1:3")
    spec = parse_optimizer("adamw", {name: grid})
    config = EvaluationConfig(**{k: first["config"][k] for k in ("num_seeds", "base_seed", "num_evals",
                                                                "max_steps", "final_fraction", "divergence_factor")})
    steps = first["tasks"]["quad_c1"]["steps"]
    assert reusable_baseline(first, config, "quad_c1", steps, spec) is not None
    other_grid = parse_optimizer("adamw", {name: parse_lr_grid("adamw=1e-3:1e-1:4")[1]})
    assert reusable_baseline(first, config, "quad_c1", steps, other_grid) is None
    assert reusable_baseline(first, dataclasses.replace(config, num_seeds=3), "quad_c1", steps, spec) is None
    assert reusable_baseline(first, config, "quad_c1", steps + 1, spec) is None
