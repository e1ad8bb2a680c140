"""The meta-training driver: build a run from a config, loop, checkpoint, log, export.

All numerics live in pure, jitted pieces (`Worker.compute`, `learner.outer_step`); this module
is the only place with I/O: checkpoints (orbax), metrics (JSONL + TensorBoard), the rich
progress bar, the final `learned_opt.save` export and the optional evaluation against AdamW.

Workdir layout:
    config.yaml          the resolved recipe (of the latest invocation)
    config.<step>.yaml   the recipe a resume at <step> replaced, when it changed anything
    learner.log          the driver's log: workers' errors (with worker id), drops, restarts
    checkpoints/<step>/  orbax: theta, outer state, unroll states, rng, step
    checkpoints.damaged/ checkpoints a resume found unreadable and skipped, kept for inspection
    metrics.jsonl        one row per logged outer step
    tensorboard/         the same scalars
    theta.safetensors    the exported learned optimizer (when its architecture is registered)
    meta_loss.png        the meta-loss curve
    eval.json, eval.png  learned optimizer vs AdamW (when eval.enabled)
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import time
from typing import Any, Callable

import jax
import numpy as np
from omegaconf import OmegaConf

from meta_train import config as config_lib, learner as learner_lib, metrics as metrics_lib, recipe
from meta_train.checkpoint import (
    CheckpointDamagedError, Checkpointer, CheckpointMismatchError, flatten as flatten_tree,
)
from meta_train.config import MetaTrainConfig, num_workers, to_dict, to_yaml
from meta_train.distribution.dispatch import LOG, Dispatcher, LocalPool, WorkerPool


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
    pool: WorkerPool  # LocalPool (in-process, default) or ray_workers.RayPool

    @property
    def workers(self) -> list[Any]:
        """The in-process workers (LocalPool only; Ray workers live in their actors)."""
        return self.pool.workers

    def checkpoint_tree(self) -> dict[str, Any]:
        """Learner and every worker's unroll states (fetched from the actors under Ray)."""
        return {"learner": self.learner, "workers": self.pool.get_states()}

    def load_checkpoint_tree(self, tree: dict[str, Any]) -> None:
        self.learner = tree["learner"]
        self.pool.set_states(tree["workers"])


@dataclasses.dataclass
class RunResult:
    arch: Any
    theta: Any
    step: int
    last_metrics: dict[str, float]
    workdir: str
    export_path: str | None
    eval_summary: dict[str, Any] | None


def build_run(config: MetaTrainConfig, *, arch: Any = None, pool: WorkerPool | None = None,
              warm_start: bool = True) -> Run:
    """Deterministic in config.run.seed. `arch` overrides config.optimizer (tests, notebooks).

    pool: where the workers run; default in-process (`LocalPool`), one worker per share of the
    population (`num_workers(config)`), each with its own task pool (`meta_train.recipe`).
    warm_start: read `optimizer.init_theta`; a resume, whose theta comes from the checkpoint,
    passes False so that the file need not exist any more.
    """
    parts = recipe.make_components(config, arch)
    theta = (recipe.initial_theta if warm_start else recipe.theta_template)(config, parts.arch)
    tx = learner_lib.make_outer_optimizer(config.outer, config.run.num_steps, config.optimizer.trainable)
    pools: list[Any] = []
    if pool is None:
        pools = [recipe.make_task_pool(config, parts, i) for i in range(num_workers(config))]
        pool = LocalPool([recipe.make_worker(config, parts, i, p) for i, p in enumerate(pools)])
    learner = learner_lib.init_learner(tx, theta, recipe.learner_key(config))
    return Run(config, parts.arch, parts.family, pools, parts.estimator, tx, learner, pool)


def make_outer_step(run: Run) -> Callable:
    return jax.jit(
        functools.partial(learner_lib.outer_step, run.tx, run.config.outer.clip_norm),
        donate_argnums=(0,),
    )


def make_dispatcher(run: Run) -> Dispatcher:
    """One outer step at a time, sync or async (config.distributed), for any pool."""
    d = run.config.distributed
    return Dispatcher(run.pool, make_outer_step(run), mode=d.mode, max_staleness=d.max_staleness)


def _attach_log(workdir: str) -> logging.Handler:
    handler = logging.FileHandler(os.path.join(workdir, "learner.log"), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)
    return handler


def _ray_pool(config: MetaTrainConfig, address: str, arch: Any) -> tuple[WorkerPool, bool]:
    from meta_train.distribution import ray_workers

    started = ray_workers.connect(address)
    try:
        return ray_workers.RayPool(config, arch), started
    except BaseException:
        if started:  # a cluster this process started must not outlive a failed start
            import ray

            ray.shutdown()
        raise


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
    ray_address: str | None = None,
    pool: WorkerPool | None = None,
    allow_change: tuple[str, ...] | list[str] = (),
) -> RunResult:
    """Run (or, with resume, continue) meta-training in `workdir`.

    on_step(step, metrics) is called after each logged step (tests use it to interrupt a run).
    A checkpoint is written every `run.checkpoint_every` steps and when the loop exits for any
    reason (including KeyboardInterrupt), so `resume=True` continues where it stopped.
    ray_address: None runs the workers in-process; "local", "auto" or a cluster address runs
    them as Ray actors (`meta_train.distribution.ray_workers`). pool: an already built pool (the caller
    owns it and closes it), e.g. a `RayPool` whose actors a test wants to kill.
    A resume continues from the newest readable checkpoint (damaged newer ones are set aside
    with a warning), and refuses a recipe that changes the trajectory (seed, learning rate, ...)
    from the workdir's config.yaml unless each such key (or its group) is in `allow_change`.
    """
    if allow_change and not resume:
        raise WorkdirError(
            f"--allow-change {','.join(allow_change)} only applies with --resume (a new run has "
            "nothing to change); drop it, or add --resume."
        )
    if resume and not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise WorkdirError(
            f"--resume: {workdir!r} holds no meta-training run (no checkpoints/ in it); give the "
            "--workdir of the run to continue, or drop --resume to start a new one."
        )
    os.makedirs(workdir, exist_ok=True)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    latest = ckpt.latest_step()
    if resume and latest is None:
        ckpt.close()
        raise WorkdirError(
            f"--resume: {workdir!r} holds no checkpoint yet; drop --resume to start the run afresh."
        )
    if latest is not None and not resume:
        ckpt.close()
        raise WorkdirError(
            f"workdir {workdir!r} already holds a checkpoint at step {latest}; pass --resume to "
            "continue it, or choose an empty --workdir."
        )
    log_handler = _attach_log(workdir)
    owned_pool, started_ray = pool is None and ray_address is not None, False
    try:
        changes = _recipe_changes(workdir, config, tuple(allow_change)) if resume else []
        if owned_pool:
            pool, started_ray = _ray_pool(config, ray_address, arch)
        run = build_run(config, arch=arch, pool=pool, warm_start=not resume)
        LOG.info("meta-training %s: %d workers (%s, %s mode), step %d of %d", workdir,
                 run.pool.num_workers, type(run.pool).__name__, config.distributed.mode,
                 int(run.learner.step), config.run.num_steps)
        for i, worker in enumerate(getattr(run.pool, "workers", ())):
            mesh = getattr(worker, "mesh", None)
            LOG.info("worker %d: %s%s", i, worker.task_name,
                     f", pairs split over {mesh.size} devices" if mesh is not None else "")
        return _train(run, ckpt, workdir, resume=resume, changes=changes, on_step=on_step)
    finally:
        ckpt.close()
        if owned_pool and pool is not None:
            pool.close()
        if started_ray:
            import ray

            ray.shutdown()
        LOG.removeHandler(log_handler)
        log_handler.close()


def _recipe_changes(workdir: str, config: MetaTrainConfig, allow_change: tuple[str, ...]) -> list:
    """What `config` changes from the workdir's config.yaml; raises WorkdirError when a change
    that alters the trajectory is not named in `allow_change` (or a name is no config key)."""
    path = os.path.join(workdir, "config.yaml")
    if not os.path.isfile(path):
        LOG.warning("%s is missing: cannot check that the recipe matches the run's", path)
        return []
    try:
        old = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as err:  # omegaconf/yaml errors share no base class
        raise WorkdirError(
            f"--resume: {path} is not readable YAML ({str(err).splitlines()[0]}); repair it, or "
            "move it away to resume without comparing recipes."
        ) from None
    changes = config_lib.config_changes(old, config)
    keys = [*config_lib.flatten(to_dict(config)), *(k for k, _, _ in changes)]
    unknown = config_lib.unknown_keys(allow_change, keys)
    if unknown:
        raise WorkdirError(
            f"--allow-change {','.join(unknown)}: not a key of the recipe; name dotted keys such "
            "as outer.learning_rate or run.seed (or a group such as outer)."
        )
    refused = config_lib.refused_changes(changes, allow_change)
    if refused:
        raise WorkdirError(
            f"--resume: the recipe differs from {path} in {config_lib.describe_changes(refused)}, "
            "which change the run's trajectory; resume with the run's values, or pass "
            f"--allow-change {','.join(k for k, _, _ in refused)} to continue with the new ones."
        )
    return changes


def _first_nonfinite(tree: Any) -> str | None:
    """The first floating-point leaf (by path) holding a NaN or an infinity."""
    for k, x in flatten_tree(tree).items():
        x = np.asarray(x)
        if np.issubdtype(x.dtype, np.inexact) and not np.all(np.isfinite(x)):
            return k
    return None


def _checkpoint_tree_at(run: Run, step: int) -> dict[str, Any]:
    """The checkpoint tree after `step` outer steps. With `tasks.redraw_every`, the workers are
    first put in the task round of the last step's version (step - 1), whose pools decide the
    unroll states' shapes: to save (an async worker still in the round before starts the new
    one now, as its next call would), and as the template to restore a checkpoint of `step`."""
    if run.config.tasks.redraw_every:
        run.pool.set_round(run.config.tasks.round_at(max(step - 1, 0)))
    return run.checkpoint_tree()


def _restore_latest_good(ckpt: Checkpointer, template_at: Callable[[int], Any]) -> tuple[int, Any]:
    """The newest checkpoint that reads back whole with a finite learner (theta, AdamW moments),
    and its step. Newer damaged ones are set aside (checkpoints.damaged/) with a warning, so the
    resumed run can write their steps again; a changed recipe is an error, not damage.
    template_at(step): the tree structure a checkpoint of that step holds."""
    damaged: list[tuple[int, str]] = []
    for step in reversed(ckpt.all_steps()):
        try:
            tree = ckpt.restore(step, template_at(step))
            bad = _first_nonfinite(tree["learner"])
            if bad is not None:
                raise CheckpointDamagedError(
                    f"checkpoint {ckpt.step_dir(step)}: 'learner/{bad}' is not finite")
        except CheckpointDamagedError as err:
            damaged.append((step, str(err)))
            continue
        except CheckpointMismatchError as err:
            raise WorkdirError(f"--resume: {err}") from None
        for bad_step, reason in damaged:
            where = ckpt.set_aside(bad_step)
            LOG.warning("checkpoint at step %d is damaged (%s); resuming from step %d instead "
                        "(the damaged one is kept in %s)", bad_step, reason, step, where)
        return step, tree
    raise WorkdirError(
        f"--resume: no usable checkpoint in {ckpt.directory}: "
        + "; ".join(f"step {s}: {reason}" for s, reason in damaged)
        + ". Start afresh in a new --workdir."
    )


def _keep_old_config(workdir: str, step: int) -> str:
    """Copies config.yaml to config.<step>.yaml (never overwriting) before it is replaced."""
    path, n = os.path.join(workdir, f"config.{step}.yaml"), 1
    while os.path.exists(path):
        n += 1
        path = os.path.join(workdir, f"config.{step}.{n}.yaml")
    shutil.copyfile(os.path.join(workdir, "config.yaml"), path)
    return path


def _train(run: Run, ckpt: Checkpointer, workdir: str, *, resume: bool, changes: list,
           on_step: Callable | None) -> RunResult:
    config = run.config
    if resume:
        start, tree = _restore_latest_good(ckpt, functools.partial(_checkpoint_tree_at, run))
        run.load_checkpoint_tree(tree)
        LOG.info("resumed from the checkpoint at step %d", start)
        if changes:
            kept = _keep_old_config(workdir, start)
            free = not config_lib.refused_changes(changes, ())
            (LOG.info if free else LOG.warning)(
                "resuming at step %d with a changed recipe: %s; the previous config.yaml is kept "
                "as %s", start, config_lib.describe_changes(changes), os.path.basename(kept))
    with open(os.path.join(workdir, "config.yaml"), "w", encoding="utf-8") as f:
        f.write(to_yaml(config))

    dispatcher = make_dispatcher(run)
    step = int(run.learner.step)
    writer = metrics_lib.MetricsWriter(workdir, truncate_from_step=step)
    last_saved = step
    host: dict[str, float] = {}
    num_steps = config.run.num_steps
    completed = False
    try:
        with _progress(config.run.progress) as progress:
            bar = progress.add_task("meta-train", total=num_steps, completed=step, meta_loss=float("nan"), throughput=0.0)
            window_start = time.perf_counter()
            while step < num_steps:
                run.learner, metrics = dispatcher.step(run.learner)
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
                    ckpt.save(step, _checkpoint_tree_at(run, step))
                    last_saved = step
        completed = True
    finally:
        dispatcher.close()
        try:
            if step > last_saved:
                ckpt.save(step, _checkpoint_tree_at(run, step))
        except Exception:  # e.g. a worker is gone for good: keep the error that stopped the loop
            if completed:
                raise
            LOG.exception("could not write the exit checkpoint at step %d; the last one is at %d",
                          step, last_saved)
        finally:
            writer.close()

    from meta_train import plots

    plots.plot_meta_loss(metrics_lib.read_jsonl(writer.path), os.path.join(workdir, "meta_loss.png"))
    export_path = _export(run, workdir, host)
    eval_summary = None
    if config.eval.enabled:
        from meta_train import quick_eval

        initial_theta = _start_theta(config, run.arch)
        eval_summary = quick_eval.evaluate_and_report(
            run.arch, run.learner.theta, run.family, config.eval, workdir, initial_theta
        )
    return RunResult(run.arch, run.learner.theta, step, host, workdir, export_path, eval_summary)


def _start_theta(config: MetaTrainConfig, arch: Any) -> Any:
    """The theta the run started from, for the before/after evaluation; None when its warm-start
    file is gone (a resume elsewhere): the comparison is skipped, not the run's result."""
    init = config.optimizer.init_theta
    if init is not None and not os.path.exists(init):
        LOG.warning("optimizer.init_theta=%s is gone: the evaluation skips the untrained start", init)
        return None
    return recipe.initial_theta(config, arch)


def _export(run: Run, workdir: str, last_metrics: dict[str, float]) -> str | None:
    """`learned_opt.save` of the final theta; skipped (returns None) for unregistered archs."""
    import learned_opt

    if learned_opt.ARCHITECTURE_CLASSES.get(getattr(run.arch, "name", None)) is not type(run.arch):
        return None
    path = os.path.join(workdir, "theta.safetensors")
    from meta_train.export import compute_summary, git_commit

    metadata = {
        "recipe": to_dict(run.config),
        "meta_train_step": int(run.learner.step),
        "final_meta_loss": last_metrics.get("meta_loss"),
        "totals": {k: float(v) for k, v in jax.device_get(run.learner.totals).items()},
        "git_commit": git_commit(),
        "compute": compute_summary(workdir, int(run.learner.step)),
    }
    learned_opt.save(path, run.arch, jax.device_get(run.learner.theta), metadata=metadata)
    return path
