"""Snakemake script of rule rebalance_classes: thin wrapper around class2d.rebalance."""
import os

from class2d.rebalance import rebalance_classes
from class2d.runner import run_step

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_step(rebalance_classes, sm.input.classes, sm.input.particles,
         os.path.dirname(sm.output.particles), n_superclasses=sm.params.n_superclasses,
         rebalance_factor=sm.params.rebalance_factor,
         particle_diameter_A=sm.params.particle_diameter_A, seed=sm.params.seed, log=sm.log[0],
         threads=sm.threads)
