"""Final train loss of a learned optimizer with its whole step multiplied by each of a few factors.

A learned optimizer has no learning rate; this asks whether the level meta-training gave it is the
right one for each task, and how far off it is. Each factor k runs the optimizer's own update times
k (`optax.scale`; for `mu_velo` the same as adding log k to its learned log step). The factors of
one task share one compiled, vmapped program, as a baseline's LR grid does in `lopt evaluate`
(same seeds, steps, final window). Use it on tasks from the meta-training distribution
(configs/probe_families.yaml), never to pick a factor on the evaluation suites:

    .venv/bin/python benchmarks/level_sweep.py --optimizer mu_velo_v2 \
        --suite configs/probe_families.yaml [--factors 0.37 0.61 1 1.65 2.72] \
        [--set bias_correction=true] [--seeds 3] [--out sweep.json]

`--set FIELD=VALUE` replaces a field of the optimizer's architecture dataclass (e.g. `mu_velo`'s
`bias_correction`) before the sweep: a diagnostic of a design change without meta-training.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

import numpy as np
import optax

from learned_opt import checkpoint
from meta_train.evaluation import metrics
from meta_train.evaluation.evaluate import EvaluationConfig
from meta_train.evaluation.harness import RunSchedule, run_grid
from meta_train.evaluation.specs import OptimizerSpec, learned_spec
from meta_train.evaluation.suites import resolve_suite


def parse_field(arch, text: str) -> tuple[str, object]:
    """'bias_correction=true' -> ("bias_correction", True), typed by the field's current value."""
    name, eq, raw = text.partition("=")
    fields = {f.name for f in dataclasses.fields(arch)} if dataclasses.is_dataclass(arch) else set()
    if not eq or name not in fields:
        raise ValueError(f"--set {text!r}: expected FIELD=VALUE with FIELD one of {sorted(fields)}.")
    current = getattr(arch, name)
    if isinstance(current, bool):
        if raw.lower() not in ("true", "false"):
            raise ValueError(f"--set {text!r}: {name} is a bool; give true or false.")
        return name, raw.lower() == "true"
    if isinstance(current, (int, float, str)):
        return name, type(current)(raw)
    raise ValueError(f"--set {text!r}: {name} is a {type(current).__name__}; only bool, int, "
                     "float and str fields can be set here.")


def scaled_spec(label: str, arch, theta, factors: list[float]) -> OptimizerSpec:
    """The learned optimizer as `lopt evaluate` builds it (`learned_spec`), times k, with the
    factors as the grid `run_grid` vmaps over."""
    unscaled = learned_spec(label, arch, theta)

    def make(factor, params, task, num_steps):
        return optax.chain(unscaled.make(None, params, task, num_steps), optax.scale(factor))

    return OptimizerSpec(label, "learned", make, tuple(factors), tuned=False)


def sweep(spec: OptimizerSpec, suite_path: str, config: EvaluationConfig) -> dict:
    """Per task: final train loss (mean, std, per seed) and divergence at every factor."""
    out = {}
    for entry in resolve_suite(suite_path).entries:
        task = entry.build(config.data_dir)
        schedule = RunSchedule(entry.horizon, config.num_seeds, config.base_seed,
                               config.num_evals, config.memory_budget_bytes)
        window = metrics.final_window(entry.horizon, config.final_fraction)
        runs = run_grid(spec, task, schedule)
        final_LxS = metrics.final_loss(runs.train_loss, window)
        div_LxS = metrics.diverged(runs.train_loss, window, config.divergence_factor)
        rows = []
        for k, final_S, div_S in zip(spec.learning_rates, final_LxS, div_LxS):
            rows.append({"factor": float(k), "final_train_loss": float(np.mean(final_S)),
                         "final_train_loss_std": float(np.std(final_S)),
                         "per_seed": [float(x) for x in final_S],
                         "diverged_seeds": int(np.sum(div_S))})
        finite = [r for r in rows if math.isfinite(r["final_train_loss"]) and not r["diverged_seeds"]]
        best = min(finite, key=lambda r: r["final_train_loss"]) if finite else None
        out[entry.name] = {"factors": rows, "best_factor": best and best["factor"]}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--optimizer", required=True, help="a pretrained name or a .safetensors path")
    p.add_argument("--suite", required=True, help="a built-in suite name or a YAML task list")
    p.add_argument("--factors", type=float, nargs="+", default=[0.37, 0.61, 1.0, 1.65, 2.72])
    p.add_argument("--set", dest="fields", action="append", default=[], metavar="FIELD=VALUE")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if any(not (k > 0 and math.isfinite(k)) for k in args.factors):
        raise ValueError(f"--factors {args.factors}: every factor must be positive and finite.")
    arch, theta, _ = checkpoint.load_theta(args.optimizer)
    fields = dict(parse_field(arch, f) for f in args.fields)
    arch = dataclasses.replace(arch, **fields) if fields else arch
    label = args.optimizer + "".join(f" {k}={v}" for k, v in fields.items())
    config = EvaluationConfig(num_seeds=args.seeds)
    result = sweep(scaled_spec(label, arch, theta, args.factors), args.suite, config)
    print(f"{label}: final train loss, mean over {args.seeds} seeds (diverged seeds in brackets)")
    print(f"{'task':42s}" + "".join(f"{'x%g' % k:>11s}" for k in args.factors) + "   best")
    for name, r in result.items():
        cells = "".join(f"{row['final_train_loss']:>11.4g}" + (f"[{row['diverged_seeds']}]" if row["diverged_seeds"] else "")
                        for row in r["factors"])
        print(f"{name:42s}{cells}   x{r['best_factor']}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"optimizer": label, "suite": args.suite, "seeds": args.seeds,
                       "tasks": result}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
