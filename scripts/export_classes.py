"""Snakemake script of rule export_classes: thin wrapper around class2d.classify."""
import os

from class2d.classify import export_step
from class2d.runner import run_step

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_step(export_step, sm.params.prepared, os.path.dirname(sm.input.state),
         os.path.dirname(sm.output.classes), sm.params.em, sm.params.seed, log=sm.log[0],
         threads=sm.threads)
