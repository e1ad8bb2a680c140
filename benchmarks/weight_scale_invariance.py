"""Final train loss under a global weight reparameterization p = s * q, the premise of Celo's
weight-scale augmentation (issue 16).

The optimizer trains q; the model sees s * q, from the same function as for s = 1 (q starts at
p0 / s). An optimizer whose step is relative to RMS(q) (`velo`, VeLO / Celo's scale) takes the
same path in p for every s; one with an absolute step (Adam at a fixed LR, `mu_velo`'s mu-P
base step) moves p s times as far. Augmentation over s in [1e-3, 1e3] teaches a learned
optimizer the first behaviour. Runs go through `lopt evaluate`'s harness (same seeds, final
window, test loss):

    .venv/bin/python benchmarks/weight_scale_invariance.py [--scales 0.01 0.1 1 10 100] \
        [--optimizer adamw@1e-3 --optimizer mu_velo_v1 --optimizer velo-untrained] [--seeds 2]

The task is the first of configs/probe_meta_train.yaml (an MLP from the meta-training
distribution, not an evaluation task).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from typing import Any

import jax
from flax import struct

import learned_opt
from meta_train.evaluation import metrics
from meta_train.evaluation.evaluate import EvaluationConfig, _optimizer_result
from meta_train.evaluation.harness import RunSchedule, run_grid
from meta_train.evaluation.specs import OptimizerSpec, learned_spec, parse_optimizer
from meta_train.evaluation.suites import resolve_suite


class ScaledTask(struct.PyTreeNode):
    """`inner` trained through q = p / scale: the same model and data, another parameterization."""

    inner: Any
    scale: float = struct.field(pytree_node=False)

    @property
    def info(self):
        return dataclasses.replace(self.inner.info, name=f"{self.inner.info.name}_x{self.scale:g}")

    @property
    def model(self):  # mu-P roles are those of the same tensors
        return self.inner.model

    def _p(self, q):
        return jax.tree.map(lambda x: x * self.scale, q)

    def init(self, key):
        return jax.tree.map(lambda x: x / self.scale, self.inner.init(key))

    def loss(self, q, batch):
        return self.inner.loss(self._p(q), batch)

    def sample_batch(self, key, *, split="train"):
        return self.inner.sample_batch(key, split=split)

    def eval_loss(self, q):
        return self.inner.eval_loss(self._p(q))


def _untrained(name: str) -> OptimizerSpec:
    arch = learned_opt.ARCHITECTURES[name]
    return learned_spec(f"{name}-untrained", arch, arch.init_theta(jax.random.key(0)))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scales", type=float, nargs="+", default=[0.01, 0.1, 1.0, 10.0, 100.0])
    p.add_argument("--optimizer", action="append", default=None)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--out", default=None, help="write the table as JSON here")
    args = p.parse_args(argv)
    names = args.optimizer or ["adamw@1e-3", "mu_velo_v1", "velo-untrained"]
    specs = [_untrained(n[: -len("-untrained")]) if n.endswith("-untrained") else parse_optimizer(n) for n in names]
    entry = resolve_suite("configs/probe_meta_train.yaml").entries[0]
    base = entry.build(None)
    config = EvaluationConfig()
    schedule = RunSchedule(entry.horizon, args.seeds, config.base_seed, config.num_evals, config.memory_budget_bytes)
    window = metrics.final_window(entry.horizon, config.final_fraction)
    table = {}
    for spec in specs:
        for s in args.scales:
            r = _optimizer_result(spec, run_grid(spec, ScaledTask(base, s), schedule), window, config.divergence_factor)
            loss = r["final_train_loss"]
            table.setdefault(spec.label, {})[f"{s:g}"] = loss
            print(f"{spec.label:18s} s={s:<6g} final train loss {loss:.4g}  test {r['final_test_loss']:.4g}"
                  f"{'  diverged' if r['diverged'] else ''}", flush=True)
    print(f"task: {base.info.name}, {entry.horizon} steps, {args.seeds} seeds")
    for label, row in table.items():
        spread = [v for v in row.values() if v is not None and math.isfinite(v)]
        ratio = max(spread) / min(spread) if spread and min(spread) > 0 else float("inf")
        print(f"{label:18s} max / min over scales: {ratio:.3g}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"task": base.info.name, "steps": entry.horizon, "seeds": args.seeds, "final_train_loss": table}, f, indent=1)
    return table


if __name__ == "__main__":
    main()
