"""Snakemake script of rule gather_full_pass: thin wrapper around class2d.classify."""
import os

from class2d.classify import gather_step
from class2d.runner import run_step

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_step(gather_step, sm.params.prepared, sm.input.state, list(sm.input.parts),
         os.path.dirname(sm.output.state), sm.params.em, sm.params.seed, log=sm.log[0],
         threads=sm.threads)
