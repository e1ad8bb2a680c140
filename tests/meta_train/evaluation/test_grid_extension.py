"""A tuned baseline whose best LR lies at the end of its grid gets points past that end."""

import math

import pytest

from meta_train.evaluation.evaluate import extend_at_edges
from meta_train.evaluation.tuning import next_edge_lr


def _point(lr, final, diverged=0):
    """What `_optimizer_result` gives for a one-point grid (the fields extend_at_edges reads)."""
    return {"lr_grid": [lr], "grid_final_train_loss": [final], "grid_diverged_seeds": [diverged],
            "chosen_lr": lr, "chosen_lr_at_grid_edge": False, "final_train_loss": final,
            "final_train_loss_std": 0.0, "final_train_loss_per_seed": [final, final],
            "final_test_loss": final, "final_test_loss_std": 0.0, "diverged": diverged > 0,
            "diverged_seeds": diverged, "train_curve": [final], "test_steps": [0],
            "test_curve": [final], "time": {"compile_s": 1.0, "run_s": 2.0, "step_s": 0.1,
                                            "total_s": 3.0, "runs": 2, "lr_chunk_size": 1}}


def _grid(lrs, finals):
    """A tuned result over `lrs` that chose the lowest final loss."""
    i = min(range(len(lrs)), key=lambda k: finals[k])
    r = _point(lrs[i], finals[i])
    r.update(lr_grid=list(lrs), grid_final_train_loss=list(finals), grid_diverged_seeds=[0] * len(lrs),
             lr_grid_requested=list(lrs), lr_grid_added=[], chosen_lr_at_grid_edge=i in (0, len(lrs) - 1))
    return r


def _loss_at(best_lr):
    """A bowl in log LR with its minimum at best_lr; every call is recorded."""
    calls = []

    def run(lr):
        calls.append(lr)
        return _point(lr, 1.0 + math.log10(lr / best_lr) ** 2)

    return run, calls


def test_next_edge_lr_steps_one_spacing_past_the_end_of_the_choice():
    grid = [1e-3, 1e-2, 1e-1]
    assert next_edge_lr(grid, 1e-1, 10.0) == pytest.approx(1.0)
    assert next_edge_lr(grid, 1e-3, 10.0) == pytest.approx(1e-4)
    assert next_edge_lr(grid, 1e-2, 10.0) is None
    assert next_edge_lr([1e-2], 1e-2, 10.0) is None


def test_a_choice_at_the_top_edge_walks_up_until_it_is_inside():
    run, calls = _loss_at(best_lr=1.0)
    start = _grid([1e-3, 1e-2, 1e-1], [10.0, 5.0, 2.0])
    r = extend_at_edges(start, run, max_points=3)
    assert calls == pytest.approx([1.0, 10.0])  # 1.0 is best; 10 shows it is inside
    assert r["chosen_lr"] == pytest.approx(1.0) and r["final_train_loss"] == pytest.approx(1.0)
    assert r["lr_grid"] == pytest.approx([1e-3, 1e-2, 1e-1, 1.0, 10.0])
    assert r["lr_grid_requested"] == pytest.approx([1e-3, 1e-2, 1e-1])
    assert r["lr_grid_added"] == pytest.approx([1.0, 10.0])
    assert not r["chosen_lr_at_grid_edge"]
    assert r["time"]["runs"] == 2 + 2 * 2 and r["time"]["compile_s"] == 3.0


def test_the_budget_caps_the_walk_and_the_edge_stays_flagged():
    run, calls = _loss_at(best_lr=100.0)
    r = extend_at_edges(_grid([1e-3, 1e-2, 1e-1], [26.0, 17.0, 10.0]), run, max_points=2)
    assert calls == pytest.approx([1.0, 10.0])
    assert r["chosen_lr"] == pytest.approx(10.0) and r["chosen_lr_at_grid_edge"]
    # A reused result that already spent the budget runs nothing more.
    assert extend_at_edges(r, run, max_points=2) == r and len(calls) == 2


def test_a_choice_at_the_bottom_edge_walks_down():
    run, calls = _loss_at(best_lr=1e-4)
    r = extend_at_edges(_grid([1e-3, 1e-2, 1e-1], [2.0, 5.0, 10.0]), run, max_points=2)
    assert calls == pytest.approx([1e-4, 1e-5])
    assert r["chosen_lr"] == pytest.approx(1e-4) and r["lr_grid"][0] == pytest.approx(1e-5)


def test_a_diverged_point_is_never_chosen_and_ends_the_walk():
    calls = []

    def run(lr):
        calls.append(lr)
        return _point(lr, 0.1, diverged=2)  # lowest loss, but a seed diverged

    r = extend_at_edges(_grid([1e-3, 1e-2, 1e-1], [3.0, 2.0, 1.5]), run, max_points=2)
    assert calls == pytest.approx([1.0])
    assert r["chosen_lr"] == pytest.approx(1e-1) and not r["diverged"]
    assert r["final_train_loss"] == 1.5 and not r["chosen_lr_at_grid_edge"]


def test_an_inside_choice_or_a_fixed_lr_runs_nothing():
    run, calls = _loss_at(best_lr=1e-2)
    inside = _grid([1e-3, 1e-2, 1e-1], [2.0, 1.0, 2.0])
    assert extend_at_edges(inside, run, max_points=2)["lr_grid_added"] == []
    assert extend_at_edges(_point(1e-2, 1.0), run, max_points=2) == _point(1e-2, 1.0)
    assert extend_at_edges(_grid([1e-3, 1e-2], [2.0, 1.0]), run, max_points=0)["lr_grid_added"] == []
    assert calls == []
