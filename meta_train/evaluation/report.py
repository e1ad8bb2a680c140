"""Writes an evaluation (the dict from `evaluate.evaluate_suite`) to a directory.

    results.json                 every number (non-finite values are null)
    report.md                    per-suite table: win/tie/loss vs tuned AdamW per task, summary rows
    curves/<task>.png            train and held-out loss curves per task, every optimizer
    win_rate_vs_width.png        win rate against the width multiplier (tasks that have one)
    win_rate_vs_horizon.png      win rate against the horizon multiplier

Every number in report.md is formatted from results.json's values; nothing is recomputed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from meta_train.evaluation import metrics


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(x: float | None, spec: str = ".4g") -> str:
    return "n/a" if x is None else format(x, spec)


def _speedup(x: float | None) -> str:
    return "never" if x is None else f"{x:.2f}x"


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _definitions(results: dict[str, Any]) -> str:
    c = results["config"]
    return "\n".join([
        "## Definitions",
        "",
        f"- **Final loss**: mean minibatch train loss over the last {c['final_fraction']:g} of the "
        "steps of a run, then the mean over seeds (± std over seeds). Held-out: the task's "
        "held-out loss after the last step.",
        f"- **Tuning**: each baseline's LR is chosen per task on final train loss among LR points "
        "where no seed diverged; learned optimizers are not tuned. Every optimizer sees the same "
        f"{c['num_seeds']} seeds (initialization and data order). Where the best LR is at an end "
        f"of the grid, up to {c.get('extend_lr_grid', 0)} points are added past that end, one grid "
        "spacing at a time (\"past the grid\"); \"grid edge\" marks a choice still at an end.",
        f"- **Diverged**: a non-finite train loss, or a final train loss above "
        f"{c['divergence_factor']:g}x the loss at step 0, in any seed. Diverged counts as a loss.",
        f"- **Win / tie / loss** against tuned AdamW on final train loss, with tie band "
        f"max({c['tie_rel_tol']:g} x |AdamW final|, sqrt((std² + AdamW std²) / 2)): win below "
        "AdamW - band, loss above AdamW + band, else tie.",
        "- **Speedup**: steps tuned AdamW needs to reach its own final loss, divided by the steps "
        "the optimizer needs to reach that loss (both on the seed-mean train curve smoothed over "
        "the same final window). > 1 is faster; `never` means the loss was not reached (counted "
        "as 0 in the median).",
        "- **Time**: compile seconds, and wall-clock per training step of one run "
        "(execution time / (steps x LR points x seeds), the runs being vmapped together).",
    ])


def _suite_table(results: dict[str, Any]) -> str:
    ref = results["reference"]
    others = [o for o in results["optimizers"] if o != ref]
    head = ["task", f"{ref} (tuned) final"] + others
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, task in results["tasks"].items():
        r = task["optimizers"][ref]
        cells = [name, f"{_fmt(r['final_train_loss'])} ± {_fmt(r['final_train_loss_std'], '.2g')}"
                 + (" DIVERGED" if r["diverged"] else "")]
        for o in others:
            x = task["optimizers"][o]
            flag = " DIVERGED" if x["diverged"] else ""
            cells.append(f"**{x['outcome']}**{flag} {_fmt(x['final_train_loss'])}, "
                         f"{_speedup(x['speedup'])}")
        lines.append("| " + " | ".join(cells) + " |")
    s = results["summary"]
    rows = [("win rate", lambda o: _fmt(s[o]["win_rate"], ".0%") if s[o]["win_rate"] is not None else "-"),
            ("wins / ties / losses", lambda o: f"{s[o]['wins']} / {s[o]['ties']} / {s[o]['losses']}"),
            ("median speedup", lambda o: _speedup(s[o]["median_speedup"])),
            ("divergences", lambda o: str(s[o]["divergences"]))]
    for label, cell in rows:
        lines.append("| " + " | ".join([f"**{label}**", cell(ref)] + [cell(o) for o in others]) + " |")
    return "\n".join(lines)


def _details_table(results: dict[str, Any]) -> str:
    head = ["task", "optimizer", "LR", "final train", "final held-out", "steps to AdamW",
            "diverged seeds", "compile s", "step ms", "total s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, task in results["tasks"].items():
        for o, x in task["optimizers"].items():
            lr = "-" if x["chosen_lr"] is None else f"{x['chosen_lr']:.3g}"
            added = x.get("lr_grid_added") or []
            if added:
                lr += f" (+{len(added)} past the grid)"
            if x["chosen_lr_at_grid_edge"]:
                lr += " (grid edge)"
            t = x["time"]
            lines.append("| " + " | ".join([
                name, o, lr, f"{_fmt(x['final_train_loss'])} ± {_fmt(x['final_train_loss_std'], '.2g')}",
                _fmt(x["final_test_loss"]), str(x["steps_to_reference"] or "never"),
                str(x["diverged_seeds"]), f"{t['compile_s']:.2f}", f"{1e3 * t['step_s']:.4f}",
                f"{t['total_s']:.2f}"]) + " |")
    return "\n".join(lines)


def render_markdown(results: dict[str, Any]) -> str:
    parts = [f"# Evaluation: suite `{results['suite']}` against tuned {results['reference']}", "",
             "Each cell: outcome against tuned AdamW, final train loss, speedup.", "",
             _suite_table(results), ""]
    if results["skipped_tasks"]:
        parts += [f"Skipped (data not prepared): {', '.join(results['skipped_tasks'])}.", ""]
    parts += ["## Per task and optimizer", "", _details_table(results), "", _definitions(results),
              "", "Plots: `curves/<task>.png`, `win_rate_vs_width.png`, `win_rate_vs_horizon.png`.",
              ""]
    return "\n".join(parts)


def win_rate_by_multiplier(results: dict[str, Any], axis: str) -> dict[str, dict[float, float]]:
    """{optimizer: {multiplier: win rate over tasks with that multiplier}} (reference excluded)."""
    out = {}
    for o in results["optimizers"]:
        if o == results["reference"]:
            continue
        groups: dict[float, list[bool]] = {}
        for task in results["tasks"].values():
            m = task["multipliers"][axis]
            if m is not None:
                groups.setdefault(m, []).append(task["optimizers"][o]["outcome"] == "win")
        out[o] = {m: float(np.mean(v)) for m, v in sorted(groups.items())}
    return out


def plot_curves(name: str, task: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    fig, (ax_train, ax_test) = plt.subplots(1, 2, figsize=(10, 4))
    window = metrics.final_window(task["steps"], 0.05)
    for o, x in task["optimizers"].items():
        curve = np.array([np.nan if v is None else v for v in x["train_curve"]], np.float64)
        label = o if x["chosen_lr"] is None else f"{o} (lr {x['chosen_lr']:.2g})"
        ax_train.plot(np.arange(1, len(curve) + 1), metrics.trailing_mean(curve, window), label=label)
        test = [np.nan if v is None else v for v in x["test_curve"]]
        ax_test.plot(x["test_steps"], test, marker=".", label=label)
    for ax, title in ((ax_train, f"train loss (mean of seeds, smoothed over {window})"),
                      (ax_test, "held-out loss (mean of seeds)")):
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=9)
        ax.set_yscale("log")
    ax_train.legend(fontsize=7)
    fig.suptitle(name, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_win_rate(results: dict[str, Any], axis: str, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    rates = win_rate_by_multiplier(results, axis)
    markers = "osD^v<>p*h"
    for i, (o, by_m) in enumerate(rates.items()):
        if by_m:  # distinct markers and a small vertical offset so equal lines stay visible
            ax.plot(list(by_m), [r + 0.01 * i for r in by_m.values()], marker=markers[i % 10],
                    alpha=0.8, label=o)
    if not any(rates.values()):
        ax.text(0.5, 0.5, f"no task has a {axis} multiplier", ha="center", transform=ax.transAxes)
    else:
        ax.set_xscale("log")
        ax.legend(fontsize=8)
    ax.axvline(1.0, color="gray", ls=":", lw=1)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel(f"{axis} multiplier (task / largest meta-training {axis})")
    ax.set_ylabel(f"win rate vs tuned {results['reference']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(results: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Writes every file; returns {kind: path}."""
    out = Path(out_dir)
    (out / "curves").mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "report.md",
             "width": out / "win_rate_vs_width.png", "horizon": out / "win_rate_vs_horizon.png"}
    paths["json"].write_text(json.dumps(results, indent=1, allow_nan=False), encoding="utf-8")
    paths["markdown"].write_text(render_markdown(results), encoding="utf-8")
    for name, task in results["tasks"].items():
        p = out / "curves" / f"{_safe_name(name)}.png"
        plot_curves(name, task, p)
        paths[f"curve:{name}"] = p
    plot_win_rate(results, "width", paths["width"])
    plot_win_rate(results, "horizon", paths["horizon"])
    return paths


def read_results(out_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(out_dir) / "results.json").read_text(encoding="utf-8"))
