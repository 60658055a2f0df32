"""Snakemake script of rule prepare_stack: thin wrapper around class2d.prepare."""
from class2d.prepare import prepare_stack
from class2d.runner import run_step

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_step(prepare_stack, sm.input.particles, sm.params.out_dir,
         max_res_A=sm.params.max_res_A, box_px=sm.params.box_px or None,
         diameter_A=sm.params.diameter_A or None, invert_contrast=sm.params.invert_contrast,
         shards=sm.params.shards, log=sm.log[0])
