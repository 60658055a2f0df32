"""Snakemake script of rule classify_live_round: thin wrapper around class2d.live."""
from class2d.live import live_round
from class2d.runner import run_step

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_step(live_round, sm.input.meta, sm.input.previous, sm.input.assignments, sm.input.record,
         sm.output.state, sm.output.assignments, sm.output.info, sm.params.em, sm.params.seed,
         sm.params.backend, log=sm.log[0], threads=sm.threads)
