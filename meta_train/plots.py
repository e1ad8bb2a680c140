"""PNG figures for a run: the meta-loss curve and the learned-vs-AdamW evaluation curves."""

from __future__ import annotations

from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_meta_loss(rows: list[dict[str, Any]], path: str, *, smooth: int = 10) -> None:
    plt = _pyplot()
    steps = np.array([r["step"] for r in rows])
    loss = np.array([float(r["meta_loss"]) for r in rows])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, loss, alpha=0.3, label="meta-loss")
    if len(loss) >= smooth:
        kernel = np.ones(smooth) / smooth
        ax.plot(steps[smooth - 1:], np.convolve(loss, kernel, mode="valid"), label=f"mean of {smooth}")
    ax.set_xlabel("outer step")
    ax.set_ylabel("normalized meta-loss")
    if np.all(loss[np.isfinite(loss)] > 0):  # a log meta-loss is negative: keep a linear axis
        ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_eval(result: dict[str, dict[str, Any]], path: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in result.items():
        ax.plot(r["curve"], label=f"{name} (final test {r['final_test_loss']:.3g})")
    ax.set_xlabel("inner step")
    ax.set_ylabel("train loss (mean over tasks)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
