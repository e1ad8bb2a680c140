"""Win rate against the width and horizon multipliers over several `lopt evaluate` results.

    .venv/bin/python benchmarks/plot_win_rate.py OUT_DIR RESULTS_JSON [RESULTS_JSON ...]

`lopt evaluate` plots the win rate per suite; a multiplier often has one task per suite, so
the picture of how an optimizer transfers needs the suites together. The results must share
the reference (tuned AdamW) and the optimizers; tasks are merged by name.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from meta_train.evaluation import report


def merge(paths: list[str]) -> dict:
    merged = None
    for path in paths:
        results = json.loads(Path(path).read_text())
        if merged is None:
            merged = {**results, "tasks": dict(results["tasks"])}
            continue
        if results["reference"] != merged["reference"] or results["optimizers"] != merged["optimizers"]:
            raise ValueError(f"{path}: reference {results['reference']!r} and optimizers "
                             f"{results['optimizers']} differ from the first file's "
                             f"({merged['reference']!r}, {merged['optimizers']}); merge like with like.")
        merged["tasks"].update(results["tasks"])
    return merged


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    results = merge(argv[1:])
    for axis in ("width", "horizon"):
        report.plot_win_rate(results, axis, out / f"win_rate_vs_{axis}.png")
        print(axis, report.win_rate_by_multiplier(results, axis))


if __name__ == "__main__":
    main(sys.argv[1:])
