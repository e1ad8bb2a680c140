"""Adam with and without bias correction: final training loss at a few step sizes.

    .venv/bin/python benchmarks/adam_bias_correction.py [--tasks lm mlp] [--lrs 3e-3 1e-2] [--seeds 2]

Why: the learned optimizers' Adam start keeps EMAs that start at zero and no bias correction
(`VeLOLOpt.bias_correction` False), whose steps are (1 - 0.9^t) / sqrt(1 - 0.999^t) times
Adam's: up to 6.5x over the first hundreds of steps. This measures what that does to a task at
each step size. The tasks are meta-training-distribution tasks, not evaluation ones: a
transformer LM (width 64, depth 2) on the generated language `synth_chars` and an MLP (64, 2) on
MNIST-1D, 1000 steps; the loss is the mean over the last 100 steps, one line per setting.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax


def adam_without_bias_correction(lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
    """Adam whose EMAs start at zero and are used as they are."""

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return zeros, zeros

    def update(grads, state, params=None):
        del params
        m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state[0], grads)
        v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state[1], grads)
        return jax.tree.map(lambda m, v: -lr * m / (jnp.sqrt(v) + eps), m, v), (m, v)

    return optax.GradientTransformation(init, update)


def make_task(name: str, steps: int):
    from tasks.models.mlp import MLPConfig
    from tasks.models.transformer import TransformerConfig
    from tasks.specs import ClassificationSpec, LanguageModelSpec

    if name == "lm":
        return LanguageModelSpec("synth_chars", TransformerConfig(64, 2, num_heads=4, max_len=64),
                                 batch_size=32, horizon=steps).build()
    if name == "mlp":
        return ClassificationSpec("mnist1d", MLPConfig(64, 2, 10), batch_size=64, horizon=steps).build()
    raise ValueError(f"--tasks {name!r}: expected 'lm' or 'mlp'.")


def final_loss(task, tx, steps: int, seed: int) -> float:
    @jax.jit
    def run(key):
        params = task.init(key)

        def step(carry, k):
            p, s = carry
            loss, g = jax.value_and_grad(task.loss)(p, task.sample_batch(k))
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), loss

        _, losses = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(key, steps))
        return losses[-max(steps // 10, 1):].mean()

    return float(run(jax.random.key(seed)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["lm", "mlp"])
    parser.add_argument("--lrs", nargs="+", type=float, default=[3e-3, 1e-2, 3e-2])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    for name in args.tasks:
        task = make_task(name, args.steps)
        for lr in args.lrs:
            for label, tx in (("corrected", optax.adam(lr)), ("uncorrected", adam_without_bias_correction(lr))):
                losses = [final_loss(task, tx, args.steps, s) for s in range(args.seeds)]
                print(f"{name:4s} lr {lr:.0e} {label:12s} " + " ".join(f"{x:.4f}" for x in losses), flush=True)


if __name__ == "__main__":
    main()
