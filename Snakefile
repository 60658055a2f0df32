# class2d: cryo-EM 2D classification as a Snakemake workflow.
#   snakemake --cores all                      # the whole chain on the built-in demo data
#   snakemake --cores all --config particles=run_data.star outdir=myrun
import os
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

import class2d  # noqa: F401  sets how idle threads wait, for every job (see its docstring)
from class2d.errors import schema_problem

min_version("8.0")


# beside this file, so that `snakemake -s /path/to/Snakefile` runs from any folder
configfile: os.path.join(workflow.basedir, "config", "config.yaml")


try:
    validate(config, "config/schema.yaml")
except WorkflowError as err:  # one line naming the key, not the schema's text
    sys.exit(f"error: {schema_problem(err)}")


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
