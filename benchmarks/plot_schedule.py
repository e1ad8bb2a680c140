"""Plot the learned step-size schedule of one or more exported thetas (MLPLOpt with fraction_offsets).

    .venv/bin/python benchmarks/plot_schedule.py A.safetensors [B.safetensors ...] --out schedule.png

The curve is the multiplier exp(log_step + schedule(t / T)) of the per-parameter rule's step
(step_mult, mu-P scaling and the rule's own output aside) against the fraction of training t / T,
for a run of T = 1000 steps (the learned decay's last steps depend on T, nothing else does
without loss features). Prints the values at t / T = 0, 0.1, ..., 0.9 and at the last step.
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp
import numpy as np

import learned_opt


def multipliers(path: str, fractions: np.ndarray) -> np.ndarray:
    arch, theta, _ = learned_opt.load_theta(path)
    if not arch.fraction_offsets or arch.loss_features:
        raise SystemExit(f"{path}: needs an MLPLOpt with fraction_offsets and no loss features.")
    num_steps = 1000
    counts = np.round(fractions * (num_steps - 1)).astype(np.int32)
    # The optimizer's own schedule (the one its update adds to log_step), not a re-derivation.
    log_mult = [arch._schedule(theta, jnp.int32(t), num_steps, None) for t in counts]
    return np.exp(np.asarray(log_mult) + float(theta["log_step"]))


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
