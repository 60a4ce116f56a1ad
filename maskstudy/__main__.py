"""Command line: ``python -m maskstudy run ...`` (the study pipeline), ``python -m maskstudy verify ...`` (a model on
a pair file), ``python -m maskstudy compare a.jpg b.jpg`` (two photos), ``python -m maskstudy readme --run
reports/cpu`` (the README's results section from a finished run)."""

from __future__ import annotations

import argparse
import sys


def _run(args: argparse.Namespace) -> int:
    from .report.pipeline import PipelineError, RunFolderLockedError, parse_parameter, run_pipeline

    try:
        overrides = dict(parse_parameter(p) for p in args.param)
        run_pipeline(args.profile, overrides, only=args.only, start=args.start, run_dir=args.run_dir,
                     kernel_name=args.kernel, progress=not args.no_progress)
    except PipelineError as error:
        print(f"maskstudy: {error}", file=sys.stderr)
        return 1
    except (ValueError, KeyError, FileNotFoundError, RunFolderLockedError) as error:
        print(f"maskstudy: {error}", file=sys.stderr)
        return 2
    return 0


def _readme(args: argparse.Namespace) -> int:
    from .datasets.build import project_root
    from .report.readme import update_readme

    try:
        path = update_readme(project_root() / "README.md", args.run)
    except (OSError, ValueError, KeyError) as error:
        print(f"maskstudy: {error}", file=sys.stderr)
        return 2
    print(f"updated the results section of {path} from {args.run}")
    return 0


def default_checkpoint():
    """The model ``compare`` uses when none is named: the mask-aware recogniser of the last cpu run."""
    from .datasets.build import project_root
    from .study.mask_aware import model_file

    return model_file(project_root() / "reports" / "cpu" / "outputs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m maskstudy", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the numbered notebooks with papermill and export HTML reports")
    run.add_argument("--profile", choices=None, default=None,
                     help="smoke | cpu | gpu (default: gpu when CUDA is present, else cpu)")
    run.add_argument("--only", help="comma-separated notebook numbers, e.g. 01,02")
    run.add_argument("--from", dest="start", help="start at this notebook number and run the rest, e.g. 03")
    run.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                     help="override a profile parameter (YAML value), repeatable")
    run.add_argument("--run-dir", help="output folder (default: reports/<profile>)")
    run.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: python3)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.set_defaults(handler=_run)
    from .evaluate import add_verify_arguments

    add_verify_arguments(commands.add_parser(
        "verify", help="10-fold verification accuracy of a checkpoint on a pair file (aligned crops or raw photos)"))
    from .evaluate.compare import add_compare_arguments

    add_compare_arguments(commands.add_parser(
        "compare", help="are two photos the same person? (default model: the mask-aware recogniser of the last cpu "
                        "run)"), default_checkpoint)
    readme = commands.add_parser("readme", help="rewrite the README's results section from a finished run")
    readme.add_argument("--run", default="reports/cpu", help="run folder (default: reports/cpu)")
    readme.set_defaults(handler=_readme)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
