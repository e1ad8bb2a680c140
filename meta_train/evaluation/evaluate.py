"""Evaluate optimizers on a suite against tuned AdamW: the results dict behind every report.

    suite = resolve_suite("in_distribution")
    specs = with_reference([parse_optimizer("sgd-momentum")])
    results = evaluate_suite(suite, specs, EvaluationConfig(num_seeds=3))

For each task: every optimizer runs its LR grid x seeds (`harness.run_grid`), its LR is chosen on
final train loss (`tuning.choose_lr`), and its chosen runs are compared with tuned AdamW's
(`metrics`). The dict is JSON-ready (non-finite numbers become None) and is what
`report.write_report` renders.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np

from meta_train.evaluation import metrics
from meta_train.evaluation.baselines import REFERENCE, LRGrid
from meta_train.evaluation.harness import DEFAULT_CACHE, ProgramCache, RunSchedule, run_grid
from meta_train.evaluation.specs import OptimizerSpec, parse_optimizer
from meta_train.evaluation.suites import Suite, is_available
from meta_train.evaluation.tuning import choose_lr, next_edge_lr


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """num_seeds: runs per (optimizer, LR); max_steps: cap on each task's horizon (None: the
    horizon); final_fraction: share of steps averaged into the final loss; divergence_factor:
    final/initial train-loss ratio above which a run diverged; tie_rel_tol: relative half-width
    of the tie band; memory_budget_bytes: per vmapped chunk; data_dir: datasets (None: default);
    extend_lr_grid: the most LR points a tuned baseline adds past the end of its grid where its
    chosen LR lies, one grid spacing at a time (0: the grid as given; `extend_at_edges`)."""

    num_seeds: int = 3
    base_seed: int = 0
    num_evals: int = 10
    max_steps: int | None = None
    final_fraction: float = 0.1
    divergence_factor: float = 2.0
    tie_rel_tol: float = 0.01
    memory_budget_bytes: int = 2 << 30
    data_dir: str | None = None
    extend_lr_grid: int = 2


def with_reference(specs: list[OptimizerSpec], grids: dict[str, LRGrid] | None = None):
    """specs with tuned AdamW first (added when not given; it is what everything is compared to)."""
    ref = [s for s in specs if s.label == REFERENCE]
    rest = [s for s in specs if s.label != REFERENCE]
    labels = [s.label for s in rest]
    duplicates = sorted({x for x in labels if labels.count(x) > 1})
    if duplicates:
        raise ValueError(f"--optimizer given twice: {duplicates}; give each SPEC once.")
    return (ref[:1] or [parse_optimizer(REFERENCE, grids)]) + rest


def _finite(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _floats(a) -> list[float | None]:
    return [_finite(v) for v in np.asarray(a, np.float64).ravel()]


def _optimizer_result(spec: OptimizerSpec, runs, window: int, factor: float) -> dict[str, Any]:
    final = metrics.final_loss(runs.train_loss, window)  # [L, S]
    div = metrics.diverged(runs.train_loss, window, factor)  # [L, S]
    with np.errstate(invalid="ignore"):
        grid_mean = final.mean(axis=1)
    choice = choose_lr(grid_mean, div.any(axis=1))
    i = choice.index
    train, test = runs.train_loss[i], runs.test_loss[i]  # [S, T], [S, E]
    with np.errstate(invalid="ignore"):
        test_final = test[:, -1]
        return {
            "kind": spec.kind,
            "tuned": spec.tuned,
            "lr_grid": _floats(runs.learning_rates) if spec.kind == "baseline" else [],
            "lr_grid_requested": _floats(spec.learning_rates) if spec.kind == "baseline" else [],
            "lr_grid_added": [],
            "grid_final_train_loss": _floats(grid_mean) if spec.kind == "baseline" else [],
            "grid_diverged_seeds": div.sum(axis=1).tolist() if spec.kind == "baseline" else [],
            "chosen_lr": float(runs.learning_rates[i]) if spec.kind == "baseline" else None,
            "chosen_lr_at_grid_edge": choice.at_grid_edge,
            "final_train_loss": _finite(final[i].mean()),
            "final_train_loss_std": _finite(final[i].std()),
            "final_train_loss_per_seed": _floats(final[i]),
            "final_test_loss": _finite(test_final.mean()),
            "final_test_loss_std": _finite(test_final.std()),
            "diverged": bool(div[i].any()),
            "diverged_seeds": int(div[i].sum()),
            "train_curve": _floats(train.mean(axis=0)),
            "test_steps": [int(s) for s in runs.test_steps],
            "test_curve": _floats(test.mean(axis=0)),
            "time": {"compile_s": runs.compile_s, "run_s": runs.run_s, "step_s": runs.step_s,
                     "total_s": runs.compile_s + runs.run_s,
                     "runs": int(runs.train_loss.shape[0] * runs.train_loss.shape[1]),
                     "lr_chunk_size": runs.chunk_size},
        }


def _compare(task: dict[str, Any], window: int, rel_tol: float) -> None:
    """Adds steps_to_reference, speedup and outcome to each optimizer of one task (in place)."""
    ref = task["optimizers"][REFERENCE]
    target = ref["final_train_loss"] if not ref["diverged"] else None
    target = math.nan if target is None else target
    ref_steps = metrics.steps_to_reach(np.array(ref["train_curve"], np.float64), target, window)
    task["reference_target_loss"] = _finite(target)
    for label, r in task["optimizers"].items():
        curve = np.array([math.nan if v is None else v for v in r["train_curve"]], np.float64)
        steps = None if r["diverged"] else metrics.steps_to_reach(curve, target, window)
        r["steps_to_reference"] = steps
        r["speedup"] = metrics.speedup(ref_steps, steps)
        if label == REFERENCE:
            r["outcome"] = "reference"
            continue
        nan = lambda v: math.nan if v is None else v
        r["outcome"] = metrics.outcome(
            nan(r["final_train_loss"]), nan(r["final_train_loss_std"]), r["diverged"],
            nan(ref["final_train_loss"]), nan(ref["final_train_loss_std"]), ref["diverged"],
            rel_tol)


def summarize(tasks: dict[str, dict], labels: list[str]) -> dict[str, dict]:
    """Per optimizer: wins/ties/losses vs the reference, win rate, median speedup (never
    reached counts as 0), divergences (tasks where the chosen runs diverged)."""
    summary = {}
    for label in labels:
        rows = [t["optimizers"][label] for t in tasks.values()]
        outcomes = [r["outcome"] for r in rows]
        speedups = [r["speedup"] if r["speedup"] is not None else 0.0 for r in rows]
        summary[label] = {
            "tasks": len(rows),
            "wins": outcomes.count("win"),
            "ties": outcomes.count("tie"),
            "losses": outcomes.count("loss"),
            "win_rate": (outcomes.count("win") / len(rows)) if rows and label != REFERENCE else None,
            "median_speedup": float(np.median(speedups)) if rows else None,
            "divergences": sum(r["diverged"] for r in rows),
        }
    return summary


REUSE_CONFIG_KEYS = ("num_seeds", "base_seed", "num_evals", "max_steps", "final_fraction",
                     "divergence_factor")


def reusable_baseline(previous: dict[str, Any] | None, config: EvaluationConfig, task_name: str,
                      steps: int, spec: OptimizerSpec) -> dict[str, Any] | None:
    """A tuned baseline's result from an earlier evaluation (`results.json`) run with the same
    seeds, steps, evaluation points and LR grid, or None. Baselines are deterministic in those,
    so the runs need not be repeated to compare a new learned optimizer against them."""
    if previous is None or spec.kind != "baseline":
        return None
    old_config = previous.get("config", {})
    if any(old_config.get(k) != getattr(config, k) for k in REUSE_CONFIG_KEYS):
        return None
    task = previous.get("tasks", {}).get(task_name)
    old = (task or {}).get("optimizers", {}).get(spec.label)
    if not task or not old or task.get("steps") != steps:
        return None
    old_grid = old.get("lr_grid_requested") or old.get("lr_grid") or []
    if len(old_grid) != len(spec.learning_rates) or not np.allclose(old_grid, spec.learning_rates, rtol=1e-6):
        return None
    return {**old, "reused_from": previous.get("_path", "an earlier evaluation")}


_CHOSEN_RUN_KEYS = ("chosen_lr", "final_train_loss", "final_train_loss_std", "final_train_loss_per_seed",
                    "final_test_loss", "final_test_loss_std", "diverged", "diverged_seeds",
                    "train_curve", "test_steps", "test_curve")


def extend_at_edges(result: dict[str, Any], run_point: Callable[[float], dict[str, Any]],
                    max_points: int) -> dict[str, Any]:
    """A tuned baseline's result with LR points added past the end of its grid where the choice
    lies, one grid spacing at a time, until the choice is inside the grid or `max_points` were
    added (counting those of a reused result). A best LR at the edge of the grid is a lower
    bound on the baseline, not its tuning. `run_point(lr)` runs one LR (a one-point result of
    `_optimizer_result`); the choice is re-made over the whole grid by `tuning.choose_lr`."""
    requested = result.get("lr_grid_requested") or result["lr_grid"]
    if len(requested) < 2:
        return result
    spacing = (requested[-1] / requested[0]) ** (1.0 / (len(requested) - 1))
    result = {**result, "lr_grid_requested": list(requested),
              "lr_grid_added": list(result.get("lr_grid_added", []))}
    while len(result["lr_grid_added"]) < max_points:
        new_lr = next_edge_lr(result["lr_grid"], result["chosen_lr"], spacing)
        if new_lr is None:
            break
        point = run_point(new_lr)
        grid = result["lr_grid"] + point["lr_grid"]
        means = result["grid_final_train_loss"] + point["grid_final_train_loss"]
        div = result["grid_diverged_seeds"] + point["grid_diverged_seeds"]
        order = np.argsort(grid)
        grid, means, div = ([x[i] for i in order] for x in (grid, means, div))
        choice = choose_lr(np.array([math.nan if m is None else m for m in means]), np.array(div) > 0)
        chosen = point if grid[choice.index] == point["lr_grid"][0] else result
        time = {k: result["time"][k] + point["time"][k] for k in ("compile_s", "run_s", "total_s", "runs")}
        result = {**result, **{k: chosen[k] for k in _CHOSEN_RUN_KEYS},
                  "lr_grid": grid, "grid_final_train_loss": means, "grid_diverged_seeds": div,
                  "chosen_lr_at_grid_edge": choice.at_grid_edge,
                  "lr_grid_added": result["lr_grid_added"] + point["lr_grid"],
                  "time": {**result["time"], **time}}
    return result


def evaluate_suite(suite: Suite, specs: list[OptimizerSpec], config: EvaluationConfig, *,
                   cache: ProgramCache = DEFAULT_CACHE, progress=None,
                   previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """Runs every optimizer on every available task; `progress(advance, description)` is
    called as LR points finish (see cli.py for the rich bar). `previous`: an earlier results
    dict whose tuned baselines are reused where they match (`reusable_baseline`)."""
    if not specs or specs[0].label != REFERENCE:
        raise ValueError(f"specs must start with the reference {REFERENCE!r}; use with_reference.")
    tasks, skipped = {}, []
    for entry in suite.entries:
        if not is_available(entry, config.data_dir):
            skipped.append(entry.name)
            if progress:
                progress(sum(len(s.learning_rates) for s in specs), f"{entry.name}: skipped")
            continue
        task = entry.build(config.data_dir)
        steps = min(entry.horizon, config.max_steps or entry.horizon)
        schedule = RunSchedule(steps, config.num_seeds, config.base_seed, config.num_evals,
                               config.memory_budget_bytes)
        window = metrics.final_window(steps, config.final_fraction)
        m = entry.multipliers
        result = {
            "num_params": int(task.info.num_params),
            "horizon": int(entry.horizon),
            "steps": steps,
            "held_out_dataset": bool(entry.held_out_dataset),
            "multipliers": {"width": m.width, "depth": m.depth,
                            "horizon": m.horizon * steps / entry.horizon},
            "optimizers": {},
        }
        for spec in specs:
            desc = f"{entry.name} / {spec.label}"
            reused = reusable_baseline(previous, config, entry.name, steps, spec)
            if reused is not None:
                r = reused
                if progress:
                    progress(len(spec.learning_rates), f"{desc}: reused")
            else:
                if progress:
                    progress(0, desc)
                runs = run_grid(spec, task, schedule, cache=cache,
                                on_chunk=(lambda n, d=desc: progress(n, d)) if progress else None)
                r = _optimizer_result(spec, runs, window, config.divergence_factor)
            if spec.kind == "baseline" and config.extend_lr_grid > 0:
                def run_point(lr, spec=spec):
                    one = dataclasses.replace(spec, learning_rates=(lr,))
                    return _optimizer_result(one, run_grid(one, task, schedule, cache=cache), window,
                                             config.divergence_factor)

                r = extend_at_edges(r, run_point, config.extend_lr_grid)
            result["optimizers"][spec.label] = r
        _compare(result, window, config.tie_rel_tol)
        tasks[entry.name] = result
    labels = [s.label for s in specs]
    return {
        "suite": suite.name,
        "reference": REFERENCE,
        "optimizers": labels,
        "config": dataclasses.asdict(config),
        "definitions": {
            "final_loss": f"mean train loss over the last {config.final_fraction:g} of steps",
            "diverged": f"non-finite loss, or final > {config.divergence_factor:g} x initial",
            "tie_band": f"max({config.tie_rel_tol:g} x |ref|, sqrt((std^2 + ref_std^2)/2))",
            "speedup": "reference steps to its final loss / optimizer steps to that loss",
        },
        "tasks": tasks,
        "skipped_tasks": skipped,
        "summary": summarize(tasks, labels),
    }
