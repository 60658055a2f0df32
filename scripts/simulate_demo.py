"""Snakemake script of rule simulate_demo: thin wrapper around class2d.simulate."""
import os

from class2d.runner import run_step
from class2d.simulate import simulate_demo

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_step(simulate_demo, os.path.dirname(sm.output.star), seed=sm.params.seed,
         memory_gb=sm.params.memory_gb, log=sm.log[0], threads=sm.threads, **sm.params.demo)
