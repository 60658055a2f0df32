"""Snakemake script of rule prepare_stack: thin wrapper around class2d.live.finish_prepare
(the shards are prepared by rule prepare_shard; this writes particles.star, rejected.star /
.cs, prepared.yaml and the record of the input rows they hold)."""
from class2d.live import finish_prepare
from class2d.runner import run_step

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_step(finish_prepare, sm.input.particles, sm.params.out_dir,
         [tuple(r) for r in sm.params.rows], sm.params.shards, sm.params.particles_per_shard,
         max_res_A=sm.params.max_res_A, box_px=sm.params.box_px or None,
         diameter_A=sm.params.diameter_A or None, invert_contrast=sm.params.invert_contrast,
         max_bad_fraction=sm.params.max_bad_fraction, log=sm.log[0], threads=sm.threads)
