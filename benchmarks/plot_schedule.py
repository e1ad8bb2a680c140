"""Plot the learned step-size schedule of one or more exported thetas (MLPLOpt with fraction_offsets).

    .venv/bin/python benchmarks/plot_schedule.py A.safetensors [B.safetensors ...] --out schedule.png

The curve is the multiplier exp(log_step + schedule(t / T)) of the per-parameter rule's step
(step_mult, mu-P scaling and the rule's own output aside) against the fraction of training t / T;
without loss features it does not depend on T. Prints the values at t / T = 0, 0.1, ..., 1.
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp
import numpy as np

import learned_opt
from learned_opt import features as feat_lib


def multipliers(path: str, fractions: np.ndarray) -> np.ndarray:
    arch, theta, _ = learned_opt.load_theta(path)
    if not arch.fraction_offsets or arch.loss_features:
        raise SystemExit(f"{path}: needs an MLPLOpt with fraction_offsets and no loss features.")
    sched = theta["schedule"]
    out = []
    for f in fractions:
        feats = feat_lib.fraction_features(jnp.float32(f * 1e6), 1e6, arch.fraction_offsets)
        h = jnp.tanh(feats @ sched["w"] + sched["b"])
        out.append(float(jnp.exp(h @ sched["w_out"] + sched["b_out"] + theta["log_step"])))
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("thetas", nargs="+")
    parser.add_argument("--out", default=None, help="PNG to write (default: print only)")
    args = parser.parse_args()
    fractions = np.linspace(0.0, 1.0, 101)
    curves = {p: multipliers(p, fractions) for p in args.thetas}
    for p, c in curves.items():
        print(p, " ".join(f"{v:.2f}" for v in c[::10]))
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        for p, c in curves.items():
            ax.plot(fractions, c, label=p.rsplit("/", 1)[-1])
        ax.set_xlabel("fraction of training t / T")
        ax.set_ylabel("step multiplier")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.out, dpi=120)


if __name__ == "__main__":
    main()
