"""The harness: one program per (optimizer, task shapes), same seeds and batches for everyone."""

import dataclasses

import numpy as np
import pytest

from meta_train.evaluation.baselines import BASELINES, LRGrid
from meta_train.evaluation.harness import ProgramCache, RunSchedule, run_grid
from meta_train.evaluation.specs import parse_optimizer
from meta_train.evaluation.suites import QuadraticSpec

GRID = LRGrid(1e-3, 1e-1, 3)
SCHEDULE = RunSchedule(num_steps=30, num_seeds=2, num_evals=3)


@pytest.fixture(scope="module")
def cache():
    return ProgramCache()


@pytest.fixture(scope="module")
def tasks():
    return [QuadraticSpec(8, c, c, horizon=30).build() for c in (1.0, 100.0)]


@pytest.fixture(scope="module")
def sgd_grid(cache, tasks):
    spec = parse_optimizer("sgd-momentum", {"sgd-momentum": GRID})
    return spec, [run_grid(spec, t, SCHEDULE, cache=cache) for t in tasks]


def test_one_compile_serves_the_grid_the_seeds_and_same_shape_tasks(cache, sgd_grid):
    spec, (flat, sharp) = sgd_grid
    assert flat.train_loss.shape == (3, 2, 30) and flat.test_loss.shape == (3, 2, 4)
    assert cache.compiles == 1
    assert flat.compile_s > 0 and sharp.compile_s == 0.0
    assert list(flat.test_steps) == [0, 10, 20, 30]


def test_a_fixed_lr_run_reproduces_its_grid_row(cache, tasks, sgd_grid):
    _, (flat, _) = sgd_grid
    lr = float(GRID.values()[1])
    fixed = run_grid(parse_optimizer(f"sgd-momentum@{lr!r}"), tasks[0], SCHEDULE, cache=cache)
    # Same init, same batches in the same order, whether vmapped over a grid or not.
    np.testing.assert_allclose(fixed.train_loss[0], flat.train_loss[1], rtol=1e-5)
    np.testing.assert_allclose(fixed.test_loss[0], flat.test_loss[1], rtol=1e-5)


def test_every_optimizer_starts_from_the_same_params_and_batch(cache, tasks, sgd_grid):
    _, (flat, _) = sgd_grid
    adamw = run_grid(parse_optimizer("adamw", {"adamw": GRID}), tasks[0], SCHEDULE, cache=cache)
    np.testing.assert_array_equal(adamw.train_loss[:, :, 0], flat.train_loss[:, :, 0])
    np.testing.assert_array_equal(adamw.test_loss[:, :, 0], flat.test_loss[:, :, 0])
    assert not np.array_equal(flat.train_loss[0, 0], flat.train_loss[0, 1])  # seeds differ


def test_memory_budget_chunks_the_grid_without_changing_results(cache, tasks, sgd_grid):
    spec, (flat, _) = sgd_grid
    before = cache.compiles
    tight = dataclasses.replace(SCHEDULE, memory_budget_bytes=1)
    chunked = run_grid(spec, tasks[0], tight, cache=cache)
    assert chunked.chunk_size == 1 and cache.compiles == before + 1  # one program for 3 chunks
    np.testing.assert_allclose(chunked.train_loss, flat.train_loss, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_every_baseline_trains_a_quadratic(name, tasks):
    spec = parse_optimizer(f"{name}@0.01")
    runs = run_grid(spec, tasks[0], dataclasses.replace(SCHEDULE, num_seeds=1), cache=ProgramCache())
    assert np.all(np.isfinite(runs.train_loss))
    assert runs.train_loss[0, 0, -1] < runs.train_loss[0, 0, 0]
