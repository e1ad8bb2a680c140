"""`lopt evaluate`: optimizers on a suite against tuned AdamW; writes results.json, report.md, PNGs.

    lopt evaluate --optimizer sgd-momentum --optimizer path/to/lopt.safetensors \
        --suite in_distribution --out /tmp/eval --seeds 3

Tuned AdamW (the reference) is always evaluated, whether or not it is named. Bad input (an
unknown optimizer or suite, an incompatible checkpoint, a malformed suite file) prints one
`lopt: error: ...` line naming the valid choices and exits with status 2.
"""

from __future__ import annotations

import sys

from meta_train.evaluation.baselines import BASELINES


def add_evaluate(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate optimizers on a task suite against tuned AdamW",
        description="Evaluate optimizers (baselines tuned per task, pretrained or checkpointed "
        "learned optimizers) on a suite against tuned AdamW. Example: lopt evaluate "
        "--optimizer sgd-momentum --suite in_distribution --out /tmp/eval",
    )
    p.add_argument("--optimizer", action="append", required=True, metavar="SPEC",
                   help=f"repeatable: a baseline {sorted(BASELINES)} (LR tuned), NAME@LR (fixed "
                   "LR), a pretrained name, or a .safetensors checkpoint path")
    p.add_argument("--suite", required=True,
                   help="built-in suite name (in_distribution, generalization) or a YAML task list "
                   "(format: meta_train/evaluation/suites.py)")
    p.add_argument("--out", required=True, help="output directory for results.json, report.md, PNGs")
    p.add_argument("--seeds", type=int, default=3, help="seeds per optimizer and LR (default 3)")
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="cap every task's horizon at this many steps (default: no cap)")
    p.add_argument("--lr-grid", action="append", default=[], metavar="NAME=LOW:HIGH:NUM",
                   help="repeatable: a baseline's log-spaced LR grid, e.g. adamw=1e-4:1e-1:7")
    p.add_argument("--extend-lr-grid", type=int, default=2, metavar="N",
                   help="where a baseline's best LR is at an end of its grid, add up to N points "
                   "past that end, one grid spacing at a time (default 2; 0: the grid as given)")
    p.add_argument("--data-dir", default=None, help="TFDS data dir (default: $LEARNED_OPT_DATA_DIR "
                   "or ~/.cache/learned_opt/tensorflow_datasets)")
    p.add_argument("--divergence-factor", type=float, default=2.0,
                   help="a run diverged if its final train loss exceeds this x its initial loss")
    p.add_argument("--tie-tolerance", type=float, default=0.01,
                   help="relative half-width of the tie band around AdamW's final loss")
    p.add_argument("--memory-budget-gb", type=float, default=2.0,
                   help="memory for one vmapped chunk of LR points x seeds (default 2)")
    p.add_argument("--reuse-baselines", default=None, metavar="RESULTS_JSON",
                   help="take tuned baselines' results from an earlier evaluation's results.json "
                   "where its seeds, steps and LR grid match (baselines are deterministic in "
                   "them); learned optimizers always run")
    p.set_defaults(func=run_evaluate)


def _progress_bar(console, total: int):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn)

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("LR points"), TimeElapsedColumn(), console=console)
    task_id = bar.add_task("evaluating", total=total)

    def advance(n: int, description: str) -> None:
        bar.update(task_id, advance=n, description=description)

    return bar, advance


def _print_summary(console, results, paths) -> None:
    from rich.table import Table

    table = Table(title=f"suite {results['suite']}: against tuned {results['reference']}")
    for col in ("optimizer", "win rate", "W/T/L", "median speedup", "divergences"):
        table.add_column(col)
    for label, s in results["summary"].items():
        rate = "-" if s["win_rate"] is None else f"{s['win_rate']:.0%}"
        table.add_row(label, rate, f"{s['wins']}/{s['ties']}/{s['losses']}",
                      f"{s['median_speedup']:.2f}x" if s["median_speedup"] is not None else "-",
                      str(s["divergences"]))
    console.print(table)
    console.print(f"report: {paths['markdown']}  results: {paths['json']}")


def _check_writable(out: str) -> None:
    """Fails before any compute when the report could not be written."""
    import os
    import tempfile

    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise ValueError(f"--out {out!r} is not a writable directory ({err.strerror}); choose another.") from None


def _check_data(suite, data_dir) -> None:
    """The datasets of the suite's runnable tasks, built if local and missing, and readable:
    an unwritable data dir or a damaged cache fails here in one line, before any compute."""
    from meta_train.evaluation.suites import is_available
    from tasks.data.loading import check_dataset

    names = [getattr(e.spec, "dataset", None) for e in suite.entries if is_available(e, data_dir)]
    for name in dict.fromkeys(n for n in names if n is not None):
        check_dataset(name, data_dir)


def _read_previous(path):
    if path is None:
        return None
    import json

    try:
        with open(path, encoding="utf-8") as f:
            previous = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--reuse-baselines {path!r}: cannot read an evaluation's results.json ({err}).") from None
    previous["_path"] = str(path)
    return previous


def run_evaluate(args) -> int:
    from rich.console import Console

    from meta_train.evaluation.evaluate import EvaluationConfig, evaluate_suite, with_reference
    from meta_train.evaluation.report import write_report
    from meta_train.evaluation.specs import OptimizerSpecError, parse_lr_grid, parse_optimizer
    from meta_train.evaluation.suites import SuiteError, resolve_suite
    from tasks.data.paths import CorruptDatasetError, DataDirError

    try:
        if args.seeds < 1 or (args.max_steps is not None and args.max_steps < 1):
            raise ValueError(f"--seeds and --max-steps must be >= 1; got {args.seeds}, "
                             f"{args.max_steps}.")
        if args.extend_lr_grid < 0:
            raise ValueError(f"--extend-lr-grid must be >= 0 (0: no extension); got {args.extend_lr_grid}.")
        grids = dict(parse_lr_grid(g) for g in args.lr_grid)
        specs = with_reference([parse_optimizer(s, grids) for s in args.optimizer], grids)
        suite = resolve_suite(args.suite)
        previous = _read_previous(args.reuse_baselines)
        _check_writable(args.out)
        _check_data(suite, args.data_dir)
    except (OptimizerSpecError, SuiteError, ValueError) as err:
        print(f"lopt: error: {err}", file=sys.stderr)
        return 2
    config = EvaluationConfig(num_seeds=args.seeds, base_seed=args.seed, max_steps=args.max_steps,
                              divergence_factor=args.divergence_factor,
                              tie_rel_tol=args.tie_tolerance,
                              memory_budget_bytes=int(args.memory_budget_gb * 2**30),
                              data_dir=args.data_dir, extend_lr_grid=args.extend_lr_grid)
    console = Console(stderr=True)
    total = len(suite.entries) * sum(len(s.learning_rates) for s in specs)
    bar, advance = _progress_bar(console, total)
    try:
        with bar:
            results = evaluate_suite(suite, specs, config, progress=advance, previous=previous)
    except (CorruptDatasetError, DataDirError) as err:  # found only mid-run (e.g. a bad last chunk)
        print(f"lopt: error: {err}", file=sys.stderr)
        return 2
    paths = write_report(results, args.out)
    _print_summary(console, results, paths)
    if results["skipped_tasks"]:
        print(f"lopt: error: {len(results['skipped_tasks'])} task(s) skipped, their data not prepared: "
              f"{', '.join(results['skipped_tasks'])} (see $LEARNED_OPT_DATA_DIR or --data-dir); the "
              "report covers the others.", file=sys.stderr)
        return 1
    return 0
