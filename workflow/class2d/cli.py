"""The ``class2d`` command: the version, the workflow's Snakefile, and running the workflow.

    $ class2d --version                       # class2d 0.1.0
    $ class2d snakefile                       # path of the bundled Snakefile (for `module`)
    $ class2d run --cores all --config particles=run_data.star outdir=myrun
    $ class2d run --profile profiles/slurm -n # any snakemake arguments
    $ class2d live --every 60 --cores all --config particles=run_data.star   # while collecting

``live`` reruns it whenever the particle file grows (``class2d.watch``).  ``run`` starts
Snakemake on the bundled Snakefile in the current directory (outputs go
under the config's ``outdir``, relative to it) and returns Snakemake's exit status.  The
workflow files (Snakefile, rules/, scripts/, config/) live beside the package in the source
checkout, so the package must be installed from it (``pip install -e .``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import class2d

#: the workflow's entry point: the repository root, two levels above this package
SNAKEFILE = Path(__file__).resolve().parents[2] / "Snakefile"


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line) and run the subcommand; returns the exit
    status (Snakemake's for ``run``; 1 with one line on stderr when the Snakefile is missing)."""
    parser = argparse.ArgumentParser(prog="class2d", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"class2d {class2d.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("snakefile", help="print the path of the bundled Snakefile")
    commands.add_parser("run", help="run the workflow: class2d run [snakemake arguments]",
                        add_help=False)
    commands.add_parser("live", help="rerun the workflow as the input grows: class2d live "
                                     "--every SECONDS [--idle SECONDS] [snakemake arguments]",
                        add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command not in ("run", "live") and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if not SNAKEFILE.is_file():
        print(f"error: {SNAKEFILE}: the workflow is not there (install class2d from its source "
              f"checkout: pip install -e .)", file=sys.stderr)
        return 1
    if args.command == "snakefile":
        print(SNAKEFILE)
        return 0
    if args.command == "live":
        from class2d import watch

        return watch.main(rest)
    return subprocess.call([sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE),
                            *rest])


if __name__ == "__main__":
    sys.exit(main())
