"""Snakemake script of rule export_classes: thin wrapper around class2d.classify."""
from class2d.classify import export_step
from class2d.runner import run_step

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_step(export_step, sm.input.meta, sm.input.state, sm.input.assignments,
         sm.params.out_dir, sm.params.em, sm.params.seed, log=sm.log[0], threads=sm.threads)
