"""Snakemake script of rule classify_full_shard: thin wrapper around class2d.classify."""
from class2d.classify import shard_step
from class2d.runner import run_step

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_step(shard_step, sm.input.meta, sm.input.state, int(sm.wildcards.s), sm.output[0],
         sm.params.em, sm.params.seed, sm.params.backend, sm.params.last, log=sm.log[0],
         threads=sm.threads)
