"""Meta-training throughput with Ray workers (1 and 2 actors) vs in-process, and the learner's
overhead per update.

    .venv/bin/python benchmarks/ray_throughput.py [--config configs/smoke.yaml] [--steps 30] [key=value ...]

For each setup the same recipe runs `--warmup` outer steps (compile, actor start) and then
`--steps` timed ones through the real driver pieces (`build_run`, `Dispatcher.step`):
  inner_steps_per_s   inner (task) steps of all population members per wall-clock second
  learner_ms          median per update of the time the driver spends outside waiting for
                      workers: putting theta in the object store, submitting calls, averaging,
                      the outer AdamW step (`perf/learner_s`)
  wait_ms             median per update of the time blocked on workers (`perf/wait_s`)
Ray runs on a private local cluster with one CPU per actor; the actors share a JAX compilation
cache so only the first compiles. On a 2-core machine two workers plus the driver share the
cores, so expect sub-linear scaling; the point is the overhead, not the speed-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import jax
import numpy as np
import ray

from meta_train import metrics as metrics_lib
from meta_train.config import load_config
from meta_train.distribution.ray_workers import RayPool
from meta_train.train import build_run, make_dispatcher


def _measure(config, pool, warmup: int, steps: int) -> dict:
    run = build_run(config, pool=pool)
    dispatcher = make_dispatcher(run)
    for _ in range(warmup):
        run.learner, _ = dispatcher.step(run.learner)
    jax.block_until_ready(run.learner)
    rows, start = [], time.perf_counter()
    for _ in range(steps):
        run.learner, metrics = dispatcher.step(run.learner)
        rows.append(metrics)
    jax.block_until_ready(run.learner)
    elapsed = time.perf_counter() - start
    rows = [metrics_lib.to_host(m) for m in rows]
    dispatcher.close()
    return {
        "inner_steps_per_s": sum(r["unroll/inner_steps"] for r in rows) / elapsed,
        "outer_steps_per_s": steps / elapsed,
        "learner_ms": 1e3 * statistics.median(r["perf/learner_s"] for r in rows),
        "wait_ms": 1e3 * statistics.median(r["perf/wait_s"] for r in rows),
        "stale_dropped": sum(r["dist/stale_dropped"] for r in rows),
        "final_meta_loss": float(np.mean([r["meta_loss"] for r in rows[-5:]])),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/smoke.yaml")
    p.add_argument("--steps", type=int, default=30, help="timed outer steps per setup")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    base = ["run.progress=false", f"run.num_steps={args.steps + args.warmup}", *args.overrides]
    setups = [("in_process", 1, "sync"), ("ray", 1, "sync"), ("ray", 2, "sync"), ("ray", 2, "async")]
    cache = tempfile.mkdtemp(prefix="lopt_jax_cache_")
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"JAX_COMPILATION_CACHE_DIR": cache,
                                       "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}})
    results = []
    try:
        for where, n, mode in setups:
            config = load_config(args.config, base + [f"distributed.num_workers={n}", f"distributed.mode={mode}"])
            pool = RayPool(config) if where == "ray" else None
            try:
                row = {"workers": where if where == "in_process" else f"ray x{n}", "mode": mode}
                row.update(_measure(config, pool, args.warmup, args.steps))
            finally:
                if pool is not None:
                    pool.close()
            results.append(row)
            print(json.dumps(row), flush=True)
    finally:
        ray.shutdown()
    summary = {
        "config": args.config,
        "overrides": args.overrides,
        "device": str(jax.devices()[0]),
        "results": results,
    }
    by = {(r["workers"], r["mode"]): r for r in results}
    summary["speedup_2_over_1_sync"] = (
        by[("ray x2", "sync")]["inner_steps_per_s"] / by[("ray x1", "sync")]["inner_steps_per_s"]
    )
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
