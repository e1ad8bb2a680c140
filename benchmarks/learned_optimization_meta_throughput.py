"""Meta-training throughput of google/learned_optimization's TruncatedPES on issue 18's setup.

The reference side of the comparison with `benchmarks/meta_throughput.py`: truncated PES, 8
tasks x 2 antithetic branches, truncation 50, an MLP (32, 32) ReLU on MNIST-1D at batch 128
(2,698 parameters), learned optimizer AdafacMLPLOpt(hidden_size=4) (our mlp_small's size) or
hidden 32. It counts inner steps per second over every branch, one outer step
(SingleMachineGradientLearner.update: PES estimate plus the theta update) at a time, after
compilation, median over trials. The task, its data pipeline and the timing are written here;
the outer-training code is learned_optimization's own, imported from a separate install. None
of its code lives in this repo.

Install it as for benchmarks/learned_optimization_step_time.py (its own venv, no dependencies,
our jax/flax/optax/haiku versions), plus tensorflow-datasets (our pin, which reads our TFDS cache
without TensorFlow). Build MNIST-1D once with this repo's venv (any `lopt` run or
`.venv/bin/python -c "import tasks; tasks.data.prepare('mnist1d')"` does), then:

    /tmp/lo_venv/bin/python benchmarks/learned_optimization_meta_throughput.py --hidden-size 4
    /tmp/lo_venv/bin/python benchmarks/learned_optimization_meta_throughput.py --hidden-size 32
    .venv/bin/python benchmarks/meta_throughput.py --config configs/quickstart.yaml \\
        tasks.kwargs.datasets=[mnist1d] tasks.kwargs.widths=[32] tasks.kwargs.depths=[3] \\
        tasks.kwargs.batch_sizes=[128] unroll.truncation_length=50 estimator.num_pairs=8

Run the two sides one after the other on quiet cores. Ours splits each worker's pairs over the
cores by default (`run.population_devices`; add `run.population_devices=1` for one device).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
import types

import flax.io  # noqa: F401  (decides "no TensorFlow" before the stub below exists)
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tensorflow_datasets as tfds

# learned_optimization imports tensorflow at the top of modules that only write summaries: a
# stub stands in while they import, and leaves, so that tfds and etils still see no TensorFlow.
_STUB = importlib.util.find_spec("tensorflow") is None
if _STUB:
    _tf, _compat, _v2 = (types.ModuleType(n) for n in ("tensorflow", "tensorflow.compat", "tensorflow.compat.v2"))
    _v2.enable_v2_behavior = lambda: None
    _tf.compat, _compat.v2 = _compat, _v2
    sys.modules.update({m.__name__: m for m in (_tf, _compat, _v2)})

from learned_optimization.learned_optimizers.adafac_mlp_lopt import AdafacMLPLOpt  # noqa: E402
from learned_optimization.optimizers import base as opt_base  # noqa: E402
from learned_optimization.outer_trainers import gradient_learner  # noqa: E402
from learned_optimization.outer_trainers import lopt_truncated_step  # noqa: E402
from learned_optimization.outer_trainers import truncated_pes  # noqa: E402
from learned_optimization.outer_trainers import truncation_schedule  # noqa: E402
from learned_optimization.tasks import base as tasks_base  # noqa: E402
from learned_optimization.tasks.datasets import base as datasets_base  # noqa: E402

if _STUB:
    for _name in ("tensorflow", "tensorflow.compat", "tensorflow.compat.v2"):
        sys.modules.pop(_name, None)

DATA_DIR = os.environ.get("LEARNED_OPT_DATA_DIR", os.path.expanduser("~/.cache/learned_opt/tensorflow_datasets"))


def mnist1d_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(x f32[N, 40], label i32[N]) from this repo's TFDS cache, without its code or TensorFlow."""
    root = os.path.join(DATA_DIR, "lopt_mnist1d")
    versions = sorted(os.listdir(root)) if os.path.isdir(root) else []
    if not versions:
        raise SystemExit(f"No MNIST-1D in {root}: build it with this repo's venv first (see the docstring).")
    source = tfds.builder_from_directory(os.path.join(root, versions[-1])).as_data_source(split=split)
    rows = [source[i] for i in range(len(source))]
    return np.stack([r["x"] for r in rows]).astype(np.float32), np.asarray([r["label"] for r in rows], np.int32)


def batches(x, y, batch_size: int, seed: int):
    """An endless iterator of random training batches, as learned_optimization's tasks use."""
    rng = np.random.default_rng(seed)
    while True:
        idx = rng.integers(0, len(x), batch_size)
        yield {"image": x[idx], "label": y[idx]}


class MLPMnist1D(tasks_base.Task):
    """MLP (hidden...) ReLU on MNIST-1D, softmax cross-entropy: the task of meta_throughput.py."""

    def __init__(self, hidden=(32, 32), batch_size=128):
        x, y = mnist1d_arrays("train")
        it = batches(x, y, batch_size, 0)
        self.datasets = datasets_base.Datasets(train=it, inner_valid=it, outer_valid=it, test=it)
        self.sizes = (x.shape[1], *hidden, 10)

    def init(self, key):
        keys = jax.random.split(key, len(self.sizes) - 1)
        return [{"w": jax.random.normal(k, (i, o)) / jnp.sqrt(i), "b": jnp.zeros((o,))}
                for k, i, o in zip(keys, self.sizes[:-1], self.sizes[1:])]

    def loss(self, params, key, data):
        h = data["image"]
        for layer in params[:-1]:
            h = jax.nn.relu(h @ layer["w"] + layer["b"])
        logits = h @ params[-1]["w"] + params[-1]["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, data["label"]).mean()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden-size", type=int, default=4, help="AdafacMLPLOpt's hidden width (4: mlp_small's)")
    ap.add_argument("--num-tasks", type=int, default=8)
    ap.add_argument("--trunc-length", type=int, default=50)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--calls", type=int, default=5, help="outer steps per trial")
    args = ap.parse_args(argv)

    task = MLPMnist1D()
    lopt = AdafacMLPLOpt(hidden_size=args.hidden_size)
    step = lopt_truncated_step.VectorizedLOptTruncatedStep(
        task_family=tasks_base.single_task_to_family(task),
        learned_opt=lopt,
        trunc_sched=truncation_schedule.LogUniformLengthSchedule(min_length=100, max_length=2000),
        num_tasks=args.num_tasks,
        random_initial_iteration_offset=2000,
    )
    pes = truncated_pes.TruncatedPES(truncated_step=step, trunc_length=args.trunc_length, std=0.01)
    learner = gradient_learner.SingleMachineGradientLearner(lopt, [pes], opt_base.Adam(3e-4))
    key = jax.random.PRNGKey(0)
    state = learner.init(key)

    def outer_steps(n, state, key):
        for _ in range(n):
            key, sub = jax.random.split(key)
            state, loss, _ = learner.update(state, sub, with_metrics=False)
        jax.block_until_ready(loss)
        return state, key

    state, key = outer_steps(2, state, key)  # compile and warm up
    inner_per_outer = args.num_tasks * 2 * args.trunc_length
    rates = []
    for _ in range(args.trials):
        start = time.perf_counter()
        state, key = outer_steps(args.calls, state, key)
        rates.append(inner_per_outer * args.calls / (time.perf_counter() - start))
    n_params = sum(int(np.prod(s)) for s in (
        [(i, o) for i, o in zip(task.sizes[:-1], task.sizes[1:])] + [(o,) for o in task.sizes[1:]]))
    result = {
        "library": "learned_optimization TruncatedPES",
        "device": str(jax.devices()[0]),
        "lopt": f"AdafacMLPLOpt(hidden_size={args.hidden_size})",
        "task_params": n_params,
        "num_tasks": args.num_tasks,
        "trunc_length": args.trunc_length,
        "inner_steps_per_outer_step": inner_per_outer,
        "inner_steps_per_s_median": statistics.median(rates),
        "inner_steps_per_s_trials": rates,
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
