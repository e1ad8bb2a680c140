"""Train one task with one optimizer over an LR grid and several seeds: one compiled program.

A run is `lax.scan` over steps (batches sampled inside jit from the task's device data), with the
held-out loss (`tasks.held_out_loss`) every `eval_every` steps and at step 0. Runs are vmapped
over seeds and over the LR grid; the learning rate is a traced argument of the optimizer factory,
so the grid, the seeds and any task with the same static fields and shapes share one program
(`ProgramCache`: compiled once, never per seed, LR or task).

Fairness: seed s uses `fold_in(PRNGKey(base_seed), s)` split into (init, data, eval) keys, and
batch i is `task.sample_batch(fold_in(data_key, i))`: every optimizer and every LR sees the same
initial parameters and the same batches in the same order.

Memory: when LR points x seeds x (params + grads + optimizer state) exceeds `memory_budget_bytes`,
the grid runs in chunks of equal size (the last padded by repeating its LR, then discarded), so
large tasks still compile once.

Timing: `compile_s` is lowering + XLA compilation (0 when the program was cached); `run_s` is
execution (blocked until ready). `step_s` = run_s / (steps x runs executed): wall-clock of one
training step of one run, amortized over the vmapped batch.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from meta_train import fast_rng
from meta_train.evaluation.specs import OptimizerSpec
from tasks.base import held_out_loss


@dataclasses.dataclass(frozen=True)
class RunSchedule:
    """num_steps: inner steps per run; num_seeds; base_seed; num_evals: held-out evaluations
    after step 0 (every num_steps // num_evals steps, plus the last step);
    memory_budget_bytes: cap on the state of one vmapped chunk (see module docstring)."""

    num_steps: int
    num_seeds: int = 3
    base_seed: int = 0
    num_evals: int = 10
    memory_budget_bytes: int = 2 << 30

    def __post_init__(self):
        if self.num_steps < 1 or self.num_seeds < 1 or self.num_evals < 1:
            raise ValueError(f"num_steps, num_seeds and num_evals must be >= 1; got {self}.")

    @property
    def eval_every(self) -> int:
        return max(1, self.num_steps // self.num_evals)

    def eval_steps(self) -> np.ndarray:
        """Steps after which the held-out loss is measured (0 = before training)."""
        steps = list(range(0, self.num_steps + 1, self.eval_every))
        return np.array(steps if steps[-1] == self.num_steps else steps + [self.num_steps])


@dataclasses.dataclass(frozen=True)
class GridRuns:
    """Raw curves: train_loss[L, S, T] (minibatch loss at each step, before its update),
    test_loss[L, S, E] at `test_steps[E]`; L LR points, S seeds."""

    learning_rates: np.ndarray
    train_loss: np.ndarray
    test_steps: np.ndarray
    test_loss: np.ndarray
    compile_s: float
    run_s: float
    step_s: float
    chunk_size: int


def seed_keys(schedule: RunSchedule) -> jax.Array:
    base = jax.random.PRNGKey(schedule.base_seed)
    return jax.vmap(lambda s: jax.random.fold_in(base, s))(jnp.arange(schedule.num_seeds))


def make_train_step(task, tx: optax.GradientTransformationExtraArgs, data_key: jax.Array) -> Callable:
    """`step((params, opt_state), i) -> ((params, opt_state), loss)` for `lax.scan` over steps i.

    Batch i is `task.sample_batch(fold_in(data_key, i))`, so every optimizer given the same key
    sees the same batches in the same order; `loss` (before the update) reaches optimizers that
    read it.
    """

    def step(carry, i):
        params, opt_state = carry
        batch = task.sample_batch(jax.random.fold_in(data_key, i), split="train")
        loss, grads = jax.value_and_grad(task.loss)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params, loss=loss)
        return (optax.apply_updates(params, updates), opt_state), loss

    return step


def _one_run(spec: OptimizerSpec, schedule: RunSchedule, task, learning_rate, seed_key):
    k_init, k_data, k_eval = jax.random.split(seed_key, 3)
    params = task.init(k_init)
    tx = optax.with_extra_args_support(spec.make(learning_rate, params, task, schedule.num_steps))

    def test_loss(p):
        return held_out_loss(task, p, k_eval)

    step = make_train_step(task, tx, k_data)

    def chunk(carry, c):
        carry, losses = jax.lax.scan(step, carry, c * every + jnp.arange(every))
        return carry, (losses, test_loss(carry[0]))

    every = schedule.eval_every
    n_chunks, rest = divmod(schedule.num_steps, every)
    test0 = test_loss(params)
    carry, (losses, tests) = jax.lax.scan(chunk, (params, tx.init(params)), jnp.arange(n_chunks))
    losses, tests = losses.reshape(-1), jnp.concatenate([test0[None], tests])
    if rest:
        carry, more = jax.lax.scan(step, carry, n_chunks * every + jnp.arange(rest))
        losses = jnp.concatenate([losses, more])
        tests = jnp.concatenate([tests, test_loss(carry[0])[None]])
    return losses, tests


def _grid_fn(spec: OptimizerSpec, schedule: RunSchedule) -> Callable:
    def run(task, learning_rates, keys):
        over_seeds = jax.vmap(lambda lr, k: _one_run(spec, schedule, task, lr, k), in_axes=(None, 0))
        return jax.vmap(over_seeds, in_axes=(0, None))(learning_rates, keys)

    return run


class ProgramCache:
    """Compiled grid programs keyed by (the spec's `make`, schedule, task structure and shapes,
    chunk size): a program reads nothing else of its spec, so a fixed-LR spec, its tuned grid
    and the points added past a grid's edge share one program per chunk size."""

    def __init__(self):
        self._programs: dict[Any, Any] = {}
        self.compiles = 0

    def get(self, spec, schedule, task, learning_rates, keys):
        leaves, treedef = jax.tree.flatten(task)
        shapes = tuple((jnp.shape(x), jnp.result_type(x)) for x in leaves)
        key = (spec.make, schedule, treedef, shapes, learning_rates.shape)
        if key in self._programs:
            return self._programs[key], 0.0
        t0 = time.perf_counter()
        program = jax.jit(_grid_fn(spec, schedule)).lower(task, learning_rates, keys).compile()
        self._programs[key] = program
        self.compiles += 1
        return program, time.perf_counter() - t0


DEFAULT_CACHE = ProgramCache()


def bytes_per_run(spec: OptimizerSpec, task) -> int:
    """Parameters + gradients + optimizer state of one run, from shapes only (x2 for
    activations and temporaries: a rough bound, used only to size chunks)."""

    def state(key):
        params = task.init(key)
        return params, spec.make(jnp.float32(1.0), params, task, 1).init(params)

    params, opt_state = jax.eval_shape(state, jax.random.PRNGKey(0))
    nbytes = lambda tree: sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))
    return 2 * (2 * nbytes(params) + nbytes(opt_state))


def run_grid(spec: OptimizerSpec, task, schedule: RunSchedule, *, cache: ProgramCache = DEFAULT_CACHE,
             on_chunk: Callable[[int], None] | None = None) -> GridRuns:
    """All of `spec.learning_rates` x `schedule.num_seeds` runs of `task`; on_chunk(n) after each
    chunk of n LR points (for progress bars)."""
    fast_rng.use_unrolled_threefry_on_cpu()
    lrs = np.asarray(spec.learning_rates, np.float32)
    per_lr = schedule.num_seeds * bytes_per_run(spec, task)
    chunk = int(min(len(lrs), max(1, schedule.memory_budget_bytes // max(per_lr, 1))))
    padded = np.concatenate([lrs, np.full((-len(lrs)) % chunk, lrs[-1], np.float32)])
    keys = seed_keys(schedule)
    train, test, compile_s, run_s = [], [], 0.0, 0.0
    for start in range(0, len(padded), chunk):
        lr_chunk = jnp.asarray(padded[start:start + chunk])
        program, c_s = cache.get(spec, schedule, task, lr_chunk, keys)
        t0 = time.perf_counter()
        losses, tests = jax.block_until_ready(program(task, lr_chunk, keys))
        run_s += time.perf_counter() - t0
        compile_s += c_s
        train.append(np.asarray(losses))
        test.append(np.asarray(tests))
        if on_chunk:
            on_chunk(min(chunk, len(lrs) - start))
    n = len(lrs)
    step_s = run_s / (schedule.num_steps * len(padded) * schedule.num_seeds)
    return GridRuns(lrs, np.concatenate(train)[:n], schedule.eval_steps(),
                    np.concatenate(test)[:n], compile_s, run_s, step_s, chunk)
