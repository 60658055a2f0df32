"""Snakemake script of rule init_classes: thin wrapper around class2d.classify."""
from class2d.classify import init_step
from class2d.runner import run_step

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_step(init_step, sm.input.meta, sm.output[0], sm.params.em, sm.params.seed,
         sm.params.backend, sm.params.iterations, log=sm.log[0], threads=sm.threads)
