# class2d: cryo-EM 2D classification as a Snakemake workflow.
#   snakemake --cores all                      # the whole chain on the built-in demo data
#   snakemake --cores all --config particles=run_data.star outdir=myrun
from snakemake.utils import min_version, validate

import class2d  # noqa: F401  sets how idle threads wait, for every job (see its docstring)

min_version("8.0")


configfile: "config/config.yaml"


validate(config, "config/schema.yaml")


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/prepare.smk"
include: "rules/classify.smk"
include: "rules/dedup.smk"
include: "rules/select.smk"
include: "rules/rebalance.smk"
include: "rules/templates.smk"


rule all:
    input:
        final_outputs(),
    default_target: True
