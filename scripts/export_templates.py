"""Snakemake script of rule export_templates: thin wrapper around class2d.templates."""
import os

from class2d.runner import run_step
from class2d.templates import export_templates

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_step(export_templates, sm.input.classes, os.path.dirname(sm.output.star),
         lowpass_A=sm.params.lowpass_A, picker_apix=sm.params.picker_apix,
         picker_box=sm.params.picker_box, contrast=sm.params.contrast,
         recentre=sm.params.recentre, classes=sm.params.classes,
         particle_diameter_A=sm.params.particle_diameter_A, log=sm.log[0], threads=sm.threads)
