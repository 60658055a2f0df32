"""Snakemake script of rule remove_duplicates: thin wrapper around class2d.dedup."""
import os

from class2d.dedup import remove_duplicates
from class2d.runner import run_step

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_step(remove_duplicates, sm.input.particles, os.path.dirname(sm.output.particles),
         min_separation_A=sm.params.min_separation_A, score=sm.params.score,
         micrograph_apix=sm.params.micrograph_apix, pick_separation_A=sm.params.pick_separation_A,
         pass_through_without_locations=sm.params.pass_through, classes_star=sm.input.classes,
         log=sm.log[0], threads=sm.threads)
