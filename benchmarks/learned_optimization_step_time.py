"""Step time of google/learned_optimization's AdafacMLPLOpt, next to optax.adamw, in one process.

A reference point for benchmarks/step_time.py: the same MLPs, batch, timing loop and buffer
donation, but the update is AdafacMLPLOpt's (github.com/google/learned_optimization), imported
from a separately installed copy. None of its code lives in this repo.

learned_optimization pins old libraries (tensorflow, dm-haiku==0.0.5, ...), so install it
without dependencies into its own venv, next to this repo's jax/flax/optax/haiku versions:

    git clone https://github.com/google/learned_optimization /tmp/lo_src
    python3 -m venv /tmp/lo_venv
    /tmp/lo_venv/bin/pip install jax==<ours> jaxlib==<ours> flax==<ours> optax==<ours> \\
        dm-haiku==<ours> absl-py chex gin-config        # "<ours>": see .venv/bin/pip freeze
    /tmp/lo_venv/bin/pip install --no-deps -e /tmp/lo_src
    /tmp/lo_venv/bin/python benchmarks/learned_optimization_step_time.py
    /tmp/lo_venv/bin/python benchmarks/learned_optimization_step_time.py --hidden-size 32 --hidden-layers 2

AdafacMLPLOpt has 39 input features, like our MLPLOpt; the defaults (one hidden layer of 8)
match our default arch's 39 -> 8 -> 2 network. Its summary module imports tensorflow at the
top but uses it only to write summary files; if tensorflow is absent, a stub stands in for it.
For each size it times (median over repeats, after compilation):
  full step   = forward + backward + optimizer update + apply, batch 128
  update only = optimizer update + apply, on fixed gradients
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import types

import jax
import jax.numpy as jnp
import optax

# tensorflow: only `tensorflow.compat.v2.enable_v2_behavior()` runs at import time.
if importlib.util.find_spec("tensorflow") is None:
    _tf, _compat, _v2 = (types.ModuleType(n) for n in
                         ("tensorflow", "tensorflow.compat", "tensorflow.compat.v2"))
    _v2.enable_v2_behavior = lambda: None
    _tf.compat, _compat.v2 = _compat, _v2
    sys.modules.update({m.__name__: m for m in (_tf, _compat, _v2)})

from learned_optimization.learned_optimizers.adafac_mlp_lopt import AdafacMLPLOpt  # noqa: E402

# Reuse step_time.py's model and timing helpers; it imports `learned_opt` at the top but uses it
# only in its main(), so a stub keeps this repo's package out of the process.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.modules.setdefault("learned_opt", types.ModuleType("learned_opt"))
from benchmarks.step_time import BATCH, SIZES, bench, mlp_loss, mlp_params, time_fn  # noqa: E402


def bench_lo(opt, params, x, y, repeats, num_steps=10_000):
    """(full, update-only) seconds for a learned_optimization Optimizer, whose state holds params."""
    grads = jax.grad(mlp_loss)(params, x, y)

    def full(state):
        loss, g = jax.value_and_grad(mlp_loss)(opt.get_params(state), x, y)
        return (opt.update(state, g, loss=loss),)

    def update_only(state):
        return (opt.update(state, grads, loss=jnp.float32(1.0)),)

    def fresh():
        return (opt.init(jax.tree.map(jnp.copy, params), num_steps=num_steps),)

    t_full = time_fn(jax.jit(full, donate_argnums=0), fresh(), repeats)
    t_upd = time_fn(jax.jit(update_only, donate_argnums=0), fresh(), repeats)
    return t_full, t_upd


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden-size", type=int, default=8)
    ap.add_argument("--hidden-layers", type=int, default=1)
    ap.add_argument("--sizes", nargs="+", default=["2m"], choices=sorted(SIZES))
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)

    lopt = AdafacMLPLOpt(hidden_size=args.hidden_size, hidden_layers=args.hidden_layers)
    theta = lopt.init(jax.random.key(0))
    opt = lopt.opt_fn(theta)
    adamw = optax.adamw(1e-3)
    n_theta = sum(v.size for v in jax.tree.leaves(theta))
    print(f"device: {jax.devices()[0].device_kind}  jax {jax.__version__}  optax {optax.__version__}")
    print(f"AdafacMLPLOpt: hidden {args.hidden_size} x {args.hidden_layers} layers, "
          f"{n_theta:,} meta-parameters")
    print(f"{'size':>6} {'params':>10} | {'full adamw':>11} {'full adafac':>11} {'ratio':>7} | "
          f"{'upd adamw':>10} {'upd adafac':>10} {'ratio':>7} | {'state B/param':>13}")
    for size in args.sizes:
        params = mlp_params(jax.random.key(1), SIZES[size])
        x = jax.random.normal(jax.random.key(2), (BATCH, 784))
        y = jax.random.randint(jax.random.key(3), (BATCH,), 0, 10)
        fa, ua = bench(adamw, params, x, y, args.repeats)
        fl, ul = bench_lo(opt, params, x, y, args.repeats)
        n = sum(v.size for v in jax.tree.leaves(params))
        state = opt.init(params, num_steps=1)
        state_bytes = sum(v.nbytes for v in jax.tree.leaves(state)) - 4 * n  # less the params
        print(f"{size:>6} {n:>10,} | {fa * 1e3:>9.2f}ms {fl * 1e3:>9.2f}ms {fl / fa:>6.2f}x | "
              f"{ua * 1e3:>8.2f}ms {ul * 1e3:>8.2f}ms {ul / ua:>6.1f}x | {state_bytes / n:>13.1f}")


if __name__ == "__main__":
    main()
