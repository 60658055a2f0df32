"""Snakemake script of rule export_classes: thin wrapper around class2d.live.remember
(classify.export_step, then the state kept for the next live round)."""
from class2d.live import remember
from class2d.runner import run_step

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_step(remember, sm.input.meta, sm.input.state, sm.input.assignments, sm.params.out_dir,
         sm.params.em, sm.params.seed, sm.params.record, sm.input.get("info"),
         log=sm.log[0], threads=sm.threads)
