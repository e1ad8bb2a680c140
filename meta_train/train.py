"""The meta-training driver: build a run from a config, loop, checkpoint, log, export.

All numerics live in pure, jitted pieces (`Worker.compute`, `learner.outer_step`); this module
is the only place with I/O: checkpoints (orbax), metrics (JSONL + TensorBoard), the rich
progress bar, the final `learned_opt.save` export and the optional evaluation against AdamW.

Workdir layout:
    config.yaml          the resolved recipe
    checkpoints/<step>/  orbax: theta, outer state, unroll states, rng, step
    metrics.jsonl        one row per logged outer step
    tensorboard/         the same scalars
    theta.safetensors    the exported learned optimizer (when its architecture is registered)
    meta_loss.png        the meta-loss curve
    eval.json, eval.png  learned optimizer vs AdamW (when eval.enabled)
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from meta_train import families, learner as learner_lib, metrics as metrics_lib
from meta_train import pool as pool_lib
from meta_train.checkpoint import Checkpointer
from meta_train.config import MetaTrainConfig, to_dict, to_yaml
from meta_train.estimators import make_estimator
from meta_train.worker import LocalWorker

# Estimator metrics that are counts: summed over workers (everything else is averaged).
_SUMMED = ("unroll/resets", "unroll/diverged", "grad/dropped", "unroll/inner_steps")


class WorkdirError(ValueError):
    """The workdir's contents conflict with the request (e.g. a checkpoint without --resume)."""


@dataclasses.dataclass
class Run:
    """Everything built from a config; `learner` and the workers' states are what changes."""

    config: MetaTrainConfig
    arch: Any
    family: Any
    pools: list[Any]
    estimator: Any
    tx: Any
    learner: learner_lib.LearnerState
    workers: list[LocalWorker]

    def checkpoint_tree(self) -> dict[str, Any]:
        return {"learner": self.learner, "workers": [w.get_states() for w in self.workers]}

    def load_checkpoint_tree(self, tree: dict[str, Any]) -> None:
        self.learner = tree["learner"]
        for worker, states in zip(self.workers, tree["workers"]):
            worker.set_states(states)


@dataclasses.dataclass
class RunResult:
    arch: Any
    theta: Any
    step: int
    last_metrics: dict[str, float]
    workdir: str
    export_path: str | None
    eval_summary: dict[str, Any] | None


def build_run(config: MetaTrainConfig, *, arch: Any = None) -> Run:
    """Deterministic in config.run.seed. `arch` overrides config.optimizer (tests, notebooks)."""
    if arch is None:
        arch = families.make_architecture(config.optimizer.architecture, config.optimizer.kwargs)
    family = families.make_family(config.tasks.family, config.tasks.kwargs)
    base = jax.random.PRNGKey(config.run.seed)
    theta = arch.init_theta(jax.random.fold_in(base, 1))
    est = config.estimator
    if est.num_workers < 1:
        raise ValueError(f"estimator.num_workers={est.num_workers}; expected >= 1.")
    estimator = make_estimator(
        est.name, arch=arch, unroll=config.unroll, num_pairs=est.num_pairs, sigma=est.sigma
    )
    tx = learner_lib.make_outer_optimizer(config.outer, config.run.num_steps)
    # Each worker has its own pool (its own task configuration for families with static
    # choices) and its own share of the population.
    pools = [
        pool_lib.make_pool(family, jax.random.fold_in(jax.random.fold_in(base, 0), i), config.tasks.pool_size)
        for i in range(est.num_workers)
    ]
    workers = [
        LocalWorker(estimator, p, theta, jax.random.fold_in(jax.random.fold_in(base, 2), i))
        for i, p in enumerate(pools)
    ]
    learner = learner_lib.init_learner(tx, theta, jax.random.fold_in(base, 3))
    return Run(config, arch, family, pools, estimator, tx, learner, workers)


def _merge_worker_metrics(per_worker: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for k in per_worker[0]:
        values = [m[k] for m in per_worker]
        out[k] = sum(values) if k in _SUMMED else sum(values) / len(values)
    return out


def make_outer_step(run: Run) -> Callable:
    return jax.jit(
        functools.partial(learner_lib.outer_step, run.tx, run.config.outer.clip_norm),
        donate_argnums=(0,),
    )


def train_step(run: Run, outer_step: Callable) -> dict[str, Any]:
    """One outer step: every worker computes on its own states, the learner averages and applies."""
    key = jax.random.fold_in(run.learner.rng, run.learner.step)
    results = [w.compute(run.learner.theta, jax.random.fold_in(key, i)) for i, w in enumerate(run.workers)]
    grad = learner_lib.mean_over_workers([g for g, _ in results])
    est_metrics = _merge_worker_metrics([m for _, m in results])
    run.learner, metrics = outer_step(run.learner, grad, est_metrics)
    return metrics


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("meta-train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("meta_loss {task.fields[meta_loss]:.4f}"),
        TextColumn("{task.fields[throughput]:,.0f} inner steps/s"),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def meta_train(
    config: MetaTrainConfig,
    workdir: str,
    *,
    resume: bool = False,
    arch: Any = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> RunResult:
    """Run (or, with resume, continue) meta-training in `workdir`.

    on_step(step, metrics) is called after each logged step (tests use it to interrupt a run).
    A checkpoint is written every `run.checkpoint_every` steps and when the loop exits for any
    reason (including KeyboardInterrupt), so `resume=True` continues where it stopped.
    """
    os.makedirs(workdir, exist_ok=True)
    run = build_run(config, arch=arch)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    latest = ckpt.latest_step()
    if latest is not None and not resume:
        ckpt.close()
        raise WorkdirError(
            f"workdir {workdir!r} already holds a checkpoint at step {latest}; pass --resume to "
            "continue it, or choose an empty --workdir."
        )
    if resume and latest is not None:
        run.load_checkpoint_tree(ckpt.restore(latest, run.checkpoint_tree()))
    with open(os.path.join(workdir, "config.yaml"), "w", encoding="utf-8") as f:
        f.write(to_yaml(config))

    outer_step = make_outer_step(run)
    step = int(run.learner.step)
    writer = metrics_lib.MetricsWriter(workdir, truncate_from_step=step)
    last_saved = step
    host: dict[str, float] = {}
    num_steps = config.run.num_steps
    try:
        with _progress(config.run.progress) as progress:
            bar = progress.add_task("meta-train", total=num_steps, completed=step, meta_loss=float("nan"), throughput=0.0)
            window_start = time.perf_counter()
            while step < num_steps:
                metrics = train_step(run, outer_step)
                step += 1
                if step % config.run.log_every == 0 or step == num_steps:
                    host = metrics_lib.to_host(metrics)
                    elapsed = time.perf_counter() - window_start
                    inner_per_log = host["unroll/inner_steps"] * config.run.log_every
                    host["perf/inner_steps_per_s"] = inner_per_log / max(elapsed, 1e-9)
                    host["outer/learning_rate"] = float(
                        learner_lib.learning_rate_schedule(config.outer, num_steps)(step - 1)
                    )
                    if not np.isfinite(host["outer/theta_norm"]):
                        raise FloatingPointError(f"theta became non-finite at outer step {step}.")
                    writer.write(step, host)
                    progress.update(bar, completed=step, meta_loss=host["meta_loss"],
                                    throughput=host["perf/inner_steps_per_s"])
                    window_start = time.perf_counter()
                    if on_step is not None:
                        on_step(step, host)
                if step % config.run.checkpoint_every == 0:
                    ckpt.save(step, run.checkpoint_tree())
                    last_saved = step
    finally:
        if step > last_saved:
            ckpt.save(step, run.checkpoint_tree())
        writer.close()
        ckpt.close()

    from meta_train import plots

    plots.plot_meta_loss(metrics_lib.read_jsonl(writer.path), os.path.join(workdir, "meta_loss.png"))
    export_path = _export(run, workdir, host)
    eval_summary = None
    if config.eval.enabled:
        from meta_train import quick_eval

        initial_theta = run.arch.init_theta(jax.random.fold_in(jax.random.PRNGKey(config.run.seed), 1))
        eval_summary = quick_eval.evaluate_and_report(
            run.arch, run.learner.theta, run.family, config.eval, workdir, initial_theta
        )
    return RunResult(run.arch, run.learner.theta, step, host, workdir, export_path, eval_summary)


def _export(run: Run, workdir: str, last_metrics: dict[str, float]) -> str | None:
    """`learned_opt.save` of the final theta; skipped (returns None) for unregistered archs."""
    import learned_opt

    if learned_opt.ARCHITECTURE_CLASSES.get(getattr(run.arch, "name", None)) is not type(run.arch):
        return None
    path = os.path.join(workdir, "theta.safetensors")
    metadata = {
        "recipe": to_dict(run.config),
        "meta_train_step": int(run.learner.step),
        "final_meta_loss": last_metrics.get("meta_loss"),
        "totals": {k: float(v) for k, v in jax.device_get(run.learner.totals).items()},
    }
    learned_opt.save(path, run.arch, jax.device_get(run.learner.theta), metadata=metadata)
    return path
