"""`lopt`: the command-line entry point. An argparse app with one sub-command per job.

Other modules add theirs by appending to SUBCOMMANDS a function `(subparsers) -> None` that
registers a parser and sets `func=handler(args) -> int` on it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from meta_train import compile_cache, population_devices
from meta_train.evaluation.cli import add_evaluate


def _add_meta_train(subparsers) -> None:
    p = subparsers.add_parser(
        "meta-train",
        help="meta-train a learned optimizer from a YAML recipe",
        description="Meta-train a learned optimizer. Example: lopt meta-train configs/smoke.yaml "
        "--workdir /tmp/run unroll.truncation_length=5 (add --ray local for Ray actors)",
    )
    p.add_argument("config", help="YAML recipe, e.g. configs/quickstart.yaml")
    p.add_argument("--workdir", default=None, help="output directory (default: runs/<recipe name>)")
    p.add_argument("--resume", action="store_true", help="continue from the workdir's latest checkpoint")
    p.add_argument(
        "--allow-change", action="append", default=[], metavar="KEY[,KEY]",
        help="with --resume: accept these changed recipe keys (e.g. outer.learning_rate; "
        "repeatable). Other changes that alter the trajectory (seed, learning rate, sigma, ...) "
        "are refused; run.num_steps, logging, checkpointing and eval settings may always change.",
    )
    p.add_argument(
        "--ray", default=None, metavar="auto|local|ADDRESS",
        help="run the workers as Ray actors: 'auto' joins this host's cluster (ray start/ray up/"
        "ray job submit), 'local' starts one on this machine, or a cluster address "
        "(10.0.0.1:6379, ray://head:10001). Default: no Ray, in-process workers. "
        "Workers, mode and resources come from the recipe's `distributed` group.",
    )
    p.add_argument(
        "--init-theta", default=None, metavar="FILE",
        help="warm start from an exported theta (lopt export, theta.safetensors, a pretrained "
        "name): the same as the override optimizer.init_theta=FILE",
    )
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. run.num_steps=10")
    p.set_defaults(func=_run_meta_train)


def _run_meta_train(args) -> int:
    import os

    from meta_train.config import load_config
    from meta_train.train import meta_train

    overrides = list(args.overrides)
    if args.init_theta is not None:
        overrides.append(f"optimizer.init_theta={args.init_theta}")
    config = load_config(args.config, overrides)
    # Before anything starts JAX: the host devices each worker's pairs are split over.
    population_devices.request_cpu_devices(config.run.population_devices)
    workdir = args.workdir or os.path.join("runs", os.path.splitext(os.path.basename(args.config))[0])
    allow = [k.strip() for arg in args.allow_change for k in arg.split(",") if k.strip()]
    try:
        compile_cache.enable(config.run.compilation_cache)
        _check_data(config)
        result = meta_train(config, workdir, resume=args.resume, ray_address=args.ray, allow_change=allow)
    except KeyboardInterrupt:
        print(_interrupted(args, workdir), file=sys.stderr)
        return 130
    return _print_summary(result, config)


def _check_data(config) -> None:
    """The recipe's datasets, prepared and readable, before anything compiles (one-line errors:
    an unwritable data dir, a damaged cache)."""
    from meta_train.families import leaf_families, make_family
    from tasks.data.loading import check_dataset

    family = make_family(config.tasks.family, config.tasks.kwargs)
    for member in leaf_families(family):
        for name in dict.fromkeys(getattr(member, "datasets", ())):
            check_dataset(name, getattr(member, "data_dir", None))


def _interrupted(args, workdir: str) -> str:
    """One line for Ctrl-C: the run saved its exit checkpoint; say where and how to resume."""
    import os

    root = os.path.join(workdir, "checkpoints")
    steps = sorted(int(d) for d in (os.listdir(root) if os.path.isdir(root) else []) if d.isdigit())
    if not steps:
        return (f"lopt: interrupted before the first checkpoint; nothing saved in {workdir!r}, "
                "so rerun the same command without --resume.")
    return (f"lopt: interrupted at step {steps[-1]}; checkpoint saved at "
            f"{os.path.join(root, str(steps[-1]))}; resume with --resume (the same command and "
            f"--workdir {workdir})")


def _print_summary(result, config) -> int:
    """Prints the run's summary; 1 when nothing was learned: every member's meta-gradient was
    dropped (diverged) or every outer step was skipped as non-finite."""
    from meta_train.config import num_workers

    from rich.console import Console

    console = Console()
    m = result.last_metrics
    console.print(f"[bold]done[/bold]: {result.step} outer steps in {result.workdir}")
    skipped = m.get("total/outer_nonfinite_grad", 0.0) if m else 0.0
    if m:
        console.print(f"  final meta_loss {m.get('meta_loss', float('nan')):.4f}; "
                      f"members diverged {m.get('total/unroll_diverged', 0):.0f}; "
                      f"meta-gradients dropped {m.get('total/grad_dropped', 0):.0f}; "
                      f"outer steps skipped (non-finite) {skipped:.0f}; "
                      f"clipped {m.get('total/outer_clipped', 0):.0f}")
    if result.export_path:
        console.print(f"  exported learned optimizer: {result.export_path}")
    if result.eval_summary:
        for name, s in result.eval_summary.items():
            console.print(f"  eval {name}: mean train loss {s['mean_train_loss']:.4g}, "
                          f"final test loss {s['final_test_loss']:.4g}")
    if not m or result.step == 0:
        return 0
    pairs = result.step * num_workers(config) * config.estimator.num_pairs
    if m.get("total/grad_dropped", 0.0) >= pairs or skipped >= result.step:
        console.print("[bold red]error[/bold red]: nothing was learned: every member diverged (its "
                      "meta-gradient dropped) or every outer step was non-finite. Lower "
                      "outer.learning_rate or the task's difficulty, or check the recipe.")
        return 1
    return 0


def _add_export(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a meta-training checkpoint's learned optimizer as a .safetensors file",
        description="Export theta from a checkpoint of a (running, stopped or finished) "
        "meta-training run, for `lopt evaluate` or `learned_opt.load`. Example: lopt export "
        "runs/quickstart --step 500 --out /tmp/q500.safetensors",
    )
    p.add_argument("workdir", help="the run's --workdir")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--out", default=None,
                   help="output file (default: <workdir>/theta_step<step>.safetensors)")
    p.add_argument("--standing", default=None, metavar="TEXT",
                   help="the measured result to label a shipped optimizer with (its provenance's "
                   "'standing'), e.g. 'in_distribution: 2/2 wins vs tuned AdamW (docs/pretrained.md)'")
    p.set_defaults(func=_run_export)


def _run_export(args) -> int:
    from meta_train.export import export_checkpoint

    try:
        path = export_checkpoint(args.workdir, step=args.step, out=args.out, standing=args.standing)
    except ValueError as err:
        print(f"lopt: error: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


SUBCOMMANDS: list[Callable] = [_add_meta_train, add_evaluate, _add_export]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lopt", description="learned-opt command line")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from meta_train.config import ClusterError, ConfigError
    from meta_train.train import WorkdirError
    from tasks.data.paths import CorruptDatasetError, DataDirError, DatasetNotPreparedError

    parser = build_parser()
    # Overrides may come after flags (`--resume a.b=1`), which argparse alone does not allow.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any("=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    try:
        return args.func(args)
    except (ConfigError, WorkdirError, ClusterError, DataDirError, CorruptDatasetError,
            DatasetNotPreparedError) as err:
        print(f"lopt: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
