"""Snakemake script of rule gather_full_pass: thin wrapper around class2d.classify."""
from class2d.classify import gather_step
from class2d.runner import run_step

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_step(gather_step, sm.input.meta, sm.input.state, list(sm.input.parts), sm.output.state,
         sm.output.assignments, sm.params.em, sm.params.seed, log=sm.log[0],
         threads=sm.threads)
