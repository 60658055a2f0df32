"""Kill the demo workflow anywhere (SIGKILL to the process group), resume, compare: ≥ 20 trials.

    python bench/kill_trials.py --trials 22 --seed 0 --folder /tmp/kill_trials

One uninterrupted run of tests/killing.py's SMALL demo (every stage active) is the
reference.  The first trials kill each stage in turn (``delay`` s after its first job's log
appears, drawn uniformly from [0, --max-delay)), the rest at a time drawn uniformly over
the first 80 % of the reference's wall time (later ones often find the run ended); a stage
that no kill reached then gets one more trial, killed the moment its log appears.  Each
trial then runs ``snakemake --unlock`` and the same command again, and compares every
output file byte for byte with the reference.
Prints one markdown row per trial (the moment, the jobs running when the kill landed, the
temporary files it left, the resume's exit status, the differing files) and a summary;
exits 1 when any trial's outputs differ or its resume failed.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from killing import SMALL, STAGES, Moment, differences, kill_and_resume, run_workflow  # noqa: E402


def moments(trials: int, seed: int, max_delay_s: float, wall_s: float) -> list[Moment]:
    """One trial per stage first (in workflow order), then kills at random times."""
    rng = np.random.default_rng(seed)
    stages = list(STAGES)
    return [Moment(stages[i], float(rng.uniform(0, max_delay_s))) if i < len(stages)
            else Moment(None, float(rng.uniform(0, 0.8 * wall_s))) for i in range(trials)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=22)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, default=0.3,
                        help="s: the largest delay after a stage's log appears")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/class2d_kill_trials"))
    args = parser.parse_args()
    shutil.rmtree(args.folder, ignore_errors=True)
    args.folder.mkdir(parents=True)
    started = time.perf_counter()
    reference = run_workflow(args.folder / "kill_ref", SMALL, args.cores)
    wall_s = time.perf_counter() - started
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, "
          f"{os.cpu_count()} CPUs, --cores {args.cores}, seed {args.seed}; "
          f"reference run {wall_s:.1f} s\n")
    print("| trial | kill at | running when killed | temporary files left | resume "
          "| differing outputs |")
    print("|---|---|---|---|---|---|")
    failed, landed = 0, {}

    def trial(i: int, moment: Moment) -> None:
        nonlocal failed
        result = kill_and_resume(args.folder / f"kill_{i:03d}", SMALL, moment, args.cores)
        diff = (differences(reference, result.outdir) if result.resume_rc == 0
                else ["(no resume)"])
        failed += bool(diff) or result.resume_rc != 0
        for stage in result.running or ["(run had ended)"]:
            landed[stage] = landed.get(stage, 0) + 1
        print(f"| {i} | {moment} | {', '.join(result.running) or '(run had ended)'} | "
              f"{len(result.leftovers)} | rc {result.resume_rc} | {', '.join(diff) or 'none'} |",
              flush=True)
        if result.resume_rc:
            print(result.resume_tail, file=sys.stderr)
        shutil.rmtree(result.outdir)

    plan = moments(args.trials, args.seed, args.max_delay, wall_s)
    for i, moment in enumerate(plan):       # the loop goes on into what is appended below
        trial(i, moment)
        if i == args.trials - 1:
            # a stage no kill reached (its jobs had ended) is tried once more, the moment
            # its log appears
            plan += [Moment(stage, 0.0) for stage in STAGES if stage not in landed]
    missed = [stage for stage in STAGES if stage not in landed]
    print(f"\n{len(plan)} trials, {failed} with differing outputs or a failed resume; "
          f"kills landed in: {', '.join(f'{k} {v}' for k, v in landed.items())}; "
          f"no kill in: {', '.join(missed) or 'none'}; "
          f"total {time.perf_counter() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
