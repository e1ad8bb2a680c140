"""A short evaluation after meta-training: the learned optimizer vs AdamW on fresh tasks.

Fresh tasks come from the *training* family with a different seed (in-distribution check, not
generalization; `lopt evaluate` does the latter). Both optimizers see identical batches; each
inner run is a `lax.scan`, vmapped over the stacked tasks. Reports mean train loss over the run
and the final test loss, averaged over tasks, and plots the curves.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from meta_train.unroll import sample_task_pool
from meta_train.evaluation.harness import make_train_step


def train_curves(tx: optax.GradientTransformation, tasks: Any, num_steps: int, key: jax.Array):
    """(train_loss[tasks, steps], final_test_loss[tasks]) for optimizer `tx` on stacked `tasks`."""

    def one_task(task, key):
        k_init, k_data, k_test = jax.random.split(key, 3)
        params = task.init(k_init)
        opt_state = tx.init(params)

        step = make_train_step(task, tx, k_data)
        (params, _), losses = jax.lax.scan(step, (params, opt_state), jnp.arange(num_steps))
        test_keys = jax.random.split(k_test, 8)
        test = jnp.mean(jax.vmap(lambda k: task.loss(params, task.sample_batch(k, split="test")))(test_keys))
        return losses, test

    num_tasks = jax.tree.leaves(tasks)[0].shape[0]
    return jax.jit(jax.vmap(one_task))(tasks, jax.random.split(key, num_tasks))


def compare_with_adamw(arch: Any, theta: Any, family: Any, cfg, initial_theta: Any = None) -> dict[str, Any]:
    """initial_theta (optional): also evaluate the un-trained theta, to show what was learned."""
    import learned_opt

    key = jax.random.PRNGKey(cfg.seed)
    tasks = sample_task_pool(family, jax.random.fold_in(key, 0), cfg.num_tasks)
    optimizers = {
        "learned": learned_opt.to_optax(arch, theta, num_steps=cfg.num_steps),
        f"adamw_lr{cfg.adamw_learning_rate:g}": optax.adamw(cfg.adamw_learning_rate),
    }
    if initial_theta is not None:
        optimizers["learned_before_meta_training"] = learned_opt.to_optax(arch, initial_theta, num_steps=cfg.num_steps)
    result = {}
    for name, tx in optimizers.items():
        losses, test = train_curves(tx, tasks, cfg.num_steps, jax.random.fold_in(key, 1))
        losses = np.asarray(losses)
        result[name] = {
            "curve": np.nanmean(losses, axis=0).tolist(),
            "mean_train_loss": float(np.nanmean(losses)),
            "final_train_loss": float(np.nanmean(losses[:, -10:])),
            "final_test_loss": float(np.nanmean(np.asarray(test))),
        }
    return result


def evaluate_and_report(arch, theta, family, cfg, workdir: str, initial_theta=None) -> dict[str, Any]:
    """compare_with_adamw, written to workdir/eval.json and workdir/eval.png; returns a summary."""
    from meta_train import plots

    result = compare_with_adamw(arch, theta, family, cfg, initial_theta)
    summary = {name: {k: v for k, v in r.items() if k != "curve"} for name, r in result.items()}
    with open(os.path.join(workdir, "eval.json"), "w", encoding="utf-8") as f:
        json.dump({"summary": summary, "curves": {n: r["curve"] for n, r in result.items()}}, f)
    plots.plot_eval(result, os.path.join(workdir, "eval.png"))
    return summary
