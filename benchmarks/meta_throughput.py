"""Inner steps per second of PES meta-training vs plain training of the same population.

    .venv/bin/python benchmarks/meta_throughput.py [--config configs/quickstart.yaml] [key=value ...]

Each worker's pairs are split over the host's cores as in `lopt meta-train`
(run.population_devices; `run.population_devices=1` for one device).

Both sides run the same population ([pairs, 2 antithetic branches], every branch counted as
inner steps), the same K-step jitted truncation with donated state buffers, on the same tasks.
"Plain" trains that population with a frozen theta (no perturbation, no accumulator, no
estimate); PES adds sampling eps, theta +/- eps per branch, the accumulator and the estimate.
Trials alternate between the two and the median is reported, since the machine is shared.
Target: ratio (PES / plain) >= 0.8.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import time

import jax

from meta_train import population_devices
from meta_train import unroll as unroll_lib
from meta_train.config import load_config
from meta_train.train import build_run


def _time(fn, n):
    start = time.perf_counter()
    for i in range(n):
        out = fn(i)
    jax.block_until_ready(out)
    return time.perf_counter() - start


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/quickstart.yaml")
    p.add_argument("--calls", type=int, default=20, help="truncations per trial")
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    config = load_config(args.config, ["estimator.name=pes", "estimator.num_workers=1", *args.overrides])
    population_devices.request_cpu_devices(config.run.population_devices)  # as `lopt meta-train`
    run = build_run(config)
    worker, cfg = run.workers[0], config.unroll
    theta = run.learner.theta
    arch = run.arch

    def pes_call(i):  # the worker's jitted, donated estimate, as the trainer runs it
        grad, metrics = worker.compute(theta, jax.random.PRNGKey(i))
        return grad

    # Plain training of the same population, split over the same devices.
    split = (lambda: jax.set_mesh(worker.mesh)) if worker.mesh is not None else contextlib.nullcontext
    plain = jax.jit(functools.partial(unroll_lib.plain_truncation, arch, cfg), donate_argnums=(2,))
    plain_states = [jax.tree.map(lambda x: x.copy(), worker.get_states().unroll)]
    theta_plain = theta if worker.mesh is None else population_devices.replicated(worker.mesh, theta)

    def plain_call(i):
        with split():
            plain_states[0], out = plain(worker.pool, theta_plain, plain_states[0])
        return out.meta_loss

    steps_per_call = unroll_lib.num_inner_steps(plain_states[0], cfg)
    _time(pes_call, 2), _time(plain_call, 2)  # compile + warm up
    pes_rates, plain_rates = [], []
    for _ in range(args.trials):
        pes_rates.append(steps_per_call * args.calls / _time(pes_call, args.calls))
        plain_rates.append(steps_per_call * args.calls / _time(plain_call, args.calls))
    result = {
        "device": str(jax.devices()[0]),
        "population_devices": 1 if worker.mesh is None else worker.mesh.size,
        "architecture": config.optimizer.architecture,
        "pairs": config.estimator.num_pairs,
        "truncation_length": cfg.truncation_length,
        "inner_steps_per_call": steps_per_call,
        "pes_inner_steps_per_s": statistics.median(pes_rates),
        "plain_inner_steps_per_s": statistics.median(plain_rates),
    }
    result["ratio_pes_over_plain"] = result["pes_inner_steps_per_s"] / result["plain_inner_steps_per_s"]
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
