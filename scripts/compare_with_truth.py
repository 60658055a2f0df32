"""Snakemake script of rule compare_with_truth: thin wrapper around class2d.truth."""
from class2d.runner import run_step
from class2d.truth import compare_with_truth

sm = snakemake  # noqa: F821 (injected by Snakemake)
run_step(compare_with_truth, sm.input.classes, sm.input.references, sm.output[0], log=sm.log[0],
         threads=sm.threads)
