"""``nas-attn``: the command line. Each subcommand is a thin layer over a library call.

Errors a user can fix (bad YAML, bad flags, missing data) print one message and exit 2,
without a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from .metrics import X_METRICS

REFERENCE_FEATURE_MAP = (256, 14, 14)
# Exit codes (README, "Exit codes"): 0 done, 2 bad input; a search in which no trial trained to
# the end exits 3; one that stopped before its budget (Ctrl+C) exits 130, like a shell.
EXIT_BAD_INPUT = 2
EXIT_NO_TRIAL_FINISHED = 3
EXIT_INTERRUPTED = 130
REF_HELP = ("hypervolume reference point, one value per objective in the space's order "
            "(default: the space's declared ref values)")


def _parse_input(text: str):
    try:
        parts = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"--input must look like 3x224x224 (C x H x W), got {text!r}")
    return parts


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _ref_argument(text: str) -> List[float]:
    from .plot import PlotError, parse_ref
    try:
        return parse_ref(text)
    except PlotError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


# --------------------------------------------------------------------------------------------
# commands

def cmd_search(args) -> int:
    space = args.space
    if args.resume is None:
        # The space's first pass here: it needs neither torch nor Ray, so a typo in it is
        # reported in well under a second. run() does the second while Ray starts.
        from .space import read
        space = read(args.space)
    from .search import run
    result = run(space, trials=args.trials, concurrent=args.concurrent, epochs=args.epochs, sampler=args.sampler,
        seed=args.seed, cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        address=args.address, out=args.out, resume=args.resume, data_root=args.data_root,
        early_stopping=args.early_stopping, confirm=args.confirm, verbose=args.verbose,
        allow_unauthenticated_cluster=args.allow_unauthenticated_cluster, plugins=args.plugin)
    if result.interrupted:
        return EXIT_INTERRUPTED
    return 0 if result.finished else EXIT_NO_TRIAL_FINISHED


def cmd_validate(args) -> int:
    from .space import load
    space = load(args.space)  # before describe, which imports torch: see cmd_search
    from .describe import describe_space
    print(describe_space(space, detail=False))
    return 0


def cmd_space_show(args) -> int:
    from .space import load
    space = load(args.space)
    from .describe import describe_space
    print(describe_space(space, detail=True))
    return 0


def cmd_cost(args) -> int:
    from .describe import model_cost_report
    report = model_cost_report(args.model, args.attn, args.input, latency=args.latency,
                               latency_batch_size=args.batch_size)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        from .describe import format_cost_report
        print(format_cost_report(report))
    return 0


def cmd_modules(args) -> int:
    from .describe import format_module_table, module_table
    rows = module_table(REFERENCE_FEATURE_MAP, timing=not args.no_time, repeats=args.repeats)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(format_module_table(rows, REFERENCE_FEATURE_MAP, repeats=args.repeats))
    return 0


def cmd_export(args) -> int:
    from .export import export
    formats = ("timm", "onnx") if args.format == "onnx" else ("timm",)
    written = export(args.run_dir, args.out, pareto=args.pareto, trial=args.trial, best=args.best,
                     max_macs=args.max_macs, weights=not args.no_weights, force=args.force, formats=formats)
    for folder in written:
        print(f"wrote {folder}" + (f" and {folder}.onnx" if "onnx" in formats else ""))
    print(f"load with: import nas_attn, timm; timm.create_model('local-dir:{written[0]}', pretrained=True)"
          if written else "nothing written")
    return 0


def cmd_plot(args) -> int:
    from pathlib import Path
    from .plot import PlotError, plot_history, plot_runs
    out = args.out
    if out is None:
        if len(args.run_dirs) > 1:
            raise PlotError("--out is required with several results folders (one figure holds them all)")
        out = Path(args.run_dirs[0]) / ("hypervolume.png" if args.history else "pareto.png")
    if args.history:
        if args.x is not None or args.logx:
            raise PlotError("--x and --logx apply to the accuracy plot, not to --history")
        written = plot_history(args.run_dirs, out, ref=args.ref)
    else:
        written = plot_runs(args.run_dirs, out, x=args.x, logx=args.logx, ref=args.ref)
    print(f"wrote {written}")
    return 0


def cmd_report(args) -> int:
    from .report import HISTORY_FIGURE, PARETO_FIGURE, write_report
    path = write_report(args.run_dir, ref=args.ref)
    print(f"wrote {path} (with {PARETO_FIGURE} and {HISTORY_FIGURE})")
    return 0


# --------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nas-attn",
        description="Multi-objective search over attention modules in timm CNNs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Every subcommand takes --plugin: the user's modules must be registered before a space,
    # a model or a results folder that names them is read.
    plugin = argparse.ArgumentParser(add_help=False)
    plugin.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import this Python module first (it registers attention modules with "
                             "nas_attn.modules.register); repeatable")

    p = sub.add_parser("search", help="run a search (default: cluttered_resnet on this machine)", parents=[plugin])
    p.add_argument("--space", default="cluttered_resnet", help="shipped space name or YAML path")
    p.add_argument("--trials", type=_positive_int, help="trial budget (overrides search.trials)")
    p.add_argument("--concurrent", type=_positive_int, help="trials at once (search.concurrent)")
    p.add_argument("--epochs", type=_positive_int, help="epochs per trial (train.epochs)")
    p.add_argument("--sampler", choices=("tpe", "nsga2", "random"), help="Optuna sampler (search.sampler)")
    p.add_argument("--seed", type=int, help="seed of sampler, split and training (search.seed)")
    p.add_argument("--cpus-per-trial", type=_non_negative_float, help="CPUs Ray gives each trial")
    p.add_argument("--gpus-per-trial", type=_non_negative_float, help="GPUs per trial, fractions allowed")
    p.add_argument("--address", help="join a Ray cluster: auto or HOST:PORT (default: start Ray locally); "
                                     "needs the cluster's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)")
    p.add_argument("--allow-unauthenticated-cluster", action="store_true",
                   help="with --address: join a cluster that runs without token authentication (anyone who can "
                        "reach such a cluster can run code on it)")
    p.add_argument("--out", help="results folder (default runs/<space>-<timestamp>)")
    p.add_argument("--resume", metavar="DIR", help="continue an interrupted search in DIR")
    p.add_argument("--data-root", help="dataset folder (overrides data.root)")
    p.add_argument("--early-stopping", dest="early_stopping", action="store_true", default=None,
                   help="stop hopeless trials early (multi-objective ASHA)")
    p.add_argument("--no-early-stopping", dest="early_stopping", action="store_false")
    p.add_argument("--confirm", type=int, metavar="K",
                   help="retrain the Pareto set with K more seeds at the end; the final Pareto set, "
                        "export and plots use the mean (search.confirm)")
    p.add_argument("-v", "--verbose", action="store_true", help="show Ray's and the workers' logs")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("validate", help="check a search space and print its summary", parents=[plugin])
    p.add_argument("space", help="shipped space name or YAML path")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("space", help="inspect a search space")
    space_sub = p.add_subparsers(dest="space_command", required=True, metavar="SUBCOMMAND")
    q = space_sub.add_parser("show", help="the model's blocks and the choices each may take", parents=[plugin])
    q.add_argument("space", help="shipped space name or YAML path")
    q.set_defaults(func=cmd_space_show)

    p = sub.add_parser("cost", help="params, MACs and element-wise ops of a timm model", parents=[plugin])
    p.add_argument("--model", required=True, help="timm model name, e.g. resnet18")
    p.add_argument("--attn", help="put this attention module in every block and show its overhead")
    p.add_argument("--input", type=_parse_input, default=(3, 224, 224), help="C x H x W, default 3x224x224")
    p.add_argument("--latency", action="store_true", help="also measure forward latency (ms) on this CPU")
    p.add_argument("--batch-size", type=_positive_int, default=1, help="batch size for --latency")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_cost)

    p = sub.add_parser("modules", help="every attention module with its cost on a 256x14x14 map", parents=[plugin])
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--no-time", action="store_true",
                   help="skip the measured forward+backward time overhead (ms, %% of a ResNet block)")
    p.add_argument("--repeats", type=_positive_int, default=5,
                   help="timed runs per module for the time overhead (median; default 5)")
    p.set_defaults(func=cmd_modules)

    p = sub.add_parser("export", help="write chosen trials as timm model folders (config.json + weights)", parents=[plugin])
    p.add_argument("run_dir", metavar="RUN_DIR", help="results folder of nas-attn search")
    p.add_argument("--out", required=True, help="folder to write one sub-folder per trial into")
    choice = p.add_mutually_exclusive_group()
    choice.add_argument("--pareto", action="store_true", help="every trial of the Pareto set")
    choice.add_argument("--trial", type=int, metavar="N", help="trial number N")
    choice.add_argument("--best", metavar="METRIC", help="the best finished trial by METRIC (e.g. accuracy)")
    choice.add_argument("--max-macs", type=float, metavar="X",
                        help="the most accurate finished trial with at most X MACs per image")
    p.add_argument("--no-weights", action="store_true", help="configs only, no trained weights")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    p.add_argument("--format", choices=("timm", "onnx"), default="timm",
                   help="onnx: also write trial-NNNN.onnx (batch 1, the search's input size) beside "
                        "each timm folder; needs pip install 'nas_attn[onnx]'")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "plot", help="accuracy vs cost with the Pareto front (PNG, SVG or interactive HTML)", parents=[plugin],
        description="Plot every finished trial of one or more results folders: cost on x, validation "
                    "accuracy on y, the Pareto front, the baseline and the hypervolume with its "
                    "reference point. --history plots hypervolume against trial number instead.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="results folder(s) of nas-attn search")
    p.add_argument("--out", help="output file: .png, .svg or .html (--history: .png or .svg); default "
                                 "RUN_DIR/pareto.png or RUN_DIR/hypervolume.png for one run")
    p.add_argument("--x", choices=X_METRICS, default=None,
                   help="cost on the x axis (default: the space's cost objective, else effective_macs)")
    p.add_argument("--logx", action="store_true", help="logarithmic x axis")
    p.add_argument("--ref", type=_ref_argument, metavar="ACC,COST", help=REF_HELP)
    p.add_argument("--history", action="store_true", help="plot hypervolume against trial number")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser(
        "report", help="write REPORT.md (Pareto table, module counts, figures) into a results folder",
        parents=[plugin],
        description="Write REPORT.md, pareto.png and hypervolume.png into a results folder of nas-attn search.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="results folder of nas-attn search")
    p.add_argument("--ref", type=_ref_argument, metavar="ACC,COST", help=REF_HELP)
    p.set_defaults(func=cmd_report)
    return parser


# The exception classes a user can fix, by module. Only modules a command has already imported
# can have raised one, so main() never imports a module (torch, Ray) just to name its error.
USER_ERRORS = {"space": "SpaceError", "arch": "ArchError", "data": "DataError", "export": "ExportError",
               "plot": "PlotError", "results": "ResultsError", "search": "SearchError", "search._base": "SearchError",
               "plugins": "PluginError"}


def _user_errors() -> tuple:
    found = []
    for module, name in USER_ERRORS.items():
        loaded = sys.modules.get(f"{__package__}.{module}")
        if loaded is not None and isinstance(getattr(loaded, name, None), type):
            found.append(getattr(loaded, name))
    return tuple(found)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from .plugins import import_plugins
        import_plugins(getattr(args, "plugin", []))
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `nas-attn cost ... | head` closed our stdout: not an error worth a traceback.
        sys.stderr.close()
        return 0
    except Exception as exc:
        if not isinstance(exc, _user_errors()):
            raise
        print(f"nas-attn {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def console_main() -> int:
    """``nas-attn`` as a program: :func:`main`, then the objects it made are left to the exit.

    The process ends right after. Python's last garbage collection at exit walks every object
    still alive to free memory the OS takes back anyway: about 1 s in a process that imported
    timm (measured idle on a 2-core machine: 1.0-1.2 s from the end of the program to the
    process's end, 0.2 s after ``gc.freeze()``). ``gc.freeze()`` moves those objects to the
    permanent generation, which collections ignore; what holds data is closed or flushed
    before (results are written atomically and closed, Ray is shut down, logging flushes at
    exit). Not in :func:`main`, which tests and notebooks call in a process that goes on.
    """
    code = main()
    import gc
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(console_main())
