"""Snakemake script of rule select_classes: thin wrapper around class2d.select."""
import os

from class2d.runner import run_step
from class2d.select import select_classes

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_step(select_classes, sm.input.classes, sm.input.particles,
         os.path.dirname(sm.output.particles), mode=sm.params.mode,
         classes=sm.params.classes or None, min_particles=sm.params.min_particles,
         max_resolution_A=sm.params.max_resolution_A, min_posterior=sm.params.min_posterior,
         max_eca=sm.params.max_eca, selection_file=sm.params.selection_file,
         particle_diameter_A=sm.params.particle_diameter_A,
         max_particle_zscore=sm.params.max_particle_zscore, log=sm.log[0], threads=sm.threads)
