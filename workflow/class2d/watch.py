"""``class2d live``: rerun the workflow whenever the particle file grows.

    $ class2d live --every 60 --idle 1800 --cores all --config particles=run_data.star
    2026-12-07 10:02:11  round 1: 12000 particles, 50 classes, 41.2 s
    2026-12-07 10:05:13  round 2: 15500 particles, 50 classes, 12.9 s (assigned)

Every ``every`` seconds the input's size and time are looked at; when they changed, the
workflow runs once (``snakemake`` with the given arguments; each run prepares and
classifies only what ``class2d.live`` says is new) and one status line is printed.
It stops when the input has not changed for ``idle`` seconds, or on Ctrl-C: Snakemake
stops its jobs, and every file being written is a temporary name that is removed
(``io.atomic``), so no partial output is left.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import yaml

from class2d import layout
from class2d.io.atomic import read_json


def config_value(args: Sequence[str], key: str, default: str) -> str:
    """What the snakemake arguments ``args`` set ``key`` to (``--config key=…`` over
    ``--configfile`` files, the last of each winning), else ``default``."""
    value, files, i = None, [], 0
    while i < len(args):
        if args[i] in ("--configfile", "--configfiles"):
            while i + 1 < len(args) and not args[i + 1].startswith("-"):
                files.append(args[i + 1])
                i += 1
        elif args[i] == "--config":
            while i + 1 < len(args) and not args[i + 1].startswith("-"):
                name, _, setting = args[i + 1].partition("=")
                value = setting if name == key else value
                i += 1
        i += 1
    if value is not None:
        return value
    for path in reversed(files):
        with open(path) as fh:
            found = (yaml.safe_load(fh) or {}).get(key)
        if found is not None:
            return str(found)
    return default


def _signature(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_size, info.st_mtime_ns


def status_line(outdir: str, seconds: float, returncode: int) -> str:
    """One line on the last round: particles, classes and its time."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    if returncode:
        return f"{stamp}  the workflow failed (exit status {returncode}); see its log"
    classify_dir = os.path.join(outdir, "classify")
    record = read_json(layout.live_record(classify_dir))
    if record is None:
        return f"{stamp}  done in {seconds:.1f} s"
    kind = "" if record["n_at_full"] == record["particles"] else " (new particles assigned)"
    classes = record.get("settings", {}).get("classify", {}).get("n_classes", "?")
    return (f"{stamp}  round {record['round']}: {record['particles']} particles, "
            f"{classes} classes, {seconds:.1f} s{kind}")


def watch(snakemake_args: Sequence[str], every: float, idle: float,
          run: Callable[[list[str]], int] = subprocess.call,
          clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> int:
    """Run the workflow now and again each time its input changes, checking every
    ``every`` seconds, until it has not changed for ``idle`` seconds (returns 0) or
    Ctrl-C (130).  ``run`` runs a command line and returns its exit status."""
    from class2d.cli import SNAKEFILE

    particles = config_value(snakemake_args, "particles", "demo")
    outdir = config_value(snakemake_args, "outdir", "results")
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE),
               *snakemake_args]
    seen, changed_at = None, clock()
    try:
        while True:
            now = _signature(particles) if particles != "demo" else (0, 0)
            if now != seen:
                start = clock()
                returncode = run(command)
                print(status_line(outdir, clock() - start, returncode), flush=True)
                seen, changed_at = now, clock()
            elif clock() - changed_at >= idle:
                print(f"no new particles for {idle:g} s: stopping", flush=True)
                return 0
            sleep(every)
    except KeyboardInterrupt:
        print("stopped (Ctrl-C)", flush=True)
        return 130


def main(argv: Sequence[str]) -> int:
    """``class2d live`` with its arguments: ``--every``, ``--idle``, snakemake's."""
    parser = argparse.ArgumentParser(prog="class2d live", description=__doc__.split("\n")[0])
    parser.add_argument("--every", type=float, default=60.0,
                        help="seconds between two looks at the input (default 60)")
    parser.add_argument("--idle", type=float, default=3600.0,
                        help="stop after this many seconds without new particles "
                             "(default 3600)")
    args, rest = parser.parse_known_args(argv)
    if args.every <= 0 or args.idle < 0:
        parser.error("--every must be > 0 and --idle >= 0")
    return watch(rest, args.every, args.idle)
