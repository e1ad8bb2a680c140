"""How much of a meta-training unroll is the learned optimizer's own update?

    .venv/bin/python benchmarks/lopt_share.py [--config configs/quickstart.yaml] [--calls 20]

Times plain truncations (theta frozen, no estimator) of the recipe's population with each
architecture, and with a one-parameter SGD "optimizer" whose update costs almost nothing, in one
process. The gap between the two is the learned optimizer's share of every unroll.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time

import jax
import jax.numpy as jnp

import learned_opt
from meta_train import unroll as unroll_lib
from meta_train.config import load_config
from meta_train.train import build_run


@dataclasses.dataclass(frozen=True)
class LearnedLRSGD:
    """The cheapest learned optimizer: SGD with a learned log learning rate."""

    name = "learned_lr_sgd"

    def init_theta(self, key):
        del key
        return {"log_lr": jnp.log(jnp.float32(0.05))}

    def init_state(self, params):
        del params
        return ()

    def update(self, theta, grads, state, params, *, loss=None, roles=None, num_steps=None):
        del params, loss, roles
        return jax.tree.map(lambda g: -jnp.exp(theta["log_lr"]) * g, grads), state


def steps_per_second(config, arch, calls: int) -> float:
    run = build_run(config, arch=arch)
    worker, pool, cfg = run.workers[0], run.pools[0], config.unroll
    plain = jax.jit(functools.partial(unroll_lib.plain_truncation, arch, cfg), donate_argnums=(2,))
    states = jax.tree.map(lambda x: x.copy(), worker.get_states().unroll)
    theta = run.learner.theta
    for _ in range(3):  # compile + warm up
        states, out = plain(pool, theta, states)
    jax.block_until_ready(out)
    start = time.perf_counter()
    for _ in range(calls):
        states, out = plain(pool, theta, states)
    jax.block_until_ready(out)
    return unroll_lib.num_inner_steps(states, cfg) * calls / (time.perf_counter() - start)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--arch", nargs="+", default=["mlp_small", "mlp"])
    args = ap.parse_args(argv)
    config = load_config(args.config, ["estimator.num_workers=1"])
    base = steps_per_second(config, LearnedLRSGD(), args.calls)
    print(f"{'learned-lr SGD (no optimizer cost)':40s} {base:9.0f} inner steps/s")
    for name in args.arch:
        arch = learned_opt.ARCHITECTURES[name]
        rate = steps_per_second(config, arch, args.calls)
        share = 1 - rate / base
        print(f"{name + ' (' + arch.impl + ')':40s} {rate:9.0f} inner steps/s   optimizer share {share:.0%}")


if __name__ == "__main__":
    main()
