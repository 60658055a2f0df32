"""Snakemake script of rule prepare_shard: thin wrapper around class2d.prepare."""
from class2d.prepare import prepare_shard
from class2d.runner import run_step

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_step(prepare_shard, sm.input.particles, sm.output.stack, int(sm.wildcards.s),
         sm.params.shards, max_res_A=sm.params.max_res_A,
         box_px=sm.params.box_px or None, diameter_A=sm.params.diameter_A or None,
         invert_contrast=sm.params.invert_contrast, memory_gb=sm.params.memory_gb,
         bad_particles=sm.params.bad_particles, max_bad_fraction=sm.params.max_bad_fraction,
         rows=tuple(sm.params.rows), log=sm.log[0], threads=sm.threads)
